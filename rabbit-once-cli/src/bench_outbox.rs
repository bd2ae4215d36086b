//! `rabbit-once bench` workloads of the transactional outbox: messages committed through the
//! outbox (SQLite or PostgreSQL) and published by a relay in the same process, every guarantee
//! on. `outbox_*`: throughput, `--outbox-tx` messages per transaction, from the first commit to
//! the last row confirmed and deleted. `outbox_latency_*`: one message per transaction at
//! `--rate`, commit → delivery to a consumer (an upper bound of commit → confirm).

use crate::applied::Db;
use crate::bench::{Args, connect, cpu_time, now_ns, queue_name, report};
use rabbit_once::{
    Message, PostgresOutbox, Queue, Relay, RelayConfig, SqliteOutbox, Store, Subscription,
    SubscriptionConfig, Topology,
};
use std::time::{Duration, Instant};

/// The outbox under test, on the store `db` opened, migrated.
enum Target {
    Sqlite(rabbit_once::SqliteStore, SqliteOutbox),
    Postgres(rabbit_once::PostgresStore, PostgresOutbox),
}

impl Target {
    async fn new(db: &Db) -> anyhow::Result<Self> {
        Ok(match db {
            Db::Sqlite(s) => {
                let o = SqliteOutbox::new(s.pool().clone());
                o.migrate().await?;
                Target::Sqlite(s.clone(), o)
            }
            Db::Postgres(s) => {
                s.migrate().await?; // creates the schema the pool's search_path names
                let o = PostgresOutbox::new(s.pool().clone());
                o.migrate().await?;
                Target::Postgres(s.clone(), o)
            }
        })
    }

    fn relay(&self, conn: &rabbit_once::Connection, a: &Args) -> anyhow::Result<Relay> {
        let config = RelayConfig::default()
            .strict_key_order(a.strict_key_order)
            .publisher(
                rabbit_once::PublisherConfig::default()
                    .window(a.window)
                    .max_buffered((a.window * 2).max(10_000)),
            );
        Ok(match self {
            Target::Sqlite(_, o) => Relay::start(conn, o.clone(), config)?,
            Target::Postgres(_, o) => Relay::start(conn, o.clone(), config)?,
        })
    }

    /// Commits `messages` in one transaction through the outbox; with `keys`, message `i` of
    /// the run under the ordering key `i % keys` (`first`: the run's index of the first one).
    async fn commit(
        &self,
        messages: Vec<Message>,
        first: usize,
        keys: usize,
    ) -> anyhow::Result<()> {
        macro_rules! commit {
            ($s:expr, $o:expr) => {{
                let mut tx = $s.begin().await?;
                if keys == 0 {
                    $o.enqueue_all(&mut tx, messages).await?;
                } else {
                    for (i, m) in messages.into_iter().enumerate() {
                        $o.enqueue_keyed(&mut tx, m, &format!("key-{}", (first + i) % keys))
                            .await?;
                    }
                }
                tx.commit().await?;
            }};
        }
        match self {
            Target::Sqlite(s, o) => commit!(s, o),
            Target::Postgres(s, o) => commit!(s, o),
        }
        Ok(())
    }
}

/// Runs one outbox workload against `db`.
pub async fn run(a: &Args, w: &str, db: Db, latency: bool) -> anyhow::Result<()> {
    let outbox = Target::new(&db).await?;
    let q = queue_name(w);
    let conn = connect(a, "bench outbox", Topology::new().queue(Queue::new(&q))).await?;
    let relay = outbox.relay(&conn, a)?;
    let body = vec![b' '; a.size.max(8)];
    if latency {
        let n = a.lat_n;
        let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&q).prefetch(a.prefetch))?;
        let reader = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let Some(d) = sub.recv().await else { break };
                let sent = u64::from_be_bytes(d.body()[..8].try_into().expect("8 bytes"));
                lat.push((now_ns() as i64 - sent as i64) as f64 / 1e6);
                d.ack();
            }
            sub.close(Duration::from_secs(5)).await;
            lat
        });
        let c0 = cpu_time();
        let t0 = Instant::now();
        let every = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
        for i in 0..n {
            tokio::time::sleep_until((t0 + every * i as u32).into()).await;
            let mut b = body.clone();
            b[..8].copy_from_slice(&now_ns().to_be_bytes());
            outbox.commit(vec![Message::to_queue(&q, b)], i, 0).await?;
        }
        let lat = tokio::time::timeout(Duration::from_secs(120), reader).await??;
        report(
            w,
            lat.len(),
            t0.elapsed().as_secs_f64(),
            cpu_time() - c0,
            Some(lat),
        );
    } else {
        let per_tx = a.outbox_tx.max(1);
        let c0 = cpu_time();
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < a.n {
            let k = per_tx.min(a.n - sent);
            outbox
                .commit(
                    (0..k)
                        .map(|_| Message::to_queue(&q, body.clone()))
                        .collect(),
                    sent,
                    a.outbox_keys,
                )
                .await?;
            sent += k;
        }
        while relay.stats().relayed < a.n as u64 {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(600),
                "the relay did not finish: {:?}",
                relay.stats()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        report(w, a.n, t0.elapsed().as_secs_f64(), cpu_time() - c0, None);
    }
    relay.close(Duration::from_secs(10)).await;
    conn.delete_queue(&q).await?;
    conn.close().await;
    Ok(())
}
