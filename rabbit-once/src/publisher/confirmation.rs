//! What publishing gives back: the [`Confirmation`] future, resolving to [`Confirmed`] or a
//! [`PublishError`] that hands the message back.

use crate::error::Error;
use crate::message::Message;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// The broker took responsibility for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The message's `message_id` (its own, or the UUIDv7 the publisher gave it).
    pub message_id: String,
    /// Order of acceptance by this publisher, from 0.
    pub sequence: u64,
    /// How many times it was written to a channel (more than 1 after a loss or a nack).
    pub publishes: u32,
}

/// A message that was not accepted or not confirmed, with the message handed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PublishError {
    /// Why: refused at once (too large, buffer full, publisher closed, …) or failed after
    /// acceptance (unroutable, nacked too often, refused by the broker, handed back at close).
    pub error: Error,
    /// The message, for the caller to resend, log or park. `None` only if the publisher's task
    /// died, which is a bug.
    pub message: Option<Box<Message>>,
}

/// Where the task sends one message's verdict; the other end is its [`Confirmation`].
pub(super) type Reply = oneshot::Sender<Result<Confirmed, PublishError>>;

/// The broker's verdict on one message; resolves once it is confirmed or has failed for good.
#[derive(Debug)]
#[must_use = "a confirmation does nothing unless awaited; dropping it does not cancel the publish"]
pub struct Confirmation {
    pub(super) rx: oneshot::Receiver<Result<Confirmed, PublishError>>,
    /// The `rabbit_once.publish` span, closed when this resolves (feature `opentelemetry`;
    /// nothing without it).
    pub(super) trace: crate::trace::PublishTrace,
}

impl Future for Confirmation {
    type Output = Result<Confirmed, PublishError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let verdict = Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(PublishError {
                    error: Error::ConnectionLost("the publisher task ended unexpectedly".into()),
                    message: None,
                })
            })
        });
        if let Poll::Ready(r) = &verdict {
            self.trace.finish(r);
        }
        verdict
    }
}
