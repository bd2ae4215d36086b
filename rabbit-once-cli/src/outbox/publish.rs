//! `rabbit-once publish --outbox`: each message is committed through the outbox together with a
//! row `(seq, message_id)` in a business table `sent` — the stand-in for the caller's own write —
//! and a relay in the same process publishes the committed rows. Killed at any moment and run
//! again with `--resume`, it goes on after the highest committed `seq`: every seq ends up
//! published, each under the one `message_id` its row was given.
//!
//! Ctrl-C or SIGTERM stops committing (after the transaction in hand), lets the relay publish
//! what is committed for up to `--close-timeout` (a second one stops that wait at once), and
//! prints what was committed, what was confirmed and what is left in the outbox.

use super::{OutboxArgs, OutboxDb};
use crate::common::{bar, stop_signal};
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
    /// Stopped early by Ctrl-C or SIGTERM.
    interrupted: bool,
    /// Messages of the range never committed (after an interruption).
    not_committed: u64,
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
            .config("rabbit-once publish --outbox")?
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
    let mut signal = std::pin::pin!(stop_signal());
    let mut interrupted = false;
    while seq < end {
        let due = a
            .rate
            .filter(|r| *r > 0)
            .map(|rate| started + Duration::from_nanos((seq - first) * 1_000_000_000 / rate));
        // Never in the middle of a commit: a transaction either counts or was not begun.
        tokio::select! {
            biased;
            _ = &mut signal => {
                interrupted = true;
                break;
            }
            _ = async {
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
            } => {}
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
        committed: seq - first,
        interrupted,
        not_committed: end - seq,
        ..Summary::default()
    };
    if let Some(relay) = relay {
        // Every committed row confirmed and deleted (by this relay or another one).
        if interrupted {
            eprintln!(
                "interrupted: committing stopped; the relay publishes what is committed for up \
                 to {}s (Ctrl-C again to stop at once)",
                a.close_timeout
            );
        }
        let deadline = Instant::now() + Duration::from_secs(a.close_timeout);
        let drained = async {
            while db.status().await?.pending > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = drained => r?,
            // The first stop signal during this wait is heeded like one while committing; the
            // one after it ends the wait.
            _ = async {
                if !interrupted {
                    (&mut signal).await;
                    eprintln!("interrupted: waiting for the relay (Ctrl-C again to stop at once)");
                }
                stop_signal().await;
            } => {}
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
            seq,
            s.relayed,
            s.failed_publishes,
            s.pending,
            s.failed_rows,
            s.seconds
        );
    }
    if s.interrupted {
        println!(
            "interrupted: {} not committed (seq {seq}..{end}); {} rows left in the outbox",
            s.not_committed, s.pending
        );
    }
    super::report_refused(&status);
    Ok(if a.no_relay || (s.pending == 0 && s.parked_rows == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
