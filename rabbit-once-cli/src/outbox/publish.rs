//! `rabbit-once publish --outbox`: each message is committed through the outbox together with a
//! row `(seq, message_id)` in a business table `sent` — the stand-in for the caller's own write —
//! and a relay in the same process publishes the committed rows. Killed at any moment and run
//! again with `--resume`, it goes on after the highest committed `seq`: every seq ends up
//! published, each under the one `message_id` its row was given.

use super::{OutboxArgs, OutboxDb};
use crate::common::bar;
use crate::publish::{Args, message};
use rabbit_once::{Connection, PublisherConfig, RelayConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What `publish --outbox` did, printed at the end.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    /// The first seq this run committed (after `--resume`, one past the last committed before).
    first_seq: u64,
    /// Messages this run committed (each with its `sent` row).
    committed: u64,
    /// Rows the relay saw confirmed and deleted in this run (rows committed by an earlier run
    /// included).
    relayed: u64,
    /// Failed publishes the relay recorded on rows (a row can fail more than once).
    failed_publishes: u64,
    /// Rows still in the outbox at the end (0: every committed message is confirmed).
    pending: u64,
    /// Of those, rows the broker refused.
    failed_rows: u64,
    /// Rows parked after too many refusals (not published; see `outbox status`).
    parked_rows: u64,
    /// Seconds from the start to the end.
    seconds: f64,
}

/// Commits the messages through the outbox, relays them, and exits once every committed row is
/// confirmed (or the close timeout passed: exit 1, rows left for the next run).
pub async fn run(a: &Args, spec: OutboxArgs) -> anyhow::Result<ExitCode> {
    let db = OutboxDb::open(&spec).await?;
    db.create_sent().await?;
    let end = a.start + a.count;
    let first = match (db.last_sent(a.start, end).await?, a.resume) {
        (Some(last), true) => last + 1,
        (Some(last), false) => anyhow::bail!(
            "seq {last} is already committed in this outbox's `sent` table: give --resume to go \
             on after it"
        ),
        _ => a.start,
    };
    let conn = Connection::start(
        a.conn
            .config(&format!(
                "rabbit-once publish --outbox {}",
                std::process::id()
            ))?
            .topology(a.topology()),
    )?;
    let relay = if a.no_relay {
        None
    } else {
        let publisher = PublisherConfig::default()
            .window(a.window)
            .max_buffered(a.window.max(10_000));
        Some(db.relay(&conn, RelayConfig::default().publisher(publisher))?)
    };
    let started = Instant::now();
    let pb = bar(end.saturating_sub(first), "committed");
    let per_tx = a.tx_size.max(1);
    let mut seq = first;
    while seq < end {
        if let Some(rate) = a.rate.filter(|r| *r > 0) {
            let due = started + Duration::from_nanos((seq - first) * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let seqs: Vec<u64> = (seq..end.min(seq + per_tx)).collect();
        let messages = seqs.iter().map(|s| message(a, *s)).collect();
        db.commit(&seqs, messages).await?;
        seq += seqs.len() as u64;
        pb.inc(seqs.len() as u64);
    }
    pb.finish_and_clear();
    let mut s = Summary {
        first_seq: first,
        committed: end.saturating_sub(first),
        ..Summary::default()
    };
    if let Some(relay) = relay {
        // Every committed row confirmed and deleted (by this relay or another one).
        let deadline = Instant::now() + Duration::from_secs(a.close_timeout);
        while db.status().await?.pending > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = relay.close(Duration::from_secs(5)).await;
        s.relayed = stats.relayed;
        s.failed_publishes = stats.failed;
    }
    let status = db.status().await?;
    s.pending = status.pending;
    s.failed_rows = status.failed;
    s.parked_rows = status.parked;
    s.seconds = started.elapsed().as_secs_f64();
    conn.close().await;
    db.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "committed {} (seq {}..{})  relayed {}  failed publishes {}  still pending {} ({} refused)  in {:.2}s",
            s.committed,
            first,
            end,
            s.relayed,
            s.failed_publishes,
            s.pending,
            s.failed_rows,
            s.seconds
        );
    }
    super::report_refused(&status);
    Ok(if a.no_relay || (s.pending == 0 && s.parked_rows == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
