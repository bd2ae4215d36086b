//! The W3C trace context in a message's headers: written at publish (or enqueue), read back
//! at delivery.

use crate::consumer::Delivery;
use crate::message::Message;
use crate::transport::{FieldTable, Properties};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context header with the trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C Trace Context header with vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// Writes string values into a message's headers.
struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// Reads UTF-8 long-string headers (other types are not trace context).
struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key)?.as_str()
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }
}

/// The remote trace context in `properties`, if its `traceparent` is valid. Looks the
/// header up first: a message without one costs a scan of its headers, no parse.
pub(super) fn extract(properties: &Properties) -> Option<opentelemetry::Context> {
    properties.header(TRACEPARENT)?;
    #[cfg(test)]
    PARSES.with(|n| n.set(n.get() + 1));
    let cx = TraceContextPropagator::new().extract_with_context(
        &opentelemetry::Context::new(),
        &HeaderExtractor(properties.headers.as_ref()),
    );
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
thread_local! {
    /// Traceparents parsed on this thread (tests check that no layer means no parse).
    pub(super) static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether an OpenTelemetry layer records `span` (contextual, not started yet): a parent
/// read from a `traceparent` is worth parsing only then. Probed by setting the parent it has
/// already — the current span's context, or the current OpenTelemetry context — which fails
/// at once without a layer (a logging-only subscriber) and can be set again after. Not by
/// `span.context()`, which would start the span (its parent could then not be set).
pub(super) fn otel_records(span: &tracing::Span) -> bool {
    if span.is_disabled() {
        return false;
    }
    let current = tracing::Span::current();
    let parent = if current.is_disabled() {
        opentelemetry::Context::current()
    } else {
        current.context()
    };
    span.set_parent(parent).is_ok()
}

impl Delivery {
    /// The publisher's trace context from this delivery's `traceparent` and `tracestate`
    /// headers; an empty context if there is none or it is malformed. Feature
    /// `opentelemetry`.
    pub fn trace_context(&self) -> opentelemetry::Context {
        extract(self.properties()).unwrap_or_default()
    }
}

/// Writes the trace context of `span` (a span just opened) into the message's headers —
/// unless there is no valid context (no OpenTelemetry layer, no span), or the headers would
/// then not fit in one frame of `frame_max` bytes (then they are left as they were). Nothing
/// is cloned: the two headers are added, and taken out again if they do not fit.
///
/// A message with a `traceparent` already (the caller's, an outbox row's, the original's on a
/// retry or dead-letter copy) keeps it; if it is sent from no span of its own (the relay, the
/// consumer's copies), `span` joins that trace as its child.
pub(super) fn inject(msg: &mut Message, span: &tracing::Span, frame_max: u32) {
    if msg.header(TRACEPARENT).is_some() {
        if tracing::Span::current().is_disabled()
            && otel_records(span)
            && let Some(cx) = extract(&msg.properties)
        {
            let _ = span.set_parent(cx);
        }
        return;
    }
    // rabbit-once's spans may be filtered out while the caller's are not: then the
    // caller's span is what the consumer continues.
    let cx = if !span.is_disabled() {
        span.context()
    } else {
        let current = tracing::Span::current();
        if current.is_disabled() {
            return;
        }
        current.context()
    };
    if !cx.span().span_context().is_valid() {
        return;
    }
    let had_headers = msg.properties.headers.is_some();
    let headers = msg.properties.headers.get_or_insert_with(FieldTable::new);
    // A `tracestate` without a `traceparent` is no trace context (W3C): replaced, and put
    // back if ours does not fit.
    let stray_state = headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    if let Err(why) = msg.check_header_fits(frame_max) {
        tracing::debug!(%why, "no room for the trace context headers; sent without them");
        if let Some(h) = msg.properties.headers.as_mut() {
            h.remove(TRACEPARENT);
            h.remove(TRACESTATE);
            if let Some(state) = stray_state {
                h.insert(TRACESTATE, state);
            }
            if !had_headers && h.is_empty() {
                msg.properties.headers = None;
            }
        }
    }
}
