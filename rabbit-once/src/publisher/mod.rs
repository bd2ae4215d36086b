//! The publisher: accepted messages are kept until the broker confirms them, across any number
//! of lost channels and connections.
//!
//! Publishing awaits twice: `publisher.publish(msg).await?` returns once the message is
//! accepted into the publisher's bounded buffer (it waits while the buffer is full — that is
//! the back-pressure), and awaiting the returned [`Confirmation`] gives the broker's verdict.
//!
//! - `handle`: the cheap `Clone` handle [`Publisher`];
//! - `config`: its options, [`PublisherConfig`];
//! - `confirmation`: the [`Confirmation`] future, [`Confirmed`] and [`PublishError`];
//! - `stats`: [`PublisherStats`] and the counters behind them;
//! - `shared`: what the handles and the task share (buffer room, closed flag, counters);
//! - `buffer`: the pending buffer and our own confirm bookkeeping (pure logic);
//! - `task`: the task that owns the channel: sends in order, matches confirms, returns and
//!   nacks, re-publishes after a loss, pauses while the broker blocks publishing.

mod buffer;
mod config;
mod confirmation;
mod handle;
mod shared;
mod stats;
mod task;

pub use config::PublisherConfig;
pub use confirmation::{Confirmation, Confirmed, PublishError};
pub use handle::Publisher;
pub use stats::PublisherStats;
