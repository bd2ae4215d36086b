//! Consuming: a plain manual-ack [`Subscription`] that survives reconnects, and on top of it
//! the idempotent consumer (dedup by `message_id` in the handler's own transaction).
//!
//! - [`delivery`]: a delivered message and how it is settled;
//! - [`acks`]: per-channel ack bookkeeping, coalesced into `multiple` acks (pure logic);
//! - [`subscription`]: the task that owns the consuming channel and subscribes again on every
//!   session;
//! - [`handler`]: the user's [`Handler`] and its [`Outcome`];
//! - [`retry`]: retry policy, retry queues, dead-lettering;
//! - [`idempotent`]: the [`Consumer`] — claim → handle → commit → ack, group commit.

mod acks;
mod delivery;
#[cfg(feature = "dedup")]
mod handler;
#[cfg(feature = "dedup")]
mod idempotent;
#[cfg(feature = "dedup")]
pub(crate) mod retry;
mod subscription;

#[cfg(feature = "test-util")]
pub use delivery::DeliveryBuilder;
pub use delivery::{ATTEMPT_HEADER, Delivery};
#[cfg(feature = "dedup")]
pub use handler::{Handler, HandlerError, HandlerFn, HandlerFuture, Outcome, handler_fn};
#[cfg(feature = "dedup")]
pub use idempotent::{Consumer, ConsumerConfig, ConsumerStats};
#[cfg(feature = "dedup")]
pub use retry::{DeadLetter, MissingId, RetryPolicy};
pub use subscription::{Subscription, SubscriptionConfig, SubscriptionStats};
