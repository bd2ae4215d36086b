//! `rabbit-once consume`: the idempotent consumer with the built-in `applied` handler.

use crate::applied::{Applied, Db, Emit, EmitOutbox};
use crate::common::Conn;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rabbit_once::{
    Connection, Consumer, ConsumerConfig, ConsumerStats, PostgresOutbox, Queue, QueueType, Relay,
    RelayConfig, RetryPolicy, SqliteOutbox, Topology,
};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The flags of `rabbit-once consume`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// The Prometheus endpoint.
    #[command(flatten)]
    pub metrics: crate::common::Metrics,
    /// Queue to consume (declared durable if missing).
    #[arg(long)]
    pub queue: String,
    /// Dedup store: sqlite:PATH or postgres://user@host:port/db
    #[arg(long)]
    pub store: String,
    /// PostgreSQL schema for the dedup and applied tables (created if missing).
    #[arg(long)]
    pub schema: Option<String>,
    /// Consumer group (consumers of one group apply each message once between them).
    #[arg(long)]
    pub group: Option<String>,
    /// Most unacknowledged deliveries at once.
    #[arg(long, default_value_t = 500)]
    pub prefetch: u16,
    /// Batches handled at once (1 = strictly in order).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Group commit: messages per transaction (1 = one transaction per message).
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Stop after this many seconds without a delivery (default: run until Ctrl-C).
    #[arg(long)]
    pub until_idle: Option<f64>,
    /// Stop once this many messages were applied or skipped as duplicates.
    #[arg(long)]
    pub until_count: Option<u64>,
    /// Attempts before a failing message is dead-lettered.
    #[arg(long, default_value_t = MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The queue is a quorum queue (RabbitMQ ≥ 3.10): the consumer declares it, its retry queues
    /// and its dead-letter queue as quorum queues (at-least-once dead-lettering, a delivery limit
    /// above `--max-attempts`); an existing classic queue of that name is refused (406).
    #[arg(long)]
    pub quorum: bool,
    /// A pipeline stage: emit a copy of each message to this queue through the transactional
    /// outbox on the store, in the transaction that records the message as applied (a relay in
    /// this process publishes it). A duplicate delivery emits nothing.
    #[arg(long, value_name = "QUEUE")]
    pub emit_to: Option<String>,
    /// Reject every K-th message (seq % K == K - 1, seqs counted from 0: with K = 3 the seqs 2,
    /// 5, 8, …): the built-in handler dead-letters it at once with a reason instead of applying
    /// it, to show (and test) the dead-letter path. Messages without a seq body are applied.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub reject_every: Option<u64>,
    /// Append the counters as a JSON line to this file every 500 ms and at the end (used by
    /// `chaos`, which may kill this process at any moment).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Seal the dedup table into a read-only segment every this many records
    /// (`SqliteOptions::segment_rows`, `PostgresOptions::segment_rows`: for random message ids
    /// and large tables; 0: never).
    #[arg(long, default_value_t = 0)]
    pub segment_rows: u64,
}

/// The consumer's counters: printed at the end, and the lines of `--report`.
#[derive(Debug, serde::Serialize, serde::Deserialize, Default, Clone)]
pub struct Summary {
    /// Deliveries received, redeliveries included.
    pub delivered: u64,
    /// Messages the handler applied (committed).
    pub applied: u64,
    /// Deliveries acked without running the handler: already applied.
    pub duplicates: u64,
    /// Messages sent to a retry queue.
    pub retried: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Times the database was found unreachable.
    pub store_outages: u64,
    /// Reconnects of the consumer's connection.
    pub reconnects: u64,
    /// Seconds since the consumer started.
    pub seconds: f64,
}

/// Consumes until idle, a count, or Ctrl-C, and prints the summary; with `--metrics-addr`,
/// serves the metrics meanwhile (and `--metrics-linger` seconds after).
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let metrics = a.metrics.clone();
    metrics.start()?;
    let result = consume_and_report(a).await;
    metrics.linger().await;
    result
}

async fn consume_and_report(a: Args) -> anyhow::Result<ExitCode> {
    let db = Db::open_with(&a.store, a.schema.clone(), a.segment_rows).await?;
    db.prepare().await.with_context(|| {
        format!(
            "could not prepare the database {}",
            crate::applied::without_password(&a.store)
        )
    })?;
    let config = a.conn.config("rabbit-once consume")?.topology(topology(&a));
    let conn = crate::common::connect(&a.conn, config).await?;
    let (s, secs) = consume(&conn, &db, &a).await?;
    let summary = summary(&s, &conn, secs);
    write_report(a.report.as_deref(), &summary);
    conn.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "delivered {}  applied {}  duplicates skipped {}  retried {}  dead-lettered {}  reconnects {}  in {:.2}s",
            summary.delivered,
            summary.applied,
            summary.duplicates,
            summary.retried,
            summary.dead_lettered,
            summary.reconnects,
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the connection declares: the work queue (a quorum consumer declares its own) and the
/// queue it emits to, of the same type — a quorum one exactly as its own `consume --quorum`
/// declares it with the default `--max-attempts` (as `publish --quorum` does): a plain quorum
/// queue of that name would be refused (406) by the next stage's consumer, or refuse it.
fn topology(a: &Args) -> Topology {
    let mut t = Topology::new();
    if !a.quorum {
        t = t.queue(Queue::new(&a.queue));
    }
    match (&a.emit_to, a.quorum) {
        (Some(next), true) => t.merge(&consumer_config(next, MAX_ATTEMPTS, true).topology()),
        (Some(next), false) => t.queue(Queue::new(next)),
        (None, _) => t,
    }
}

fn summary(s: &ConsumerStats, conn: &Connection, secs: f64) -> Summary {
    Summary {
        delivered: s.delivered,
        applied: s.applied,
        duplicates: s.duplicates,
        retried: s.retried,
        dead_lettered: s.dead_lettered,
        store_outages: s.store_outages,
        reconnects: conn.reconnects(),
        seconds: secs,
    }
}

fn write_report(path: Option<&std::path::Path>, s: &Summary) {
    if let Some(p) = path
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    {
        use std::io::Write;
        let _ =
            f.write_all(format!("{}\n", serde_json::to_string(s).unwrap_or_default()).as_bytes());
    }
}

/// `--max-attempts` by default.
pub const MAX_ATTEMPTS: u32 = 5;

/// The consumer of `queue` as `consume` runs it: its retry policy, and with `quorum` quorum
/// queues (what it declares depends on these, so `publish --quorum` asks here too).
pub fn consumer_config(queue: &str, max_attempts: u32, quorum: bool) -> ConsumerConfig {
    let config = ConsumerConfig::new(queue).retry(retry_policy(max_attempts));
    if quorum {
        config.queue_type(QueueType::Quorum)
    } else {
        config
    }
}

/// The retry schedule of the built-in consumer: 200 ms, 1 s, then 5 s.
pub fn retry_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        vec![
            Duration::from_millis(200),
            Duration::from_secs(1),
            Duration::from_secs(5),
        ],
    )
}

/// Runs the consumer on `conn` until idle / count / Ctrl-C / SIGTERM; returns its counters.
pub async fn consume(conn: &Connection, db: &Db, a: &Args) -> anyhow::Result<(ConsumerStats, f64)> {
    let mut config = consumer_config(&a.queue, a.max_attempts, a.quorum)
        .prefetch(a.prefetch)
        .concurrency(a.concurrency)
        .group_commit(a.batch, Duration::from_millis(1));
    if let Some(g) = &a.group {
        config = config.group(g);
    }
    let (handler, relay) = match &a.emit_to {
        None => (Applied::new().reject_every(a.reject_every), None),
        Some(queue) => {
            let (outbox, relay) = emit_outbox(conn, db).await?;
            let emit = Emit {
                queue: queue.clone(),
                outbox,
            };
            (
                Applied::emitting(emit).reject_every(a.reject_every),
                Some(relay),
            )
        }
    };
    let consumer = match db {
        Db::Sqlite(s) => Consumer::start(conn, s.clone(), handler, config).await?,
        Db::Postgres(s) => Consumer::start(conn, s.clone(), handler, config).await?,
    };
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    let started = Instant::now();
    let mut last_delivered = 0;
    let mut idle_since = Instant::now();
    let mut stop = std::pin::pin!(crate::common::stop_signal());
    let mut last_report = Instant::now();
    // Whether the loop ended on a signal: if not (--until-idle, --until-count), the first one
    // during the close only says what it waits for.
    let mut signalled = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut stop => {
                signalled = true;
                break;
            }
        }
        let s = consumer.stats();
        if a.report.is_some() && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            write_report(
                a.report.as_deref(),
                &summary(&s, conn, started.elapsed().as_secs_f64()),
            );
        }
        pb.set_message(format!(
            "delivered {}  applied {}  duplicates {}  retried {}  dead-lettered {}  reconnects {}",
            s.delivered,
            s.applied,
            s.duplicates,
            s.retried,
            s.dead_lettered,
            conn.reconnects()
        ));
        pb.tick();
        if s.delivered != last_delivered {
            last_delivered = s.delivered;
            idle_since = Instant::now();
        }
        if a.until_count.is_some_and(|n| s.applied + s.duplicates >= n) {
            break;
        }
        if a.until_idle
            .is_some_and(|secs| idle_since.elapsed() >= Duration::from_secs_f64(secs))
        {
            break;
        }
        if consumer.is_finished() {
            pb.finish_and_clear();
            // The error itself, not its text: its kind decides the exit status (credentials
            // refused on a reconnect exit 3, a database that failed 4).
            return Err(match consumer.error() {
                Some(e) => anyhow::Error::from(e).context("the consumer stopped"),
                None => anyhow::anyhow!("the consumer stopped: {:?}", conn.state()),
            });
        }
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    // The batch in hand finishes (commit and ack, or roll back); a second Ctrl-C / SIGTERM
    // stops the wait at once (exit 1).
    let Some(stats) = crate::common::close_or_stop(
        consumer.close(Duration::from_secs(10)),
        signalled,
        "the batch in hand",
    )
    .await
    else {
        return Err(anyhow::anyhow!(
            "stopped again before the batch in hand was settled: the broker delivers its \
             messages again (one that committed is skipped as a duplicate)"
        ));
    };
    if let Some(relay) = relay {
        // What it has not published stays in the outbox for the next relay.
        relay.close(Duration::from_secs(10)).await;
    }
    Ok((stats, secs))
}

/// The outbox on the consumer's own store (created if missing) and a relay publishing it.
async fn emit_outbox(conn: &Connection, db: &Db) -> anyhow::Result<(EmitOutbox, Relay)> {
    Ok(match db {
        Db::Sqlite(s) => {
            let o = SqliteOutbox::new(s.pool().clone());
            o.migrate().await?;
            let relay = Relay::start(conn, o.clone(), RelayConfig::default())?;
            (EmitOutbox::Sqlite(o), relay)
        }
        Db::Postgres(s) => {
            let o = PostgresOutbox::new(s.pool().clone());
            o.migrate().await?;
            let relay = Relay::start(conn, o.clone(), RelayConfig::default())?;
            (EmitOutbox::Postgres(o), relay)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        consume: Args,
    }

    #[test]
    fn a_quorum_stage_declares_the_queue_it_emits_to_as_the_next_stage_declares_it() {
        let args = |extra: &[&str]| {
            let base = ["consume", "--queue", "s1", "--store", "sqlite::memory:"];
            Cli::parse_from(base.iter().chain(extra)).consume
        };
        // The next stage (`consume --quorum --queue s2`) declares its queues with the consumer;
        // a plain quorum `s2` beside them would be refused (406 inequivalent arg).
        assert_eq!(
            topology(&args(&["--quorum", "--emit-to", "s2"])),
            consumer_config("s2", MAX_ATTEMPTS, true).topology()
        );
        assert_eq!(
            topology(&args(&["--emit-to", "s2"])),
            Topology::new()
                .queue(Queue::new("s1"))
                .queue(Queue::new("s2"))
        );
    }
}
