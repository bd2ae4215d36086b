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
        /// How long to wait; `None` takes the retry policy's delay for this attempt.
        after: Option<Duration>,
        /// Why, recorded on the message (and on its dead letter if attempts run out).
        reason: String,
    },
    /// Never: roll back, dead-letter it now with `reason`, then ack.
    Reject {
        /// Why, recorded on the dead letter.
        reason: String,
    },
}

impl Outcome {
    /// [`Outcome::Retry`] after the policy's delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    /// [`Outcome::Reject`]: dead-letter it now.
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
///
/// ```no_run
/// use rabbit_once::sqlx::{self, Postgres, Transaction};
/// use rabbit_once::{Delivery, Handler, HandlerError, Outcome};
///
/// struct Payments;
///
/// impl Handler<Postgres> for Payments {
///     async fn handle<'a>(
///         &'a self,
///         msg: &'a Delivery,
///         tx: &'a mut Transaction<'static, Postgres>,
///     ) -> Result<Outcome, HandlerError> {
///         let Some(order) = msg.header("order_id").and_then(|v| v.as_i64()) else {
///             return Ok(Outcome::reject("no order_id header")); // dead-lettered with this reason
///         };
///         sqlx::query("UPDATE orders SET paid = true WHERE id = $1")
///             .bind(order)
///             .execute(&mut **tx) // commits with the dedup record, or not at all
///             .await?; // an error rolls back: retried, then dead-lettered
///         Ok(Outcome::Done)
///     }
/// }
/// ```
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
                let o = crate::trace::handling(m, self.handle(m, tx)).await?;
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

/// The future a [`handler_fn`] closure returns: boxed, because a closure cannot name the
/// future of an `async` block that borrows its arguments.
pub type HandlerFuture<'a, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, HandlerError>> + Send + 'a>>;

/// A [`Handler`] made from a closure: `handler_fn(|msg, tx| Box::pin(async move { … }))`.
///
/// For small handlers and tests. The closure's future is boxed (one allocation per message);
/// a hot path is better served by implementing [`Handler`] on a type.
///
/// ```no_run
/// use rabbit_once::{Consumer, ConsumerConfig, Outcome, SqliteStore, handler_fn};
/// use rabbit_once::sqlx::{self, Sqlite};
///
/// # async fn run(conn: rabbit_once::Connection, store: SqliteStore) -> Result<(), rabbit_once::Error> {
/// let handler = handler_fn(|msg, tx: &mut sqlx::Transaction<'static, Sqlite>| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO orders (body) VALUES (?)")
///             .bind(msg.body().to_vec())
///             .execute(&mut **tx)
///             .await?;
///         Ok(Outcome::Done)
///     })
/// });
/// let consumer = Consumer::start(&conn, store, handler, ConsumerConfig::new("orders")).await?;
/// # Ok(()) }
/// ```
pub fn handler_fn<Db, F>(f: F) -> HandlerFn<F>
where
    Db: sqlx::Database,
    F: for<'a> Fn(
            &'a Delivery,
            &'a mut sqlx::Transaction<'static, Db>,
        ) -> HandlerFuture<'a, Outcome>
        + Send
        + Sync
        + 'static,
{
    HandlerFn(f)
}

/// The [`Handler`] [`handler_fn`] returns.
#[derive(Clone, Copy)]
pub struct HandlerFn<F>(F);

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

impl<Db, F> Handler<Db> for HandlerFn<F>
where
    Db: sqlx::Database,
    F: for<'a> Fn(
            &'a Delivery,
            &'a mut sqlx::Transaction<'static, Db>,
        ) -> HandlerFuture<'a, Outcome>
        + Send
        + Sync
        + 'static,
{
    fn handle<'a>(
        &'a self,
        msg: &'a Delivery,
        tx: &'a mut sqlx::Transaction<'static, Db>,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send + 'a {
        (self.0)(msg, tx)
    }
}

#[cfg(all(test, feature = "sqlite", feature = "test-util"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closure_handler_runs_in_the_transaction_it_is_given() {
        // One connection: each connection to `sqlite::memory:` is a database of its own.
        let db = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE seen (id TEXT)")
            .execute(&db)
            .await
            .unwrap();
        let handler = handler_fn(
            |msg: &Delivery, tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>| {
                Box::pin(async move {
                    if msg.body().is_empty() {
                        return Ok(Outcome::reject("empty"));
                    }
                    sqlx::query("INSERT INTO seen (id) VALUES (?)")
                        .bind(msg.message_id().unwrap_or_default().to_owned())
                        .execute(&mut **tx)
                        .await?;
                    Ok(Outcome::Done)
                }) as HandlerFuture<'_, Outcome>
            },
        );
        let mut tx = db.begin().await.unwrap();
        let d = Delivery::builder("x").message_id("m-1").build();
        assert_eq!(handler.handle(&d, &mut tx).await.unwrap(), Outcome::Done);
        let empty = Delivery::builder("").message_id("m-2").build();
        assert_eq!(
            handler.handle(&empty, &mut tx).await.unwrap(),
            Outcome::reject("empty")
        );
        tx.commit().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM seen")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
