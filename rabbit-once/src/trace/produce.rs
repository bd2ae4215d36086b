//! The producer's spans: `rabbit_once.publish` (open until the broker's verdict) and
//! `rabbit_once.enqueue` (a row written into the outbox), each written into the headers.

use super::headers::inject;
use crate::message::Message;
use tracing::field::Empty;

/// The `rabbit_once.publish` span of one accepted message, open until its confirmation
/// resolves or is dropped.
#[derive(Debug, Default)]
pub(crate) struct PublishTrace(Option<tracing::Span>);

impl PublishTrace {
    /// Records how the publish ended and closes the span.
    pub(crate) fn finish<T, E: std::fmt::Display>(&mut self, result: &Result<T, E>) {
        if let Some(span) = self.0.take() {
            match result {
                Ok(_) => span.record("outcome", "confirmed"),
                Err(e) => span
                    .record("outcome", "failed")
                    .record("otel.status_code", "ERROR")
                    .record("error", tracing::field::display(e)),
            };
        }
    }
}

/// Opens the message's `rabbit_once.publish` span (a child of the current span) and
/// writes its context into the headers (see [`inject`]).
pub(crate) fn on_publish(msg: &mut Message, frame_max: u32) -> PublishTrace {
    let span = tracing::info_span!(
        "rabbit_once.publish",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = msg.exchange.as_str(),
        messaging.rabbitmq.destination.routing_key = msg.routing_key.as_str(),
        message_id = msg.message_id().unwrap_or_default(),
        outcome = Empty,
        otel.status_code = Empty,
        error = Empty,
    );
    inject(msg, &span, frame_max);
    PublishTrace(Some(span))
}

/// A message written into the transactional outbox: a `rabbit_once.enqueue` span (a child
/// of the current span, closed at once) whose context goes into the row's headers. The
/// relay's publish keeps that `traceparent`, so the consumer's handle span continues the
/// trace of the code that committed the row, not the relay's.
#[cfg(feature = "dedup")]
pub(crate) fn on_enqueue(msg: &mut Message, frame_max: u32) {
    let span = tracing::info_span!(
        "rabbit_once.enqueue",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = msg.exchange.as_str(),
        messaging.rabbitmq.destination.routing_key = msg.routing_key.as_str(),
        message_id = msg.message_id().unwrap_or_default(),
    );
    inject(msg, &span, frame_max);
}
