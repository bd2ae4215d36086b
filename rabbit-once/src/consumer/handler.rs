//! What the user writes: a [`Handler`] that applies a message inside the open transaction and
//! says how it went with an [`Outcome`].

use super::delivery::Delivery;
use std::future::Future;
use std::time::Duration;

/// An error from a handler: the message is retried (if attempts remain), then dead-lettered.
/// A `sqlx::Error` anywhere in its chain that says the database is unreachable is treated as an
/// outage instead: the message is held, not retried, until the database is back.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// How a handler finished with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: commit the transaction (with the dedup record), then ack.
    Done,
    /// Not now: roll back; publish the message again after `after` (or the policy's delay for
    /// this attempt) through a retry queue, then ack. After the last attempt it is dead-lettered.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Never: roll back, dead-letter it now with `reason`, then ack.
    Reject { reason: String },
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject {
            reason: reason.into(),
        }
    }
}

/// Applies messages. `Db` is the store's database (`sqlx::Sqlite` or `sqlx::Postgres`); the
/// transaction passed in already holds the message's dedup record, and commits with it.
///
/// A handler runs only for messages never applied before in its consumer group. It must do its
/// work through `tx`: anything it does outside the transaction (an HTTP call, a file) is not
/// rolled back when the message is retried, and may happen again.
pub trait Handler<Db: sqlx::Database>: Send + Sync + 'static {
    /// Applies one message.
    fn handle<'a>(
        &'a self,
        msg: &'a Delivery,
        tx: &'a mut sqlx::Transaction<'static, Db>,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send + 'a;

    /// Applies several new messages in one transaction (group commit). The default calls
    /// [`handle`](Self::handle) for each; override it to write them with one statement. If any
    /// outcome is not `Done` (or this fails), the whole transaction is rolled back and the
    /// messages are run again one at a time.
    fn handle_batch<'a>(
        &'a self,
        msgs: &'a [&'a Delivery],
        tx: &'a mut sqlx::Transaction<'static, Db>,
    ) -> impl Future<Output = Result<Vec<Outcome>, HandlerError>> + Send + 'a {
        async move {
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                let o = self.handle(m, tx).await?;
                let stop = o != Outcome::Done;
                out.push(o);
                if stop {
                    break;
                }
            }
            Ok(out)
        }
    }
}
