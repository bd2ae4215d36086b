//! `rabbit-once outbox status`: how many rows wait, how old the oldest is, and the rows the
//! broker refused with their reasons.

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

/// The `outbox` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Pending rows, the oldest one's age, and the rows the broker refused (reason, attempts).
    Status(Args),
}

/// Prints the status; exit 0 (an outbox with refused rows is still a readable outbox).
pub async fn run(c: Command) -> anyhow::Result<ExitCode> {
    let Command::Status(a) = c;
    let db = OutboxDb::open_existing(&a.outbox).await?;
    let s = db.status().await?;
    db.close().await;
    if a.json {
        let failed: Vec<_> = s
            .failed_rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "message_id": r.message_id,
                    "ordering_key": r.ordering_key,
                    "exchange": r.exchange,
                    "routing_key": r.routing_key,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "retry_at_unix_ms": r.retry_at_unix_ms,
                })
            })
            .collect();
        let v = serde_json::json!({
            "pending": s.pending,
            "oldest_pending_age_seconds": s.oldest_pending_age.map(|d| d.as_secs()),
            "failed": s.failed,
            "failed_rows": failed,
        });
        println!("{v}");
    } else {
        let age = s
            .oldest_pending_age
            .map_or("-".to_string(), |d| format!("{}s", d.as_secs()));
        println!(
            "pending {}  oldest {}  refused by the broker {}",
            s.pending, age, s.failed
        );
        for r in &s.failed_rows {
            let key = r.ordering_key.as_deref().unwrap_or("-");
            println!(
                "  {}  key {}  to {:?}/{:?}  attempts {}  {}",
                r.message_id,
                key,
                r.exchange,
                r.routing_key,
                r.attempts,
                r.last_error.as_deref().unwrap_or("")
            );
        }
        if s.failed > s.failed_rows.len() as u64 {
            println!("  … and {} more", s.failed - s.failed_rows.len() as u64);
        }
    }
    Ok(ExitCode::SUCCESS)
}
