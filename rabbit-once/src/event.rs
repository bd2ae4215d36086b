//! Connection events: what the supervisor saw, for logs and dashboards. Never blocks the sender.

use crate::error::Error;
use tokio::sync::broadcast;

/// Something that happened to the connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A session is up (topology declared). `epoch` counts sessions from 1.
    Connected {
        /// The session, counted from 1.
        epoch: u64,
        /// The endpoint, as `amqp://user@host:port/vhost` (no password).
        endpoint: String,
        /// Product and version the broker announced, e.g. "RabbitMQ 3.10.8".
        server: String,
    },
    /// The session ended; the supervisor reconnects unless the reason is fatal.
    Disconnected {
        /// The session, counted from 1.
        epoch: u64,
        /// Why.
        reason: Error,
    },
    /// One connection attempt failed.
    ConnectFailed {
        /// The endpoint, as `amqp://user@host:port/vhost` (no password).
        endpoint: String,
        /// The attempt number, from 1.
        attempt: u32,
        /// Why.
        reason: Error,
    },
    /// The broker stopped reading from publishers (memory or disk alarm).
    Blocked {
        /// Why.
        reason: String,
    },
    /// The broker reads from publishers again.
    Unblocked,
    /// A consumer subscribed to `queue` on session `epoch`.
    Subscribed {
        /// The queue.
        queue: String,
        /// The session, counted from 1.
        epoch: u64,
    },
    /// The broker cancelled a consumer (its queue was deleted, …); it subscribes again.
    ConsumerCancelled {
        /// The queue.
        queue: String,
    },
    /// A consumer found its dedup store unreachable: it holds its messages unacked and takes no
    /// new work until the store answers again.
    StoreUnavailable {
        /// Why.
        reason: String,
    },
    /// The dedup store answers again.
    StoreRecovered,
    /// A consumer could not dead-letter a message: the broker refuses even a bare copy (the
    /// dead-letter exchange is missing, no permission, …). The message is held unacked — not
    /// requeued in a loop, not dropped — until the consumer stops; fix the dead-letter target.
    DeadLetterRefused {
        /// The queue.
        queue: String,
        /// The message's `message_id`, if it had one.
        message_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// The outbox relay could not publish a row (unroutable, missing exchange, refused, …). The
    /// row stays in the outbox with its reason and attempt count and is tried again later; the
    /// later rows of its ordering key wait behind it, the others go on.
    OutboxRowFailed {
        /// The message's `message_id`.
        message_id: String,
        /// The row's ordering key, if it has one.
        ordering_key: Option<String>,
        /// Why.
        reason: String,
    },
    /// The outbox relay parked a row the broker refused [`RelayConfig::park_after`](crate::RelayConfig::park_after)
    /// times: it left the outbox for `rabbit_once_outbox_parked` (its key's later rows go on
    /// without it) and waits there for an operator to requeue or discard it.
    OutboxRowParked {
        /// The message's `message_id`.
        message_id: String,
        /// The row's ordering key, if it has one.
        ordering_key: Option<String>,
        /// Why the last publish failed.
        reason: String,
        /// Failed publishes in all.
        attempts: u64,
    },
    /// The supervisor stopped for good.
    GaveUp {
        /// Why.
        reason: Error,
    },
}

/// A stream of [`Event`]s. A receiver that falls behind skips the oldest events.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the connection is gone for good and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "event receiver lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}
