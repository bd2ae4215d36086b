//! The hooks on plain values: what goes into the headers with and without the feature, with
//! and without an OpenTelemetry layer; when the consumer's spans read `traceparent`.

use super::*;
use crate::message::Message;

/// Runs `f` on `msg` inside a `caller` span with a logging-only subscriber (no OpenTelemetry
/// layer) installed; returns the message.
fn in_a_logged_span(msg: Message, f: impl FnOnce(&mut Message)) -> Message {
    let mut msg = msg;
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let _in = tracing::info_span!("caller").entered();
        f(&mut msg);
    });
    msg
}

/// Inside a span with a subscriber installed, a message is accepted; whether its headers
/// get trace context.
fn publish_in_a_span(msg: Message) -> Message {
    in_a_logged_span(msg, |msg| {
        let mut trace = on_publish(msg, 131_072);
        trace.finish(&Ok::<(), String>(()));
    })
}

/// [`publish_in_a_span`] for a message written into the outbox.
#[cfg(feature = "dedup")]
fn enqueue_in_a_span(msg: Message) -> Message {
    in_a_logged_span(msg, |msg| on_enqueue(msg, 131_072))
}

#[cfg(all(not(feature = "opentelemetry"), feature = "dedup"))]
#[test]
fn without_the_feature_nothing_is_added_to_an_outbox_row() {
    let msg = enqueue_in_a_span(Message::to_queue("q", "x").with_message_id("m-1"));
    assert_eq!(msg.properties().headers, None);
    assert_eq!(std::mem::size_of::<CommitSpan>(), 0, "no cost per batch");
}

#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
#[test]
fn without_an_opentelemetry_layer_nothing_is_added_to_an_outbox_row() {
    let msg = enqueue_in_a_span(Message::to_queue("q", "x").with_message_id("m-1"));
    assert_eq!(msg.properties().headers, None);
}

/// Runs `f` inside a `caller` span with an OpenTelemetry layer installed (this thread only);
/// returns what `f` returned and the caller span's trace id.
#[cfg(feature = "opentelemetry")]
fn with_otel<T>(f: impl FnOnce() -> T) -> (T, String) {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("unit"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let caller = tracing::info_span!("caller");
        let trace = caller
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string();
        let _in = caller.entered();
        (f(), trace)
    })
}

#[cfg(feature = "opentelemetry")]
fn traceparent(msg: &Message) -> Option<&str> {
    msg.header(TRACEPARENT).and_then(|v| v.as_str())
}

#[cfg(feature = "opentelemetry")]
#[test]
fn with_a_layer_the_caller_trace_goes_into_the_headers_once() {
    let (msg, trace) = with_otel(|| {
        let mut msg = Message::to_queue("q", "x").with_message_id("m-1");
        on_publish(&mut msg, 131_072).finish(&Ok::<(), String>(()));
        msg
    });
    let tp = traceparent(&msg).expect("a traceparent").to_owned();
    assert_eq!(tp.split('-').nth(1), Some(trace.as_str()), "{tp}");
    assert!(msg.header(TRACESTATE).is_some());
    // Accepted again (a caller re-sending the same message): its traceparent is kept.
    let (again, _) = with_otel(move || {
        let mut msg = msg;
        on_publish(&mut msg, 131_072).finish(&Ok::<(), String>(()));
        msg
    });
    assert_eq!(traceparent(&again), Some(tp.as_str()));
}

#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
#[test]
fn with_a_layer_an_outbox_row_gets_the_caller_trace() {
    let (msg, trace) = with_otel(|| {
        let mut msg = Message::to_queue("q", "x").with_message_id("m-1");
        on_enqueue(&mut msg, 131_072);
        msg
    });
    let tp = traceparent(&msg).expect("a traceparent");
    assert_eq!(tp.split('-').nth(1), Some(trace.as_str()), "{tp}");
}

#[cfg(feature = "opentelemetry")]
#[test]
fn trace_context_that_does_not_fit_leaves_the_headers_as_they_were() {
    let room = |m: &Message| crate::transport::content_header_frame_size(&m.properties) as u32;
    // No headers: none after.
    let bare = Message::to_queue("q", "x").with_message_id("m-1");
    let frame_max = room(&bare) + 10;
    let (msg, _) = with_otel(|| {
        let mut msg = bare.clone();
        on_publish(&mut msg, frame_max).finish(&Ok::<(), String>(()));
        msg
    });
    assert_eq!(msg, bare);
    // The caller's headers, a stray `tracestate` among them: as they were.
    let own = bare
        .clone()
        .with_header("tenant", "t1")
        .with_header(TRACESTATE, "vendor=1");
    let frame_max = room(&own) + 10;
    let (msg, _) = with_otel(|| {
        let mut msg = own.clone();
        on_publish(&mut msg, frame_max).finish(&Ok::<(), String>(()));
        msg
    });
    assert_eq!(msg, own);
    // With room, the stray `tracestate` is replaced by the context's.
    let (msg, _) = with_otel(|| {
        let mut msg = own.clone();
        on_publish(&mut msg, 131_072).finish(&Ok::<(), String>(()));
        msg
    });
    assert!(traceparent(&msg).is_some());
    assert_eq!(
        msg.header(TRACESTATE).and_then(|v| v.as_str()),
        Some(""),
        "the span's (empty) trace state"
    );
    assert_eq!(msg.header("tenant").and_then(|v| v.as_str()), Some("t1"));
}

/// The consumer reads `traceparent`s only when an OpenTelemetry layer records its spans: not
/// without a subscriber, not with one that only logs.
#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
#[test]
fn the_consumer_reads_traceparents_only_for_an_opentelemetry_layer() {
    let d = crate::consumer::Delivery::builder("x")
        .header(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .build();
    let otel = || commit_span("q", "g", [&d]).otel;
    assert_eq!(otel(), None, "no subscriber: the span is disabled");
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .finish();
    assert_eq!(
        tracing::subscriber::with_default(logs, otel),
        Some(false),
        "a subscriber without the layer: nothing to parent, nothing parsed"
    );
    assert_eq!(with_otel(otel).0, Some(true));
}

#[cfg(not(feature = "opentelemetry"))]
#[test]
fn without_the_feature_nothing_is_added_to_the_headers() {
    let msg = publish_in_a_span(Message::to_queue("q", "x").with_message_id("m-1"));
    assert_eq!(msg.properties().headers, None);
    assert_eq!(
        std::mem::size_of::<PublishTrace>(),
        0,
        "no cost per message"
    );
}

#[cfg(feature = "opentelemetry")]
#[test]
fn without_an_opentelemetry_layer_nothing_is_added_to_the_headers() {
    let msg = publish_in_a_span(Message::to_queue("q", "x").with_message_id("m-1"));
    assert_eq!(msg.properties().headers, None);
}

#[cfg(feature = "opentelemetry")]
#[test]
fn a_valid_traceparent_is_read_back_and_a_malformed_one_is_ignored() {
    use opentelemetry::trace::TraceContextExt;
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let d = crate::consumer::Delivery::builder("x")
        .header(TRACEPARENT, good)
        .header(TRACESTATE, "vendor=1")
        .build();
    let cx = d.trace_context();
    let sc = cx.span().span_context().clone();
    assert!(sc.is_remote() && sc.is_sampled());
    assert_eq!(
        sc.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(sc.trace_state().header(), "vendor=1");
    let bad = crate::consumer::Delivery::builder("x")
        .header(TRACEPARENT, "00-not-a-trace-01")
        .build();
    assert!(!bad.trace_context().span().span_context().is_valid());
    let none = crate::consumer::Delivery::builder("x").build();
    assert!(!none.trace_context().span().span_context().is_valid());
}

/// With a logging-only subscriber, a message that carries a `traceparent` already is
/// published (the relay's case, no current span) and a settled delivery acked without its
/// `traceparent` being parsed; with an OpenTelemetry layer both parse it.
#[cfg(all(feature = "opentelemetry", feature = "dedup"))]
#[test]
fn without_an_opentelemetry_layer_no_traceparent_is_parsed() {
    use super::headers::PARSES;
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let run = || {
        let before = PARSES.with(|n| n.get());
        let mut msg = Message::to_queue("q", "x").with_header(TRACEPARENT, TP);
        let mut trace = on_publish(&mut msg, 131_072);
        trace.finish(&Ok::<(), String>(()));
        let d = crate::consumer::Delivery::builder("x")
            .header(TRACEPARENT, TP)
            .build();
        ack_settled(d, "q", "retried");
        PARSES.with(|n| n.get()) - before
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .finish();
    assert_eq!(tracing::subscriber::with_default(logs, run), 0);
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("unit"));
    let otel = tracing_subscriber::registry().with(layer);
    assert_eq!(tracing::subscriber::with_default(otel, run), 2);
}
