//! `rabbit-once bench`: the peers' workloads (`../shared/peers`) through our `Publisher`,
//! `Subscription` and `Consumer` with every guarantee on, printing the peers' JSON lines so
//! `EXTRA_CLIENT="rabbit-once=<binary> bench" ../shared/peers/run.sh` runs it among them.
//!
//! Workloads: publish_confirm_persistent, publish_confirm_transient, consume_ack,
//! roundtrip_latency, idempotent_consume_sqlite, idempotent_consume_postgres; and the outbox's
//! (`bench_outbox.rs`): outbox_sqlite, outbox_postgres, outbox_latency_sqlite,
//! outbox_latency_postgres (not in the default list: the peers have no outbox).

use crate::applied::{Applied, Db};
use crate::common::await_confirmations;
use rabbit_once::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Message, Publisher, PublisherConfig,
    Queue, Subscription, SubscriptionConfig, Topology,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CLIENT: &str = "rabbit-once";
const ALL: &str = "publish_confirm_persistent,publish_confirm_transient,consume_ack,roundtrip_latency,idempotent_consume_sqlite,idempotent_consume_postgres";

/// The flags of `rabbit-once bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Broker URI.
    #[arg(long, default_value = crate::common::DEFAULT_URI)]
    pub uri: String,
    /// Messages per workload.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Most unconfirmed messages in flight.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Messages in the latency workload.
    #[arg(long = "lat-n", default_value_t = 10_000)]
    pub lat_n: usize,
    /// Messages per second in the latency workload.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Comma-separated workloads (default: all).
    #[arg(long, default_value = ALL)]
    pub workloads: String,
    /// PostgreSQL for idempotent_consume_postgres (a fresh schema, dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub pg: String,
    /// Group commit size for the idempotent workloads (1 = a transaction per message).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Declare the publish queues as classic queue version 1 or 2 (`x-queue-version`);
    /// unset, the broker's default, which is what the peers get.
    #[arg(long = "queue-version", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub queue_version: Option<u8>,
    /// Publish without the mandatory flag (unroutable messages are then dropped by the
    /// broker, not reported): to measure what the flag costs, never for the comparison.
    #[arg(long = "no-mandatory")]
    pub no_mandatory: bool,
    /// Idempotent workloads only: every message is read once and requeued before the run, so
    /// each arrives *redelivered* — the path that counts runs for the crash-loop bound and
    /// handles messages one at a time (at most 65,535 messages).
    #[arg(long)]
    pub redelivered: bool,
    /// Outbox throughput workloads: messages committed per transaction.
    #[arg(long = "outbox-tx", default_value_t = 100)]
    pub outbox_tx: usize,
    /// Outbox throughput workloads: spread the rows round-robin over this many ordering keys
    /// (0: no key).
    #[arg(long = "outbox-keys", default_value_t = 0)]
    pub outbox_keys: usize,
    /// Outbox workloads: the relay keeps at most one row of each key in flight
    /// (`RelayConfig::strict_key_order`).
    #[arg(long = "strict-key-order")]
    pub strict_key_order: bool,
    /// Idempotent workloads: dedup records already in the table before the run (of the kind
    /// `--ids` says, older than the run's), to measure what a table that has grown costs.
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Idempotent workloads: the kind of message ids, of the run's messages and of the
    /// pre-filled records: `v7` (time-ordered UUIDs, what our publisher assigns) or `v4`
    /// (random UUIDs, what foreign producers often send).
    #[arg(long, value_enum, default_value_t = Ids::V7)]
    pub ids: Ids,
    /// Idempotent workloads: seal the dedup table into a segment every this many records
    /// (`SqliteOptions::segment_rows`, `PostgresOptions::segment_rows`; 0: never). With `--prefill`, the pre-filled records are
    /// laid out as a store that has run a while has them: sealed segments of this size, and
    /// half a segment not yet sealed.
    #[arg(long = "segment-rows", default_value_t = 0)]
    pub segment_rows: u64,
    /// Run every workload against a private cluster of this many nodes started for the run
    /// (node 0's endpoint; the shared broker is not used), removed after.
    #[arg(long)]
    pub cluster: Option<u8>,
    /// Declare the publish workloads' queues as quorum queues (replicated over the cluster's
    /// nodes with `--cluster`).
    #[arg(long)]
    pub quorum: bool,
}

/// The kind of message ids of the idempotent workloads.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// Time-ordered UUIDv7 (the publisher's own).
    V7,
    /// Random UUIDv4.
    V4,
}

/// A random UUIDv4 in its text form.
fn uuid_v4() -> String {
    let r = fastrand::u128(..) & !(0xF000 << 64) & !(0xC << 60);
    let r = r | (0x4000 << 64) | (0x8 << 60);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Inserts `n` dedup records of `group` with ids of kind `ids` (UUIDv7 ones stamped in the past,
/// one millisecond apart, so the run's ids come after them), in id order (fast), then lets the
/// database settle (checkpoint / analyze) so the run measures the grown table, not the fill.
async fn prefill(db: &Db, group: &str, n: u64, ids: Ids, segment_rows: u64) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let base = (now_ns() / 1_000_000) as i64 - n as i64 - 60_000;
    // Chunks of 1M rows on SQLite (all at once on PostgreSQL), or of a segment: one
    // transaction each, sorted within it; with segments, half a segment left unsealed.
    let (chunk, unsealed) = match (segment_rows, db) {
        (0, Db::Sqlite(_)) => (1_000_000, n),
        (0, Db::Postgres(_)) => (n, n),
        (rows, _) => (rows, (rows / 2).min(n)),
    };
    let mut done = 0u64;
    while done < n {
        let k = if done < n - unsealed {
            (n - unsealed - done).min(chunk)
        } else {
            (n - done).min(chunk)
        };
        let first = base + done as i64;
        match db {
            Db::Sqlite(s) => {
                let id = match ids {
                    Ids::V4 => {
                        "substr(h,1,8)||'-'||substr(h,9,4)||'-4'||substr(h,14,3)||'-a'||substr(h,18,3)||'-'||substr(h,21,12)"
                    }
                    Ids::V7 => {
                        "substr(t,1,8)||'-'||substr(t,9,4)||'-7'||substr(h,14,3)||'-a'||substr(h,18,3)||'-'||substr(h,21,12)"
                    }
                };
                let sql = format!(
                    "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?), \
                     r(h, t) AS (SELECT lower(hex(randomblob(16))), printf('%012x', ? + i) FROM c) \
                     INSERT INTO rabbit_once_processed (consumer_group, message_id, processed_at) \
                     SELECT ?, {id}, ? FROM r ORDER BY 2"
                );
                rabbit_once::sqlx::query(&sql)
                    .bind(k as i64)
                    .bind(first)
                    .bind(group)
                    .bind(base / 1000)
                    .execute(s.pool())
                    .await?;
            }
            Db::Postgres(s) => {
                let id = match ids {
                    Ids::V4 => "gen_random_uuid()::text",
                    Ids::V7 => {
                        "(SELECT substr(t,1,8)||'-'||substr(t,9,4)||'-7'||substr(h,14,3)||'-a'||substr(h,18,3)||'-'||substr(h,21,12) \
                                FROM (SELECT lpad(to_hex($3::bigint + i), 12, '0') AS t, md5(random()::text) AS h) x)"
                    }
                };
                let sql = format!(
                    "INSERT INTO rabbit_once_processed (consumer_group, message_id, processed_at) \
                     SELECT $1, {id}, now() - interval '1 day' FROM generate_series(0, $2 - 1) i ORDER BY 2"
                );
                let mut q = rabbit_once::sqlx::query(&sql).bind(group).bind(k as i64);
                if ids == Ids::V7 {
                    q = q.bind(first);
                }
                q.execute(s.pool()).await?;
            }
        }
        done += k;
        if segment_rows > 0 && done <= n - unsealed {
            match db {
                Db::Sqlite(s) => s.seal_segment().await?,
                Db::Postgres(s) => s.seal_segment().await?,
            };
        }
    }
    // Let the database settle, so the run measures the grown table, not the fill.
    match db {
        Db::Sqlite(s) => {
            rabbit_once::sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(s.pool())
                .await?;
        }
        Db::Postgres(s) => {
            // The sealed segments too: a store that has run a while has had them visited by
            // autovacuum long ago, not during the timed run.
            let seqs: Vec<i64> = if segment_rows > 0 {
                rabbit_once::sqlx::query_scalar("SELECT seq FROM rabbit_once_segments")
                    .fetch_all(s.pool())
                    .await?
            } else {
                Vec::new()
            };
            let tables = std::iter::once("rabbit_once_processed".to_string())
                .chain(seqs.iter().map(|q| format!("rabbit_once_processed_{q}")));
            for t in tables {
                rabbit_once::sqlx::query(&format!("VACUUM ANALYZE {t}"))
                    .execute(s.pool())
                    .await?;
            }
            rabbit_once::sqlx::query("CHECKPOINT")
                .execute(s.pool())
                .await?;
        }
    }
    Ok(())
}

/// A SQLite database in a directory of its own for workload `w` (removed by the caller).
async fn sqlite_db(w: &str, segment_rows: u64) -> anyhow::Result<(std::path::PathBuf, Db)> {
    let dir = std::env::temp_dir().join(queue_name(w));
    std::fs::create_dir_all(&dir)?;
    let spec = format!("sqlite:{}", dir.join("bench.db").display());
    let db = Db::open_with(&spec, None, segment_rows).await?;
    Ok((dir, db))
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// This process's user+system CPU time so far.
pub(crate) fn cpu_time() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

pub(crate) fn report(
    workload: &str,
    count: usize,
    secs: f64,
    cpu: Duration,
    lat: Option<Vec<f64>>,
) {
    let mut line = format!(
        "{{\"client\":\"{CLIENT}\",\"workload\":\"{workload}\",\"messages\":{count},\"seconds\":{secs:.4},\"msgs_per_s\":{:.1},\"cpu_us_per_msg\":{:.2}",
        count as f64 / secs,
        cpu.as_secs_f64() * 1e6 / count.max(1) as f64
    );
    if let Some(mut l) = lat {
        l.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| l[((p / 100.0 * l.len() as f64).ceil() as usize).max(1) - 1];
        line += &format!(",\"p50_ms\":{:.3},\"p99_ms\":{:.3}", pct(50.0), pct(99.0));
    }
    println!("{line}}}");
}

/// Short like the Go peer's (`peers-go-…`): RabbitMQ 3.10 publishes persistent messages ~25%
/// slower when the routing key is longer than 64 bytes (see docs/benchmarks.md), and the
/// Rust peers' names (`peers-rust-amqprs-…`) are 71.
pub(crate) fn queue_name(workload: &str) -> String {
    format!("peers-ro-{}-{}-{workload}", std::process::id(), now_ns())
}

pub(crate) async fn connect(a: &Args, name: &str, topo: Topology) -> anyhow::Result<Connection> {
    Ok(Connection::connect(ConnectionConfig::new(&a.uri)?.name(name).topology(topo)).await?)
}

fn publisher(conn: &Connection, a: &Args) -> anyhow::Result<Publisher> {
    Ok(Publisher::new(
        conn,
        PublisherConfig::default()
            .window(a.window)
            .max_buffered((a.window * 2).max(10_000)),
    )?)
}

/// Publishes `n` messages and waits for every confirm; `rate` > 0 paces them and stamps the
/// send time into the first 8 bytes.
async fn publish_n(
    p: &Publisher,
    queue: &str,
    a: &Args,
    n: usize,
    transient: bool,
    rate: u64,
) -> anyhow::Result<()> {
    let body = bytes::Bytes::from(vec![0u8; a.size.max(8)]);
    let (tx, waiter) = await_confirmations(0usize, |failed, (), outcome| {
        if outcome.is_err() {
            *failed += 1;
        }
    });
    let start = Instant::now();
    for i in 0..n {
        let b = if let Some(step) = 1_000_000_000u64.checked_div(rate) {
            let due = start + Duration::from_nanos(i as u64 * step);
            // Only sleep when due is ahead: a timer registered for a past instant still
            // wakes the runtime's driver (an eventfd write and an extra epoll_wait).
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let mut v = body.to_vec();
            v[..8].copy_from_slice(&now_ns().to_be_bytes());
            bytes::Bytes::from(v)
        } else {
            body.clone()
        };
        let mut m = Message::to_queue(queue, b).with_mandatory(!a.no_mandatory);
        if transient {
            m = m.transient();
        }
        tx.send(((), p.publish(m).await.map_err(|e| e.error)?))?;
    }
    drop(tx);
    let failed = waiter.await?;
    anyhow::ensure!(failed == 0, "{failed} messages were not confirmed");
    Ok(())
}

async fn publish_workload(a: &Args, w: &str, durable: bool) -> anyhow::Result<()> {
    let q = queue_name(w);
    let mut queue = Queue::new(&q).durable(durable);
    if a.quorum {
        queue = queue.queue_type(rabbit_once::QueueType::Quorum);
    }
    if let Some(v) = a.queue_version {
        queue = queue.classic_version(v);
    }
    let conn = connect(a, "bench publish", Topology::new().queue(queue)).await?;
    let p = publisher(&conn, a)?;
    let (t0, c0) = (Instant::now(), cpu_time());
    publish_n(&p, &q, a, a.n, !durable, 0).await?;
    report(w, a.n, t0.elapsed().as_secs_f64(), cpu_time() - c0, None);
    p.close(Duration::from_secs(10)).await;
    conn.delete_queue(&q).await?;
    conn.close().await;
    Ok(())
}

/// Fills `q` with `n` transient messages through our publisher on a connection of its own.
async fn fill(a: &Args, q: &str, n: usize) -> anyhow::Result<()> {
    let conn = connect(a, "bench fill", Topology::new()).await?;
    let p = publisher(&conn, a)?;
    if a.ids == Ids::V4 {
        let body = bytes::Bytes::from(vec![0u8; a.size.max(8)]);
        let (tx, waiter) = await_confirmations(0usize, |failed, (), outcome| {
            if outcome.is_err() {
                *failed += 1;
            }
        });
        for _ in 0..n {
            let m = Message::to_queue(q, body.clone())
                .transient()
                .with_message_id(uuid_v4());
            tx.send(((), p.publish(m).await.map_err(|e| e.error)?))?;
        }
        drop(tx);
        let failed = waiter.await?;
        anyhow::ensure!(failed == 0, "{failed} messages were not confirmed");
    } else {
        publish_n(&p, q, a, n, true, 0).await?;
    }
    p.close(Duration::from_secs(10)).await;
    conn.close().await;
    Ok(())
}

/// Takes all `n` messages of `q` without acking them and closes: the broker requeues them, and
/// every one is delivered again with `redelivered` set.
async fn requeue_all(conn: &Connection, q: &str, n: usize) -> anyhow::Result<()> {
    let prefetch = u16::try_from(n)
        .map_err(|_| anyhow::anyhow!("--redelivered takes at most 65,535 messages"))?;
    let mut sub = Subscription::start(conn, SubscriptionConfig::new(q).prefetch(prefetch))?;
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        held.push(
            sub.recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("subscription ended"))?,
        );
    }
    // Closing the channel with all of them unacked requeues them all at once.
    sub.close(Duration::ZERO).await;
    drop(held);
    Ok(())
}

async fn consume_workload(a: &Args, w: &str) -> anyhow::Result<()> {
    let q = queue_name(w);
    let conn = connect(
        a,
        "bench consume",
        Topology::new().queue(Queue::new(&q).durable(false)),
    )
    .await?;
    fill(a, &q, a.n).await?;
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&q).prefetch(a.prefetch))?;
    let mut first = None;
    let c0 = cpu_time();
    for _ in 0..a.n {
        let d = sub
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        first.get_or_insert_with(Instant::now);
        d.ack();
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    report(w, a.n, secs, cpu_time() - c0, None);
    sub.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await?;
    conn.close().await;
    Ok(())
}

async fn latency_workload(a: &Args, w: &str) -> anyhow::Result<()> {
    let q = queue_name(w);
    let conn = connect(
        a,
        "bench latency consumer",
        Topology::new().queue(Queue::new(&q).durable(false)),
    )
    .await?;
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&q).prefetch(a.prefetch))?;
    let n = a.lat_n;
    let consumer = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        let mut first = None;
        for _ in 0..n {
            let Some(d) = sub.recv().await else { break };
            first.get_or_insert_with(Instant::now);
            let sent = u64::from_be_bytes(d.body()[..8].try_into().expect("8 bytes"));
            lat.push((now_ns() as i64 - sent as i64) as f64 / 1e6);
            d.ack();
        }
        sub.close(Duration::from_secs(5)).await;
        (first.map_or(0.0, |t| t.elapsed().as_secs_f64()), lat)
    });
    let pconn = connect(a, "bench latency publisher", Topology::new()).await?;
    let p = publisher(&pconn, a)?;
    let c0 = cpu_time();
    publish_n(&p, &q, a, n, true, a.rate).await?;
    let (secs, lat) = consumer.await?;
    report(w, lat.len(), secs, cpu_time() - c0, Some(lat));
    p.close(Duration::from_secs(5)).await;
    pconn.close().await;
    conn.delete_queue(&q).await?;
    conn.close().await;
    Ok(())
}

async fn idempotent_workload(a: &Args, w: &str, db: Db) -> anyhow::Result<()> {
    db.prepare().await?;
    let q = queue_name(w);
    prefill(&db, &q, a.prefill, a.ids, a.segment_rows).await?;
    // A consumer that has been running has its store warm (SQLite: the segment filters loaded
    // and covered); the first claim of a freshly opened store pays that once, untimed here.
    {
        use rabbit_once::Store;
        let t = Instant::now();
        match &db {
            Db::Sqlite(s) => {
                let mut tx = s.begin().await?;
                s.claim(&mut tx, &q, &["warm-up"]).await?;
                tx.rollback().await?;
            }
            Db::Postgres(s) => {
                let mut tx = s.begin().await?;
                s.claim(&mut tx, &q, &["warm-up"]).await?;
                tx.rollback().await?;
            }
        }
        eprintln!(
            "first claim (store opened cold): {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    let conn = connect(
        a,
        "bench idempotent",
        Topology::new().queue(Queue::new(&q).durable(false)),
    )
    .await?;
    fill(a, &q, a.n).await?;
    if a.redelivered {
        requeue_all(&conn, &q, a.n).await?;
    }
    let config = ConsumerConfig::new(&q)
        .prefetch(a.prefetch.max(a.batch as u16))
        .group_commit(a.batch, Duration::from_millis(1));
    let c0 = cpu_time();
    let t0 = Instant::now();
    let consumer = match &db {
        Db::Sqlite(s) => Consumer::start(&conn, s.clone(), Applied::new(), config).await?,
        Db::Postgres(s) => Consumer::start(&conn, s.clone(), Applied::new(), config).await?,
    };
    // Timed from the first delivery to the last commit.
    let mut first = None;
    loop {
        let s = consumer.stats();
        if s.delivered > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if s.applied + s.duplicates >= a.n as u64 {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "idempotent consume did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let cpu = cpu_time() - c0;
    let stats = consumer.close(Duration::from_secs(10)).await;
    anyhow::ensure!(
        stats.applied == a.n as u64,
        "applied {} of {}",
        stats.applied,
        a.n
    );
    report(w, a.n, secs, cpu, None);
    for q in ConsumerConfig::new(&q).queues() {
        let _ = conn.delete_queue(&q).await;
    }
    conn.close().await;
    Ok(())
}

/// Runs the chosen workloads in turn, printing a JSON line for each.
pub async fn run(mut a: Args) -> anyhow::Result<std::process::ExitCode> {
    // Kept until the end of the run: dropping it stops and removes the nodes.
    let _cluster = match a.cluster {
        Some(n) => {
            eprintln!("starting a private {n}-node RabbitMQ cluster…");
            let c = rabbit_once_testkit::Cluster::start(usize::from(n.max(1))).await?;
            a.uri = c.uri(0);
            Some(c)
        }
        None => None,
    };
    for w in a
        .workloads
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match w {
            "publish_confirm_persistent" => publish_workload(&a, w, true).await?,
            "publish_confirm_transient" => publish_workload(&a, w, false).await?,
            "consume_ack" => consume_workload(&a, w).await?,
            "roundtrip_latency" => latency_workload(&a, w).await?,
            "idempotent_consume_sqlite" => {
                let (dir, db) = sqlite_db(w, a.segment_rows).await?;
                let r = idempotent_workload(&a, w, db).await;
                let _ = std::fs::remove_dir_all(&dir);
                r?;
            }
            "idempotent_consume_postgres" => {
                let schema = queue_name("bench").replace('-', "_");
                let db = Db::open_with(&a.pg, Some(schema.clone()), a.segment_rows).await?;
                let r = idempotent_workload(&a, w, db.clone()).await;
                if let Db::Postgres(s) = &db {
                    let _ = rabbit_once::sqlx::query(&format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .execute(s.pool())
                    .await;
                }
                r?;
            }
            "outbox_sqlite" | "outbox_latency_sqlite" => {
                let (dir, db) = sqlite_db(w, 0).await?;
                let r = crate::bench_outbox::run(&a, w, db, w.contains("latency")).await;
                let _ = std::fs::remove_dir_all(&dir);
                r?;
            }
            "outbox_postgres" | "outbox_latency_postgres" => {
                let schema = queue_name("bench").replace('-', "_");
                let db = Db::open(&a.pg, Some(schema.clone())).await?;
                let r = crate::bench_outbox::run(&a, w, db.clone(), w.contains("latency")).await;
                if let Db::Postgres(s) = &db {
                    let _ = rabbit_once::sqlx::query(&format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .execute(s.pool())
                    .await;
                }
                r?;
            }
            other => anyhow::bail!("unknown workload {other:?} (known: {ALL})"),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
