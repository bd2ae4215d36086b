//! A hostile fake AMQP 0-9-1 broker: it speaks just enough of the protocol to get a client
//! through the handshake and a consumer subscribed, then misbehaves on purpose.
//!
//! A real RabbitMQ never sends a non-UTF-8 short string, a table nested 12,000 deep, a frame on
//! a channel nobody opened or a frame that ends in the wrong octet, so tests against the real
//! broker cannot show what the client does with them. This broker can: each [`Scenario`] is one
//! kind of misbehaviour, played on every connection the client makes (it reconnects), while the
//! broker counts connections and records every method it receives so tests can assert.
//!
//! Frames are encoded byte by byte by the testkit's `wire` module on purpose: the testkit does
//! not depend on rabbit-once, so a bug in the client's codec cannot hide itself by being shared
//! with the broker's.

mod broker;
mod scenario;
mod session;

pub use crate::wire::{FieldBytes, RawDelivery, TableBytes};
pub use broker::{HostileBroker, Published, Received};
pub use scenario::{Scenario, UNOPENED_CHANNEL};
