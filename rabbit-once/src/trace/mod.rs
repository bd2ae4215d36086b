//! Trace context across the broker (feature `opentelemetry`, off by default).
//!
//! With the feature, [`Publisher::publish`](crate::Publisher::publish) opens a
//! `rabbit_once.publish` span (a child of the caller's current span) and writes its W3C trace
//! context into the message's headers as `traceparent` and `tracestate` — unless the
//! message already carries a `traceparent`, which is left as the caller set it. The headers are
//! written once, when the message is accepted into the buffer, so a message re-published after
//! a lost connection carries its original trace context. The span stays open until the
//! message's [`Confirmation`](crate::Confirmation) resolves (or is dropped).
//!
//! The idempotent [`Consumer`](crate::Consumer) reads the headers back: the handler runs inside
//! a `rabbit_once.handle` span per message whose parent is the publisher's span, and each
//! batch's transaction (claim, handle, commit) is a `rabbit_once.commit` span linked to the
//! trace context of every message in it. A handler that overrides
//! [`Handler::handle_batch`](crate::Handler::handle_batch) gets the commit span only. With a
//! plain [`Subscription`](crate::Subscription), use `span_for` or
//! [`Delivery::trace_context`](crate::Delivery::trace_context).
//!
//! The spans are `tracing` spans; they become OpenTelemetry spans through a
//! [`tracing_opentelemetry`] layer in the application's subscriber. Without such a layer (or
//! without a valid span context) nothing is written to the headers.
//!
//! Without the feature this module has only no-op hooks: nothing is added to the wire and
//! nothing is done per message.

//! - `headers`: `traceparent` / `tracestate` written into a message and read back;
//! - `produce`: the publish and enqueue spans;
//! - `consume`: the handle, commit and ack spans;
//! - `disabled`: the no-op hooks without the feature.

#[cfg(feature = "opentelemetry")]
mod consume;
#[cfg(not(feature = "opentelemetry"))]
mod disabled;
#[cfg(feature = "opentelemetry")]
mod headers;
#[cfg(feature = "opentelemetry")]
mod produce;
#[cfg(test)]
mod tests;

#[cfg(feature = "opentelemetry")]
pub use consume::span_for;
#[cfg(feature = "opentelemetry")]
pub use headers::{TRACEPARENT, TRACESTATE};
/// The `opentelemetry` this crate builds on (its trace API), for matching versions.
#[cfg(feature = "opentelemetry")]
pub use opentelemetry;
/// The `tracing-opentelemetry` this crate builds on: its layer turns the spans into
/// OpenTelemetry spans.
#[cfg(feature = "opentelemetry")]
pub use tracing_opentelemetry;

#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
pub(crate) use consume::{ack_settled, commit_span, handling};
#[cfg(not(feature = "opentelemetry"))]
pub(crate) use disabled::*;
#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
pub(crate) use produce::on_enqueue;
#[cfg(feature = "opentelemetry")]
pub(crate) use produce::{PublishTrace, on_publish};
