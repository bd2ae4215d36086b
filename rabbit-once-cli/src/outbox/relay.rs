//! `rabbit-once relay`: a relay process. It publishes an outbox's committed rows until Ctrl-C /
//! SIGTERM, or with `--until-empty` until nothing is left to publish. On PostgreSQL any number
//! may run: one publishes, the others stand by and take over when its session ends.

use super::{OutboxArgs, OutboxDb};
use crate::common::{Conn, stop_signal};
use rabbit_once::{PublisherConfig, Queue, RelayConfig, RelayStats, Topology};
use std::process::ExitCode;
use std::time::Duration;

/// The flags of `rabbit-once relay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// The outbox to relay.
    #[command(flatten)]
    pub outbox: OutboxArgs,
    /// Declare this queue (durable) on every session before publishing, as `publish --queue`
    /// does, so the rows for it are not refused as unroutable when the relay comes before the
    /// queue's consumers; repeat for several. The relay publishes every row all the same.
    #[arg(long = "declare", value_name = "QUEUE", value_delimiter = ',')]
    pub declare: Vec<String>,
    /// With --declare: the queues are quorum queues, declared exactly as `consume --quorum
    /// --max-attempts N` declares them (with their retry and dead-letter queues; a queue
    /// declared with other arguments is refused by the broker), as `publish --quorum` does.
    #[arg(long, requires = "declare")]
    pub quorum: bool,
    /// With --quorum: the consumers' `--max-attempts` (it sets the queues' delivery limit).
    #[arg(long, default_value_t = crate::consume::MAX_ATTEMPTS, requires = "quorum")]
    pub max_attempts: u32,
    /// The Prometheus endpoint.
    #[command(flatten)]
    pub metrics: crate::common::Metrics,
    /// Exit once no row is left to publish: 0 when the outbox is empty, 1 when only rows the
    /// broker refused (and rows of their keys behind them) remain, or rows are parked (listed).
    #[arg(long)]
    pub until_empty: bool,
    /// Rows in hand at a time (read and not yet confirmed); twice the publisher's window keeps
    /// the wire full while the next read runs.
    #[arg(long, default_value_t = 2000)]
    pub batch: u32,
    /// How often to look for rows when nothing wakes the relay, in milliseconds (rows written
    /// by other processes to a SQLite outbox are found this way).
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Seconds a row the broker refused waits before it is tried again.
    #[arg(long, default_value_t = 5)]
    pub retry_after: u64,
    /// Refusals after which a row is parked (out of the outbox, its key freed, kept for
    /// `outbox requeue` or `outbox discard`); 0: never park.
    #[arg(long, default_value_t = 20)]
    pub park_after: u32,
    /// Print the final counters as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the relay until told to stop (or, with `--until-empty`, until nothing is left); with
/// `--metrics-addr`, serves the metrics meanwhile (and `--metrics-linger` seconds after).
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let metrics = a.metrics.clone();
    metrics.start()?;
    let result = relay(a).await;
    metrics.linger().await;
    result
}

async fn relay(a: Args) -> anyhow::Result<ExitCode> {
    let db = OutboxDb::open(&a.outbox).await?;
    let config = a.conn.config("rabbit-once relay")?.topology(declared(&a));
    let conn = crate::common::connect(&a.conn, config).await?;
    let config = RelayConfig::default()
        .batch(a.batch)
        .poll(Duration::from_millis(a.poll_ms.max(1)))
        .retry_after(Duration::from_secs(a.retry_after))
        .park_after(a.park_after)
        .publisher(PublisherConfig::default().window((a.batch as usize / 2).max(1)));
    let relay = db.relay(&conn, config)?;
    let mut refused_only = false;
    // Whether the wait ended on a signal: if not (--until-empty), the first one during the
    // close only says what it waits for.
    let mut signalled = true;
    // The connection gave up for good (a queue it declares refused on a reconnect, credentials
    // revoked): the relay exits rather than hold the outbox with nothing it can publish.
    let mut failed = None;
    if a.until_empty {
        tokio::select! {
            r = async {
                loop {
                    let s = db.status().await?;
                    // Empty (whichever relay published the rows), or nothing but refused rows
                    // once this relay publishes (they would wait for ever).
                    if s.pending == 0 {
                        return anyhow::Ok(false);
                    }
                    // Nothing publishable: every row left is refused (and not due again yet:
                    // a due one may be in flight right now) or waits behind one of its key.
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let waiting = s.next_retry_unix_ms.is_some_and(|t| t > now);
                    if s.pending == s.failed + s.held_back && waiting {
                        return anyhow::Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => {
                refused_only = r?;
                signalled = false;
            }
            _ = stop_signal() => {}
            e = gave_up(&conn) => {
                failed = Some(e);
                signalled = false;
            }
        }
    } else {
        tokio::select! {
            _ = stop_signal() => {}
            e = gave_up(&conn) => {
                failed = Some(e);
                signalled = false;
            }
        }
    }
    // The rows in hand are settled and the confirmed ones deleted; a second Ctrl-C / SIGTERM
    // stops the wait at once (exit 1).
    let Some(stats) = crate::common::close_or_stop(
        relay.close(Duration::from_secs(5)),
        signalled,
        "the rows in hand",
    )
    .await
    else {
        return Err(anyhow::anyhow!(
            "stopped again before the rows in hand were settled: rows the broker confirmed \
             and not yet deleted are published again by the next relay (same message_id)"
        ));
    };
    let status = db.status().await?;
    conn.close().await;
    db.close().await;
    print(&stats, status.pending, status.parked, a.json)?;
    super::report_refused(&status);
    if let Some(e) = failed {
        // Its kind decides the exit status (as for `publish`).
        return Err(anyhow::Error::from(e).context("the connection gave up"));
    }
    Ok(if refused_only || (a.until_empty && status.parked > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Resolves with the error once the connection has given up for good; never if it closes.
async fn gave_up(conn: &rabbit_once::Connection) -> rabbit_once::Error {
    let mut state = conn.watch_state();
    loop {
        if let rabbit_once::ConnectionState::Failed(e) = &*state.borrow_and_update() {
            return e.clone();
        }
        if state.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// What the relay declares on every session: the `--declare` queues, durable, or with
/// `--quorum` each as `consume --quorum` declares it (what `publish --quorum` declares too).
fn declared(a: &Args) -> Topology {
    a.declare.iter().fold(Topology::new(), |t, q| {
        if a.quorum {
            t.merge(&crate::consume::consumer_config(q, a.max_attempts, true).topology())
        } else {
            t.queue(Queue::new(q))
        }
    })
}

fn print(stats: &RelayStats, pending: u64, parked: u64, json: bool) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({
            "relayed": stats.relayed,
            "failed_publishes": stats.failed,
            "reads": stats.reads,
            "pending": pending,
            "parked": parked,
        });
        println!("{v}");
    } else {
        println!(
            "relayed {}  failed publishes {}  reads {}  still pending {}  parked {}",
            stats.relayed, stats.failed, stats.reads, pending, parked
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        relay: Args,
    }

    #[test]
    fn a_relay_declares_its_queues_as_their_consumers_do() {
        let args = |extra: &[&str]| {
            let base = ["relay", "--outbox", "sqlite::memory:"];
            Cli::parse_from(base.iter().chain(extra)).relay
        };
        assert_eq!(declared(&args(&[])), Topology::new());
        assert_eq!(
            declared(&args(&["--declare", "a", "--declare", "b"])),
            Topology::new()
                .queue(Queue::new("a"))
                .queue(Queue::new("b"))
        );
        // As `consume --quorum` declares each (or the broker refuses one of the two: 406).
        let quorum = |q: &str| {
            crate::consume::consumer_config(q, crate::consume::MAX_ATTEMPTS, true).topology()
        };
        assert_eq!(
            declared(&args(&["--declare", "a", "--declare", "b", "--quorum"])),
            quorum("a").merge(&quorum("b"))
        );
        assert!(Cli::try_parse_from(["relay", "--outbox", "x", "--quorum"]).is_err());
    }
}
