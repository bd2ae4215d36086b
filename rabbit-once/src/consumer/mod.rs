//! Consuming: a plain manual-ack [`Subscription`] that survives reconnects, and on top of it
//! the idempotent consumer (dedup by `message_id` in the handler's own transaction).
//!
//! - [`delivery`]: a delivered message and how it is settled;
//! - [`acks`]: per-channel ack bookkeeping, coalesced into `multiple` acks (pure logic);
//! - [`subscription`]: the task that owns the consuming channel and subscribes again on every
//!   session.

mod acks;
mod delivery;
mod subscription;

pub use delivery::{ATTEMPT_HEADER, Delivery};
pub use subscription::{Subscription, SubscriptionConfig, SubscriptionStats};
