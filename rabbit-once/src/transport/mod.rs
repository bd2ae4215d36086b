//! The AMQP 0-9-1 seam: everything that touches the wire lives here and nothing above it
//! knows how frames are made.
//!
//! rabbit-once speaks AMQP itself instead of wrapping a client crate (see
//! `docs/architecture.md` for the measurements behind that choice): one connection is a
//! reader task and a writer task around the socket; frames from many publishes are
//! coalesced into one write; confirms, returns and deliveries reach the channel that owns
//! them as events, and a dead connection closes every channel with its reason. Nothing
//! here reconnects — the supervisor above does.
//!
//! - [`wire`]: integers, strings, bits;  [`table`]: field tables;  [`properties`]: basic
//!   properties;  [`method`]: the methods;  [`frame`]: frames on the socket.
//! - [`link`]: one AMQP connection — handshake and I/O tasks;  [`channel`]: calls and events
//!   per channel.

mod channel;
#[cfg(test)]
mod decode_robustness;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing;
mod link;
mod method;
mod properties;
mod table;
#[cfg(feature = "tls")]
mod tls;
mod wire;

// The one door: everything above `transport/` uses these names and nothing else.
pub(crate) use channel::{
    Channel, ChannelEvent, ExchangeFlags, QueueFlags, RawDelivery, publish_frames,
};
pub(crate) use frame::content_header_frame_size;
pub(crate) use link::{ConnectParams, Link};
pub use properties::Properties;
pub use table::{FieldTable, FieldValue};
pub(crate) use wire::check_short;
