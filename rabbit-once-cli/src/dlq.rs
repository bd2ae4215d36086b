//! `rabbit-once dlq list|replay|purge`: a consumer's dead-letter queue, looked at and acted on
//! through the library's [`DeadLetters`].

use crate::common::{Conn, connect};
use crate::exit::{self, Status};
use rabbit_once::{DeadLetterInfo, DeadLetterSelection, DeadLetters};
use serde_json::json;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `dlq` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the dead-letter queue (message id, reason, attempts, failure times, original
    /// exchange and routing key) without consuming it: every message stays where it was.
    List(ListArgs),
    /// Move messages back to their work queue with the same message id (the consumer skips one
    /// it had in fact applied). Each is removed from the dead-letter queue only once its copy
    /// is confirmed; exit 1 if any was not replayed (id not found, copy refused, cut off).
    Replay(ReplayArgs),
    /// Remove messages from the dead-letter queue for good (needs --yes).
    Purge(PurgeArgs),
}

/// Which dead-letter queue.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// The consumer's work queue: replays go there, and its dead-letter queue is
    /// `<QUEUE>.dead` (the consumer's default) unless --dead-queue says otherwise.
    #[arg(long)]
    pub queue: String,
    /// The dead-letter queue, if not the consumer's default.
    #[arg(long, value_name = "QUEUE")]
    pub dead_queue: Option<String>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which messages: by id, or all.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Pick {
    /// A message id (repeat, or separate with commas, for several).
    #[arg(long = "id", value_name = "ID", value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Every message the dead-letter queue holds when the command starts.
    #[arg(long)]
    pub all: bool,
}

impl Pick {
    fn selection(&self) -> DeadLetterSelection {
        if self.all {
            DeadLetterSelection::All
        } else {
            DeadLetterSelection::ids(self.ids.iter().cloned())
        }
    }
}

/// `dlq list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    target: Target,
}

/// `dlq replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    pick: Pick,
    /// Only show what would move; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `dlq purge`.
#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    pick: Pick,
    /// Confirms the removal: without it nothing is removed (exit 2).
    #[arg(long)]
    yes: bool,
}

/// Runs a `dlq` subcommand.
pub async fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::List(a) => list(a).await,
        Command::Replay(a) => replay(a).await,
        Command::Purge(a) => purge(a).await,
    }
}

async fn open(t: &Target) -> anyhow::Result<(rabbit_once::Connection, DeadLetters)> {
    let conn = connect(&t.conn, t.conn.config("rabbit-once-dlq")?).await?;
    let mut dead = DeadLetters::new(&conn, &t.queue);
    if let Some(q) = &t.dead_queue {
        dead = dead.dead_queue(q);
    }
    Ok((conn, dead))
}

async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (conn, dead) = open(&a.target).await?;
    let list = dead.list().await;
    conn.close().await;
    let list = list?;
    if a.target.json {
        println!(
            "{}",
            json!({
                "queue": dead.work_queue(),
                "dead_queue": dead.dead_queue_name(),
                "count": list.len(),
                "messages": list.iter().map(info_json).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "{} dead letter(s) in {} (work queue {})",
            list.len(),
            dead.dead_queue_name(),
            dead.work_queue()
        );
        for d in &list {
            println!("{}", info_line(d));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let selection = a.pick.selection();
    let (conn, dead) = open(&a.target).await?;
    if a.dry_run {
        let preview = dead.preview(&selection).await;
        conn.close().await;
        let p = preview?;
        if a.target.json {
            println!(
                "{}",
                json!({
                    "dry_run": true,
                    "queue": dead.work_queue(),
                    "dead_queue": dead.dead_queue_name(),
                    "would_replay": p.selected.iter().map(info_json).collect::<Vec<_>>(),
                    "not_found": p.not_found,
                })
            );
        } else {
            println!(
                "dry run: {} message(s) would move from {} to {}",
                p.selected.len(),
                dead.dead_queue_name(),
                dead.work_queue()
            );
            for d in &p.selected {
                println!("{}", info_line(d));
            }
            for id in &p.not_found {
                println!("not found: {id}");
            }
        }
        return Ok(status(p.not_found.is_empty()));
    }
    let report = dead.replay(&selection).await;
    conn.close().await;
    let r = report?;
    if a.target.json {
        println!(
            "{}",
            json!({
                "queue": dead.work_queue(),
                "dead_queue": dead.dead_queue_name(),
                "replayed": r.replayed.iter().map(|d| d.message_id.clone()).collect::<Vec<_>>(),
                "failed": r.failed.iter().map(|f| json!({
                    "message_id": f.info.message_id,
                    "reason": f.reason,
                })).collect::<Vec<_>>(),
                "not_found": r.not_found,
                "interrupted": r.interrupted.as_ref().map(ToString::to_string),
                "in_flight": r.in_flight,
            })
        );
    } else {
        println!(
            "replayed {} message(s) from {} to {}",
            r.replayed.len(),
            dead.dead_queue_name(),
            dead.work_queue()
        );
        for f in &r.failed {
            println!(
                "not replayed: {} ({})",
                f.info.message_id.as_deref().unwrap_or("<no id>"),
                f.reason
            );
        }
        for id in &r.not_found {
            println!("not found: {id}");
        }
        if let Some(e) = &r.interrupted {
            eprintln!(
                "stopped early: {e}. Everything not replayed is still in {}; {} copies were in \
                 flight (they may be in {} as well: replaying them again is safe, the consumer \
                 skips duplicates)",
                dead.dead_queue_name(),
                r.in_flight,
                dead.work_queue()
            );
        }
    }
    Ok(status(r.is_complete()))
}

async fn purge(a: PurgeArgs) -> anyhow::Result<ExitCode> {
    if !a.yes {
        return Err(exit::usage(
            "dlq purge removes messages for good: add --yes to confirm (see them first with \
             `dlq list`)",
        ));
    }
    let selection = a.pick.selection();
    let (conn, dead) = open(&a.target).await?;
    let report = dead.purge(&selection).await;
    conn.close().await;
    let r = report?;
    if a.target.json {
        println!(
            "{}",
            json!({
                "dead_queue": dead.dead_queue_name(),
                "removed": r.removed.iter().map(|d| d.message_id.clone()).collect::<Vec<_>>(),
                "not_found": r.not_found,
                "interrupted": r.interrupted.as_ref().map(ToString::to_string),
            })
        );
    } else {
        println!(
            "removed {} message(s) from {}",
            r.removed.len(),
            dead.dead_queue_name()
        );
        for id in &r.not_found {
            println!("not found: {id}");
        }
        if let Some(e) = &r.interrupted {
            eprintln!("stopped early: {e}; the last removals may not have reached the broker");
        }
    }
    Ok(status(r.not_found.is_empty() && r.interrupted.is_none()))
}

fn status(complete: bool) -> ExitCode {
    if complete {
        Status::Success.into()
    } else {
        Status::Incomplete.into()
    }
}

fn info_json(d: &DeadLetterInfo) -> serde_json::Value {
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    json!({
        "position": d.position,
        "message_id": d.message_id,
        "reason": d.reason,
        "attempts": d.attempts,
        "deaths": d.deaths,
        "first_failure": secs(d.first_failure),
        "last_failure": secs(d.last_failure),
        "original_exchange": d.original_exchange,
        "original_routing_key": d.original_routing_key,
        "queue": d.queue,
        "group": d.group,
        "body_size": d.body_size,
        "malformed": d.malformed,
    })
}

fn info_line(d: &DeadLetterInfo) -> String {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let when = match (d.first_failure, d.last_failure) {
        (Some(a), Some(b)) if a != b => format!("{} .. {}", utc(a), utc(b)),
        (_, Some(b)) => utc(b),
        _ => "-".into(),
    };
    let exchange = match d.original_exchange.as_deref() {
        Some("") => "(default)".to_string(),
        Some(x) => x.to_string(),
        None => "-".into(),
    };
    format!(
        "{:>5}  {}  attempts {}  failed {}  from {} / {}  reason: {}",
        d.position,
        or(&d.message_id),
        d.attempts
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        when,
        exchange,
        or(&d.original_routing_key),
        or(&d.reason)
    )
}

/// `2024-05-01T12:00:00Z`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
