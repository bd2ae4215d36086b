//! `rabbit-once outbox status | requeue | discard`: how many rows wait, how old the oldest is,
//! the rows the broker refused and the rows parked after too many refusals, with their reasons;
//! and the operator's two repairs.

use super::{OutboxArgs, OutboxDb};
use std::process::ExitCode;

/// The flags of `rabbit-once outbox status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The outbox to look at.
    #[command(flatten)]
    pub outbox: OutboxArgs,
    /// Print it as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `rabbit-once outbox requeue` and `discard`.
#[derive(clap::Args, Debug)]
pub struct Ids {
    /// The outbox.
    #[command(flatten)]
    pub outbox: OutboxArgs,
    /// The message ids (repeat the flag for several).
    #[arg(long = "id", required = true)]
    pub ids: Vec<String>,
}

/// The `outbox` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Pending rows, the oldest one's age, the rows the broker refused and the parked rows
    /// (reason, attempts).
    Status(Args),
    /// Move parked rows back into the outbox (once the cause of the refusals is fixed): they are
    /// published again under the same message ids. Exit 1 if an id had no parked row.
    Requeue(Ids),
    /// Delete rows (pending, held or parked) without publishing them — gone for good. Exit 1 if
    /// an id had no row.
    Discard(Ids),
}

/// Runs an `outbox` subcommand.
pub async fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Status(a) => status(a).await,
        Command::Requeue(a) => each(a, "requeued", |db, id| Box::pin(db.requeue(id))).await,
        Command::Discard(a) => each(a, "discarded", |db, id| Box::pin(db.discard(id))).await,
    }
}

type Fut<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>> + 'a>>;

/// Applies `op` to every id, saying what it did; exit 1 if some id matched no row.
async fn each(
    a: Ids,
    done: &str,
    op: impl for<'a> Fn(&'a OutboxDb, &'a str) -> Fut<'a>,
) -> anyhow::Result<ExitCode> {
    let db = OutboxDb::open_existing(&a.outbox).await?;
    let mut missing = 0;
    for id in &a.ids {
        match op(&db, id).await? {
            0 => {
                eprintln!("{id}: no such row");
                missing += 1;
            }
            n => println!("{id}: {done} ({n} row{})", if n == 1 { "" } else { "s" }),
        }
    }
    db.close().await;
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the status; exit 0 (an outbox with refused rows is still a readable outbox).
async fn status(a: Args) -> anyhow::Result<ExitCode> {
    let db = OutboxDb::open_existing(&a.outbox).await?;
    let s = db.status().await?;
    db.close().await;
    if a.json {
        println!("{}", status_json(&s));
    } else {
        print_status(&s);
    }
    Ok(ExitCode::SUCCESS)
}

/// The status as `outbox status --json` prints it (also a part of `rabbit-once status`).
pub fn status_json(s: &rabbit_once::OutboxStatus) -> serde_json::Value {
    serde_json::json!({
        "pending": s.pending,
        "oldest_pending_age_seconds": s.oldest_pending_age.map(|d| d.as_secs()),
        "failed": s.failed,
        "failed_rows": s.failed_rows.iter().map(row_json).collect::<Vec<_>>(),
        "parked": s.parked,
        "parked_rows": s.parked_rows.iter().map(row_json).collect::<Vec<_>>(),
    })
}

/// The status as `outbox status` prints it for people (also a part of `rabbit-once status`).
pub fn print_status(s: &rabbit_once::OutboxStatus) {
    let age = s
        .oldest_pending_age
        .map_or("-".to_string(), |d| format!("{}s", d.as_secs()));
    println!(
        "pending {}  oldest {}  refused by the broker {}  parked {}",
        s.pending, age, s.failed, s.parked
    );
    print_rows("refused, retried", &s.failed_rows, s.failed);
    print_rows("parked (requeue or discard)", &s.parked_rows, s.parked);
}

fn row_json(r: &rabbit_once::FailedRow) -> serde_json::Value {
    serde_json::json!({
        "message_id": r.message_id,
        "ordering_key": r.ordering_key,
        "exchange": r.exchange,
        "routing_key": r.routing_key,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "retry_at_unix_ms": r.retry_at_unix_ms,
    })
}

/// One line per row under `title`, then how many more there are.
fn print_rows(title: &str, rows: &[rabbit_once::FailedRow], all: u64) {
    if rows.is_empty() {
        return;
    }
    println!("{title}:");
    for r in rows {
        println!(
            "  {}  key {}  to {:?}/{:?}  attempts {}  {}",
            r.message_id,
            r.ordering_key.as_deref().unwrap_or("-"),
            r.exchange,
            r.routing_key,
            r.attempts,
            r.last_error.as_deref().unwrap_or("")
        );
    }
    if all > rows.len() as u64 {
        println!("  … and {} more", all - rows.len() as u64);
    }
}
