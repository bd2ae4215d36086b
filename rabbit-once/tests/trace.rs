//! Trace context across the broker (feature `opentelemetry`): the consumer's handle span is a
//! child of the publisher's span — also when the message was re-published after a lost
//! connection — and a `traceparent` the caller set is kept; a committed batch's acks are an ack
//! span under its commit span; a message sent through the outbox continues the trace of the
//! code that enqueued it. Spans go through a
//! `tracing-opentelemetry` layer into an SDK tracer provider with an in-memory exporter; each
//! test finds its own spans by its own message ids. Run with
//! `cargo test -p rabbit-once --features opentelemetry --test trace`.

mod support;

use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rabbit_once::trace::opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use rabbit_once::trace::tracing_opentelemetry::{self, OpenTelemetrySpanExt};
use rabbit_once::trace::{TRACEPARENT, span_for};
use rabbit_once::{
    Consumer, Event, Publisher, PublisherConfig, Queue, Relay, RelayConfig, SqliteOutbox,
    Subscription, SubscriptionConfig, Topology,
};
use std::sync::OnceLock;
use std::time::Duration;
use support::consumer::{GUARD, cleanup, config, sqlite, wait_for};
use support::*;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The exporter behind the process-wide subscriber (installed once: the publisher's and the
/// consumer's tasks run on any thread).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("rabbit-once-test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this test binary");
        exporter
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished spans named `name` whose `message_id` is `id`.
fn spans(name: &str, id: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == name && attr(s, "message_id").as_deref() == Some(id))
        .collect()
}

/// The one finished span named `name` of message `id`.
fn one_span(name: &str, id: &str) -> SpanData {
    let mut found = spans(name, id);
    assert_eq!(found.len(), 1, "{name} spans of {id}: {found:?}");
    found.remove(0)
}

/// The trace and span id of a test's own root span.
fn ids_of(span: &tracing::Span) -> (TraceId, SpanId) {
    let cx = span.context();
    let sc = opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .clone();
    (sc.trace_id(), sc.span_id())
}

/// Consumes `n` messages of `q` with an idempotent consumer (SQLite) until all are applied.
async fn consume(conn: &rabbit_once::Connection, q: &str, n: u64) {
    let (store, _f) = sqlite().await;
    let consumer = Consumer::start(
        conn,
        store,
        support::consumer::Ledger::default(),
        config(q).group_commit(10, Duration::from_millis(2)),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "every message applied", |s| s.applied >= n).await;
    consumer.close(Duration::from_secs(5)).await;
    // A copy the broker got twice (a cut in flight) is a duplicate: its handler does not run.
    assert_eq!(s.applied, n, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_span_is_a_child_of_the_publish_span() {
    exporter();
    let q = unique("trace-child");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let root = tracing::info_span!("test.order_placed");
    let (root_trace, root_id) = ids_of(&root);
    let ids: Vec<String> = (0..3).map(|i| format!("{q}-{i}")).collect();
    async {
        for (i, id) in ids.iter().enumerate() {
            p.publish_confirmed(seq_message(&q, i as u64, 10).with_message_id(id))
                .await
                .unwrap();
        }
    }
    .instrument(root)
    .await;
    consume(&conn, &q, 3).await;

    for id in &ids {
        let publish = one_span("rabbit_once.publish", id);
        assert_eq!(publish.span_context.trace_id(), root_trace, "{id}");
        assert_eq!(
            publish.parent_span_id, root_id,
            "{id}: a child of the caller's span"
        );
        assert_eq!(attr(&publish, "outcome").as_deref(), Some("confirmed"));
        let handle = one_span("rabbit_once.handle", id);
        assert_eq!(handle.span_context.trace_id(), root_trace, "{id}");
        assert_eq!(
            handle.parent_span_id,
            publish.span_context.span_id(),
            "{id}: the handler's span is a child of the publish span"
        );
        assert!(handle.parent_span_is_remote, "{id}");
        assert_eq!(attr(&handle, "queue").as_deref(), Some(q.as_str()));
    }
    // Each batch's transaction is a commit span linked to its messages' publish spans.
    let linked: Vec<SpanId> = exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "rabbit_once.commit" && attr(s, "queue").as_deref() == Some(&q))
        .flat_map(|s| s.links.links.into_iter().map(|l| l.span_context.span_id()))
        .collect();
    for id in &ids {
        let publish = one_span("rabbit_once.publish", id).span_context.span_id();
        assert!(linked.contains(&publish), "{id}: linked from a commit span");
    }
    // Each committed batch's acks are an ack span, a child of that batch's commit span,
    // carrying its message ids: every message acked once.
    let (commits, acks) = batch_spans(&q);
    assert!(!acks.is_empty());
    let mut acked: Vec<String> = Vec::new();
    for ack in &acks {
        assert!(
            commits.contains(&ack.parent_span_id),
            "{ack:?}: a child of a commit span"
        );
        let batch: Vec<String> = attr(ack, "message_ids")
            .unwrap_or_default()
            .split(' ')
            .map(str::to_string)
            .collect();
        assert_eq!(
            attr(ack, "messages"),
            Some(batch.len().to_string()),
            "{ack:?}"
        );
        acked.extend(batch);
    }
    acked.sort();
    assert_eq!(acked, ids, "each message acked once, in an ack span");
    p.close(Duration::from_secs(5)).await;
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// A message acked after its dead-letter copy was confirmed (no commit of its own) gets an ack
/// span in its own trace: a child of the publish span, with its id and the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_is_acked_in_its_own_trace() {
    exporter();
    let q = unique("trace-dead");
    let conn = direct().await;
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let (good, bad) = (format!("{q}-good"), format!("{q}-bad"));
    let ledger = support::consumer::Ledger {
        reject: std::sync::Arc::new([bad.clone()].into()),
        ..Default::default()
    };
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (store, _f) = sqlite().await;
    let consumer = Consumer::start(&conn, store, ledger, config(&q))
        .await
        .unwrap();
    let root = tracing::info_span!("test.two_orders");
    let (root_trace, root_id) = ids_of(&root);
    async {
        for (i, id) in [&good, &bad].into_iter().enumerate() {
            p.publish_confirmed(seq_message(&q, i as u64, 10).with_message_id(id))
                .await
                .unwrap();
        }
    }
    .instrument(root)
    .await;
    let s = wait_for(&consumer, "one applied, one dead-lettered", |s| {
        s.applied >= 1 && s.dead_lettered >= 1
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.dead_lettered), (1, 1), "{s:?}");

    // Two publish spans in the message's trace: the original's, under the test's span, and
    // its dead-letter copy's, under the original's.
    let publishes = spans("rabbit_once.publish", &bad);
    assert_eq!(publishes.len(), 2, "{publishes:?}");
    let publish = publishes
        .iter()
        .find(|s| s.parent_span_id == root_id)
        .expect("the original's publish span");
    for s in &publishes {
        assert_eq!(s.span_context.trace_id(), root_trace);
    }
    assert!(
        publishes
            .iter()
            .any(|s| s.parent_span_id == publish.span_context.span_id()),
        "the copy's publish span is a child of the original's"
    );
    let ack = one_span("rabbit_once.ack", &bad);
    assert_eq!(ack.span_context.trace_id(), root_trace);
    assert_eq!(ack.parent_span_id, publish.span_context.span_id());
    assert_eq!(attr(&ack, "outcome").as_deref(), Some("dead_lettered"));
    assert_eq!(attr(&ack, "queue").as_deref(), Some(q.as_str()));
    // The applied one was acked with its batch, under the commit span.
    let (commits, acks) = batch_spans(&q);
    let batch = acks
        .iter()
        .find(|a| attr(a, "message_ids").as_deref() == Some(good.as_str()))
        .expect("the applied message's ack span");
    assert!(commits.contains(&batch.parent_span_id));
    p.close(Duration::from_secs(5)).await;
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// The span ids of the commit spans of queue `q`, and its ack spans of committed batches.
fn batch_spans(q: &str) -> (Vec<SpanId>, Vec<SpanData>) {
    let all = exporter().get_finished_spans().unwrap();
    let mine = |s: &&SpanData| attr(s, "queue").as_deref() == Some(q);
    let commits = all
        .iter()
        .filter(mine)
        .filter(|s| s.name == "rabbit_once.commit")
        .map(|s| s.span_context.span_id())
        .collect();
    let acks = all
        .iter()
        .filter(mine)
        .filter(|s| s.name == "rabbit_once.ack" && attr(s, "outcome").is_none())
        .cloned()
        .collect();
    (commits, acks)
}

/// A message written through the transactional outbox is published later by the relay, whose
/// own publish would start a new trace: the row carries the trace context of the code that
/// enqueued it (a `rabbit_once.enqueue` span), and the consumer's handle span continues that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_message_continues_the_trace_of_the_code_that_committed_it() {
    exporter();
    let q = unique("trace-outbox");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (db, _file) = sqlite().await;
    let outbox = SqliteOutbox::new(db.pool().clone());
    outbox.migrate().await.unwrap();
    let root = tracing::info_span!("test.order_saved");
    let (root_trace, root_id) = ids_of(&root);
    let ids: Vec<String> = (0..2).map(|i| format!("{q}-{i}")).collect();
    async {
        let mut tx = db.pool().begin().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let m = seq_message(&q, i as u64, 10).with_message_id(id);
            outbox.enqueue(&mut tx, m).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    .instrument(root)
    .await;
    // The relay publishes from its own task, outside the caller's span.
    let relay = Relay::start(
        &conn,
        outbox.clone(),
        RelayConfig::default().poll(Duration::from_millis(100)),
    )
    .unwrap();
    consume(&conn, &q, 2).await;
    relay.close(Duration::from_secs(5)).await;

    for id in &ids {
        let enqueue = one_span("rabbit_once.enqueue", id);
        assert_eq!(enqueue.span_context.trace_id(), root_trace, "{id}");
        assert_eq!(
            enqueue.parent_span_id, root_id,
            "{id}: a child of the caller's span"
        );
        // The relay's publish joins the row's trace, under the enqueue span.
        let publish = one_span("rabbit_once.publish", id);
        assert_eq!(publish.span_context.trace_id(), root_trace, "{id}");
        assert_eq!(publish.parent_span_id, enqueue.span_context.span_id());
        let handle = one_span("rabbit_once.handle", id);
        assert_eq!(
            handle.span_context.trace_id(),
            root_trace,
            "{id}: the caller's trace"
        );
        assert_eq!(
            handle.parent_span_id,
            enqueue.span_context.span_id(),
            "{id}: the handler's span is a child of the enqueue span"
        );
    }
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_republished_after_a_cut_keeps_its_original_trace() {
    exporter();
    let q = unique("trace-cut");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn, p) = publisher_through_proxy(|c| c.heartbeat(Duration::from_secs(1))).await;
    let mut events = conn.events();
    let id = format!("{q}-0");
    let root = tracing::info_span!("test.sent_into_a_black_hole");
    let (root_trace, _) = ids_of(&root);
    // The channel is open and publishing: the next message is written on this session.
    p.publish_confirmed(seq_message(&q, 1, 10).with_message_id(format!("{q}-first")))
        .await
        .unwrap();
    proxy.blackhole(true);
    // Written into the black hole, so never confirmed on this session.
    let confirmation = p
        .publish(seq_message(&q, 0, 10).with_message_id(&id))
        .instrument(root)
        .await
        .unwrap();
    tokio::time::timeout(GUARD, async {
        loop {
            if let Some(Event::Disconnected { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("the dead connection is noticed");
    proxy.blackhole(false);
    let confirmed = confirmation.await.unwrap();
    assert!(
        confirmed.publishes >= 2,
        "re-published on a new session: {confirmed:?}"
    );
    assert!(p.stats().republished >= 1, "{:?}", p.stats());
    consume(&setup, &q, 2).await;

    let publish = one_span("rabbit_once.publish", &id);
    assert_eq!(publish.span_context.trace_id(), root_trace);
    let handle = one_span("rabbit_once.handle", &id);
    assert_eq!(
        handle.span_context.trace_id(),
        root_trace,
        "the original trace"
    );
    assert_eq!(handle.parent_span_id, publish.span_context.span_id());
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    cleanup(&setup, &q).await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_the_caller_set_is_kept_and_span_for_continues_it() {
    exporter();
    let q = unique("trace-own");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let id = format!("{q}-own");
    async {
        p.publish_confirmed(
            seq_message(&q, 0, 10)
                .with_message_id(&id)
                .with_header(TRACEPARENT, own),
        )
        .await
        .unwrap();
    }
    .instrument(tracing::info_span!("test.ignored_parent"))
    .await;
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&q)).unwrap();
    let d = tokio::time::timeout(GUARD, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.header(TRACEPARENT).and_then(|v| v.as_str()),
        Some(own),
        "not overwritten"
    );
    let cx = d.trace_context();
    let sc = opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .clone();
    assert_eq!(
        sc.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    let span = span_for(&d);
    span.record("queue", q.as_str());
    async {}.instrument(span).await;
    d.ack();
    let handle = one_span("rabbit_once.handle", &id);
    assert_eq!(handle.span_context.trace_id(), sc.trace_id());
    assert_eq!(
        handle.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(attr(&handle, "queue").as_deref(), Some(q.as_str()));
    sub.close(Duration::from_secs(5)).await;
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
