//! The consumer's spans: `rabbit_once.handle` per message (a child of the publisher's span),
//! and per batch `rabbit_once.commit` (linked to its messages) with its `rabbit_once.ack`.

use super::headers::extract;
#[cfg(feature = "dedup")]
use super::headers::otel_records;
use crate::consumer::Delivery;
#[cfg(feature = "dedup")]
use opentelemetry::trace::TraceContextExt;
#[cfg(feature = "dedup")]
use std::future::Future;
#[cfg(feature = "dedup")]
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
    handle_span(delivery, None, true)
}

/// The handle span; `parent_wanted`: whether reading the `traceparent` can matter (false
/// when the batch's commit span found no OpenTelemetry layer).
fn handle_span(delivery: &Delivery, queue: Option<&str>, parent_wanted: bool) -> tracing::Span {
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
    // A disabled span (no subscriber wants it) has no parent to set: nothing parsed.
    if parent_wanted
        && !span.is_disabled()
        && let Some(cx) = extract(delivery.properties())
    {
        // Fails only if no OpenTelemetry layer is installed: then there is nothing to link.
        let _ = span.set_parent(cx);
    }
    span
}

/// The `rabbit_once.commit` span of one batch's transaction (claim, handle, commit),
/// linked to the trace context of each message in it; the parent of the batch's
/// `rabbit_once.ack` span.
#[cfg(feature = "dedup")]
#[derive(Debug)]
pub(crate) struct CommitSpan {
    span: tracing::Span,
    /// Whether the handle spans should read their `traceparent`: `Some(false)` when this
    /// span found no OpenTelemetry layer (nothing to parent), `None` when it could not
    /// tell (disabled itself).
    pub(super) otel: Option<bool>,
}

/// Opens the `rabbit_once.commit` span of a batch of `deliveries`. The `traceparent`s are
/// read only when an OpenTelemetry layer records the span.
#[cfg(feature = "dedup")]
pub(crate) fn commit_span<'d>(
    queue: &str,
    group: &str,
    deliveries: impl IntoIterator<Item = &'d Delivery>,
) -> CommitSpan {
    let span = tracing::info_span!("rabbit_once.commit", queue, group, messages = Empty);
    // `context()` starts the OpenTelemetry span (links may still be added): its context
    // is valid only if a layer records it.
    let otel = (!span.is_disabled()).then(|| span.context().span().span_context().is_valid());
    let mut n = 0u64;
    for d in deliveries {
        n += 1;
        if otel == Some(true)
            && let Some(cx) = extract(d.properties())
        {
            span.add_link(cx.span().span_context().clone());
        }
    }
    span.record("messages", n);
    CommitSpan { span, otel }
}

#[cfg(feature = "dedup")]
impl CommitSpan {
    /// Runs the batch's transaction `fut` inside this span; the default `handle_batch`
    /// reads `queue` from here for its per-message spans.
    pub(crate) fn run<F: Future>(&self, queue: &str, fut: F) -> impl Future<Output = F::Output> {
        let batch = Batch {
            queue: queue.to_owned(),
            otel: self.otel,
        };
        BATCH.scope(batch, fut.instrument(self.span.clone()))
    }

    /// Acks the committed batch's `deliveries` inside a `rabbit_once.ack` span, a child of
    /// this commit span, carrying their message ids (space-separated).
    pub(crate) fn ack(&self, queue: &str, group: &str, deliveries: impl Iterator<Item = Delivery>) {
        let span = tracing::info_span!(
            parent: &self.span,
            "rabbit_once.ack",
            queue,
            group,
            messages = Empty,
            message_ids = Empty,
        );
        if span.is_disabled() {
            deliveries.for_each(Delivery::ack);
            return;
        }
        let _in = span.enter();
        // The ids go only to an OpenTelemetry layer (a logging-only subscriber shows no
        // event of this span): no string built for nothing.
        let with_ids = self.otel == Some(true);
        let (mut n, mut ids) = (0u64, String::new());
        for d in deliveries {
            n += 1;
            if with_ids && let Some(id) = d.message_id() {
                if !ids.is_empty() {
                    ids.push(' ');
                }
                ids.push_str(id);
            }
            d.ack();
        }
        span.record("messages", n);
        if with_ids {
            span.record("message_ids", ids.as_str());
        }
    }
}

/// Acks a message settled outside a batch's commit — its retry or dead-letter copy confirmed —
/// inside a `rabbit_once.ack` span in the message's own trace (a child of the publisher's
/// span), with its `message_id` and `outcome` (`retried`, `dead_lettered`).
#[cfg(feature = "dedup")]
pub(crate) fn ack_settled(delivery: Delivery, queue: &str, outcome: &'static str) {
    let span = tracing::info_span!(
        "rabbit_once.ack",
        queue,
        message_id = delivery.message_id().unwrap_or_default(),
        messages = 1u64,
        outcome,
    );
    if otel_records(&span)
        && let Some(cx) = extract(delivery.properties())
    {
        let _ = span.set_parent(cx);
    }
    let _in = span.enter();
    delivery.ack();
}

/// What the per-message spans of a batch take from its commit span.
#[cfg(feature = "dedup")]
struct Batch {
    queue: String,
    otel: Option<bool>,
}

#[cfg(feature = "dedup")]
tokio::task_local! {
    /// The batch being handled, for the per-message spans.
    static BATCH: Batch;
}

/// Runs the handler's `fut` for `delivery` inside its `rabbit_once.handle` span.
#[cfg(feature = "dedup")]
pub(crate) fn handling<F: Future>(delivery: &Delivery, fut: F) -> impl Future<Output = F::Output> {
    let span = BATCH
        .try_with(|b| handle_span(delivery, Some(&b.queue), b.otel != Some(false)))
        .unwrap_or_else(|_| handle_span(delivery, None, true));
    fut.instrument(span)
}
