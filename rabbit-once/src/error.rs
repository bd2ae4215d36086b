//! One error type for the crate; each variant says what happened and, by its kind, what to do next.

use std::sync::Arc;

/// Everything that can go wrong in rabbit-once.
///
/// No variant ever carries a password: endpoints are shown as `amqp://user@host:port/vhost`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URI could not be parsed; `part` names the part that is wrong (scheme, host, port, …).
    /// `reason` says what to fix and never quotes the user name or password.
    #[error("invalid AMQP URI: bad {part}: {reason}")]
    InvalidUri {
        /// The part of the URI that is wrong (`scheme`, `host`, `port`, …).
        part: &'static str,
        /// What went wrong, in words (never a password).
        reason: String,
    },

    /// A setting is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The broker refused the username or password. Retrying will not help.
    #[error("authentication failed for user {user:?} at {endpoint}: {reason}")]
    AuthenticationFailed {
        /// The endpoint, as `amqp://user@host:port/vhost` (no password).
        endpoint: String,
        /// The user name that was refused.
        user: String,
        /// What went wrong, in words (never a password).
        reason: String,
    },

    /// The virtual host does not exist or the user may not use it. Retrying will not help.
    #[error("access to vhost {vhost:?} refused at {endpoint}: {reason}")]
    VhostRefused {
        /// The endpoint, as `amqp://user@host:port/vhost` (no password).
        endpoint: String,
        /// The virtual host that was refused.
        vhost: String,
        /// What went wrong, in words (never a password).
        reason: String,
    },

    /// A TCP/TLS connection or the AMQP handshake could not be completed (transient).
    #[error("could not connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint, as `amqp://user@host:port/vhost` (no password).
        endpoint: String,
        /// What went wrong, in words (never a password).
        reason: String,
    },

    /// The connection died: I/O error, missed heartbeats, or the broker went away (transient).
    #[error("connection lost: {0}")]
    ConnectionLost(String),

    /// The broker closed the connection with a reason (a restart gives 320 CONNECTION_FORCED).
    #[error("connection closed by the broker: {code} {text}")]
    ConnectionClosed {
        /// The AMQP reply code (320 CONNECTION_FORCED on a restart, 501–541 for frame errors, …).
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// The broker closed a channel because of something it was asked to do.
    #[error("channel closed by the broker: {code} {text}")]
    ChannelClosed {
        /// The AMQP reply code (404 NOT_FOUND, 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED, …).
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// The peer sent something that is not AMQP 0-9-1 as we know it.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),

    /// Topology could not be declared (for example an existing queue with other arguments).
    #[error("topology declaration failed: {0}")]
    Topology(String),

    /// The broker refused part of the topology for a reason that clears by itself, so the
    /// session is tried again with backoff: 405 RESOURCE_LOCKED (an exclusive queue still held
    /// by our own previous, half-open connection until the broker notices it is gone), 404
    /// NOT_FOUND for a durable queue whose node is down or unreachable (a classic queue of a
    /// cluster node that died: back with its node) or, when declaring again on a new session,
    /// 404 NOT_FOUND for a binding whose exchange another service has not declared yet.
    #[error("topology not declarable yet: {what}: {code} {text} (will try again)")]
    TopologyNotYet {
        /// What was being declared.
        what: String,
        /// The AMQP reply code (405 RESOURCE_LOCKED or 404 NOT_FOUND).
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// The queue does not exist on the broker (its answer to a passive `queue.declare` was 404
    /// "no queue …"), and nothing this process declares creates it. Declare it — in
    /// [`ConnectionConfig::topology`](crate::ConnectionConfig::topology), or for a consumer's
    /// quorum work queue with `ConsumerConfig::queue_type` — or, if another service declares it
    /// later, let the consumer wait for it (`ConsumerConfig::wait_for_queue`).
    #[error("queue {queue:?} does not exist in vhost {vhost:?}")]
    QueueNotFound {
        /// The queue.
        queue: String,
        /// The virtual host it was looked for in.
        vhost: String,
    },

    /// A `mandatory` message matched no queue; the broker returned it.
    #[error("message {message_id} was unroutable: {reply_code} {reply_text}")]
    Unroutable {
        /// The message's `message_id`.
        message_id: String,
        /// The AMQP reply code of the return (312 NO_ROUTE).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },

    /// The broker nacked the message on every attempt.
    #[error("message {message_id} was nacked by the broker {attempts} times")]
    Nacked {
        /// The message's `message_id`.
        message_id: String,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The target exchange does not exist.
    #[error("message {message_id}: exchange {exchange:?} does not exist")]
    ExchangeNotFound {
        /// The message's `message_id`.
        message_id: String,
        /// The exchange that does not exist.
        exchange: String,
    },

    /// The broker refused this message and closed the channel over it (for example no write
    /// permission on the exchange).
    #[error("message {message_id} refused by the broker: {code} {text}")]
    Refused {
        /// The message's `message_id`.
        message_id: String,
        /// The AMQP reply code (403 ACCESS_REFUSED, 406 PRECONDITION_FAILED, …).
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// The message is larger than the configured maximum; it was never sent.
    #[error("message of {size} bytes is larger than the maximum of {max} bytes")]
    MessageTooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes: the publisher's `max_message_size`, or its `max_buffered_bytes`
        /// if that is smaller (a message must fit in the buffer).
        max: usize,
    },

    /// The message is malformed (a property the broker would reject); it was never sent.
    #[error("invalid message: {0}")]
    InvalidMessage(String),

    /// `try_publish` found the publisher's buffer full.
    #[error("the publisher's buffer is full")]
    BufferFull,

    /// The publisher was closed: no new message is accepted.
    #[error("the publisher is closed")]
    PublisherClosed,

    /// `close()` ran out of time before the broker confirmed this message; it was handed back.
    #[error("message was still unconfirmed when the publisher closed; it was handed back")]
    HandedBack,

    /// The connection supervisor stopped trying (max attempts reached, or a fatal error).
    #[error("gave up connecting after {attempts} attempts: {last}")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },

    /// The connection was closed by the application.
    #[error("the connection was closed by the application")]
    Closed,

    /// An operation did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The database failed — the dedup store's or the outbox's; what failed is in the message.
    #[error("database: {0}")]
    Store(Arc<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Whether reconnecting can help: false for bad credentials, refused vhosts, bad
    /// configuration and topology that contradicts what the broker has.
    ///
    /// The whole classification, as the supervisor applies it (also in `docs/guarantees.md`):
    ///
    /// | what happened | error | class |
    /// |---|---|---|
    /// | TCP refused / reset / timeout, TLS failure, EOF at any handshake step | `Connect` | transient |
    /// | EOF right after `connection.start-ok` (broker advertises `authentication_failure_close`) | `Connect` | transient |
    /// | same, from a broker without that capability | `AuthenticationFailed` | fatal |
    /// | `connection.close 403` during the handshake | `AuthenticationFailed` | fatal |
    /// | `connection.close 530/402/403` at `connection.open` (vhost) | `VhostRefused` | fatal |
    /// | `530` "connection limit reached" | `ConnectionClosed` | transient |
    /// | `connection.close 320` (forced: node restart), 501/502/505/541/504, any close later | `ConnectionClosed` | transient |
    /// | missed heartbeats, read/write error, socket closed | `ConnectionLost` | transient |
    /// | a frame we cannot parse from the broker | `Protocol` | transient |
    /// | 405 RESOURCE_LOCKED on a declare; 404 on a queue declare (its node is down); 404 on a binding when declaring again | `TopologyNotYet` | transient |
    /// | 406 PRECONDITION_FAILED (argument mismatch), 403, 404 on a binding on the first session | `Topology` | fatal |
    /// | bad URI, bad settings | `InvalidUri`, `Config` | fatal |
    /// | a consumer's queue does not exist (404 "no queue" to a passive declare) | `QueueNotFound` | fatal |
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self,
            Error::InvalidUri { .. }
                | Error::Config(_)
                | Error::AuthenticationFailed { .. }
                | Error::VhostRefused { .. }
                | Error::Topology(_)
                | Error::QueueNotFound { .. }
                | Error::GaveUp { .. }
                | Error::Closed
        )
    }

    /// Whether the error concerns the connection as a whole (all channels are gone).
    pub(crate) fn is_connection_level(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost(_)
                | Error::ConnectionClosed { .. }
                | Error::Protocol(_)
                | Error::Closed
        )
    }
}

/// A malformed frame from the peer. The connection cannot continue after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AMQP protocol error: {0}")]
pub struct ProtocolError(
    /// What was wrong with the frame.
    pub String,
);

impl ProtocolError {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
