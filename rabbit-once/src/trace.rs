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

#[cfg(feature = "opentelemetry")]
pub use enabled::*;

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use disabled::*;

#[cfg(feature = "opentelemetry")]
mod enabled {
    use crate::consumer::Delivery;
    use crate::message::Message;
    use crate::transport::{FieldTable, Properties};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use std::future::Future;
    use tracing::Instrument;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The `opentelemetry` this crate builds on (its trace API), for matching versions.
    pub use opentelemetry;
    /// The `tracing-opentelemetry` this crate builds on: its layer turns the spans into
    /// OpenTelemetry spans.
    pub use tracing_opentelemetry;

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

    /// The remote trace context in `properties`, if its `traceparent` is valid.
    fn extract(properties: &Properties) -> Option<opentelemetry::Context> {
        let cx = TraceContextPropagator::new().extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderExtractor(properties.headers.as_ref()),
        );
        cx.span().span_context().is_valid().then_some(cx)
    }

    impl Delivery {
        /// The publisher's trace context from this delivery's `traceparent` and `tracestate`
        /// headers; an empty context if there is none or it is malformed. Feature
        /// `opentelemetry`.
        pub fn trace_context(&self) -> opentelemetry::Context {
            extract(self.properties()).unwrap_or_default()
        }
    }

    /// A `rabbit_once.handle` span for `delivery` whose parent is the publisher's span (when
    /// the delivery carries a valid `traceparent`; otherwise the current span, as usual), for
    /// handling deliveries of a plain [`Subscription`](crate::Subscription) the way the
    /// idempotent consumer does. Its `queue` field is empty: record it with
    /// `span.record("queue", name)`. Feature `opentelemetry`.
    ///
    /// ```no_run
    /// # async fn run(mut sub: rabbit_once::Subscription) {
    /// use tracing::Instrument;
    /// while let Some(delivery) = sub.recv().await {
    ///     let span = rabbit_once::trace::span_for(&delivery);
    ///     span.record("queue", "orders");
    ///     async { /* apply it */ }.instrument(span).await;
    ///     delivery.ack();
    /// }
    /// # }
    /// ```
    pub fn span_for(delivery: &Delivery) -> tracing::Span {
        handle_span(delivery, None)
    }

    fn handle_span(delivery: &Delivery, queue: Option<&str>) -> tracing::Span {
        let span = tracing::info_span!(
            "rabbit_once.handle",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            message_id = delivery.message_id().unwrap_or_default(),
            queue = Empty,
            attempt = delivery.attempt(),
        );
        if let Some(q) = queue {
            span.record("queue", q);
        }
        if let Some(cx) = extract(delivery.properties()) {
            // Fails only if no OpenTelemetry layer is installed or the span is disabled:
            // then there is nothing to link.
            let _ = span.set_parent(cx);
        }
        span
    }

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
    /// writes its context into the headers, unless the message has a `traceparent` already or
    /// the headers would then not fit in one frame of `frame_max` bytes.
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
        if msg.header(TRACEPARENT).is_some() {
            return PublishTrace(Some(span));
        }
        // rabbit-once's spans may be filtered out while the caller's are not: then the
        // caller's span is what the consumer continues.
        let cx = if span.is_disabled() {
            tracing::Span::current().context()
        } else {
            span.context()
        };
        if !cx.span().span_context().is_valid() {
            return PublishTrace(Some(span));
        }
        let before = msg.properties.headers.clone();
        let headers = msg.properties.headers.get_or_insert_with(FieldTable::new);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        if let Err(why) = msg.check_header_fits(frame_max) {
            tracing::debug!(%why, "no room for the trace context headers; sent without them");
            msg.properties.headers = before;
        }
        PublishTrace(Some(span))
    }

    /// Runs one batch's transaction `fut` inside a `rabbit_once.commit` span linked to the
    /// trace context of each of `deliveries`; the default `handle_batch` reads `queue` from
    /// here for its per-message spans.
    #[cfg(feature = "dedup")]
    pub(crate) fn in_commit<'d, F: Future>(
        queue: &str,
        group: &str,
        deliveries: impl IntoIterator<Item = &'d Delivery>,
        fut: F,
    ) -> impl Future<Output = F::Output> {
        let span = tracing::info_span!("rabbit_once.commit", queue, group, messages = Empty,);
        let mut n = 0u64;
        for d in deliveries {
            n += 1;
            if let Some(cx) = extract(d.properties()) {
                span.add_link(cx.span().span_context().clone());
            }
        }
        span.record("messages", n);
        QUEUE.scope(queue.to_owned(), fut.instrument(span))
    }

    #[cfg(feature = "dedup")]
    tokio::task_local! {
        /// The queue of the batch being handled, for the per-message spans.
        static QUEUE: String;
    }

    /// Runs the handler's `fut` for `delivery` inside its `rabbit_once.handle` span.
    #[cfg(feature = "dedup")]
    pub(crate) fn handling<F: Future>(
        delivery: &Delivery,
        fut: F,
    ) -> impl Future<Output = F::Output> {
        let span = QUEUE
            .try_with(|q| handle_span(delivery, Some(q)))
            .unwrap_or_else(|_| handle_span(delivery, None));
        fut.instrument(span)
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod disabled {
    use crate::message::Message;

    /// Without the feature: nothing, and no size.
    #[derive(Debug, Default)]
    pub(crate) struct PublishTrace;

    impl PublishTrace {
        #[inline(always)]
        pub(crate) fn finish<T, E>(&mut self, _result: &Result<T, E>) {}
    }

    #[inline(always)]
    pub(crate) fn on_publish(_msg: &mut Message, _frame_max: u32) -> PublishTrace {
        PublishTrace
    }

    #[cfg(feature = "dedup")]
    #[inline(always)]
    pub(crate) fn in_commit<'d, F>(
        _queue: &str,
        _group: &str,
        _deliveries: impl IntoIterator<Item = &'d crate::consumer::Delivery>,
        fut: F,
    ) -> F {
        fut
    }

    #[cfg(feature = "dedup")]
    #[inline(always)]
    pub(crate) fn handling<F>(_delivery: &crate::consumer::Delivery, fut: F) -> F {
        fut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// Inside a span with a subscriber installed, a message is accepted; whether its headers
    /// get trace context.
    fn publish_in_a_span(msg: Message) -> Message {
        let mut msg = msg;
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let _in = tracing::info_span!("caller").entered();
            let mut trace = on_publish(&mut msg, 131_072);
            trace.finish(&Ok::<(), String>(()));
        });
        msg
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
}
