//! `rabbit-once status`: what an operator looks at first — the connection (endpoint, broker,
//! ready or why not), a consumer's queues (the work queue, its retry queues and its dead-letter
//! queue: messages ready, consumers, or missing), its dedup rows, and an outbox.
//!
//! Each part is looked at even when another fails (the store is read with no broker
//! reachable); the exit status says what failed: 3 no broker (or one that did not answer about
//! a queue in time), 4 a store, 1 no work queue or a queue whose state is unknown.

use crate::applied::{Db, without_password};
use crate::common::Conn;
use crate::exit::{self, Status};
use crate::outbox::{OutboxArgs, OutboxDb};
use rabbit_once::sqlx;
use rabbit_once::{
    Connection, ConnectionState, ConsumerConfig, DEDUP_TABLE, DeadLetter, DeadLetters, Error,
    RetryPolicy,
};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// The flags of `rabbit-once status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// A consumer's work queue: shown with its retry queues and its dead-letter queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// The consumer's retry delays in milliseconds, which name its retry queues
    /// (`<QUEUE>.retry.<MS>`). Default: `consume`'s (200, 1000, 5000); the library's
    /// default policy is 1000,10000,60000,300000.
    #[arg(long, value_name = "MS", value_delimiter = ',')]
    pub retry_delays: Vec<u64>,
    /// The dead-letter queue, if not the consumer's default `<QUEUE>.dead`.
    #[arg(long, value_name = "QUEUE")]
    pub dead_queue: Option<String>,
    /// The consumer group whose dedup rows to count (default: the queue's name, as `consume`).
    #[arg(long)]
    pub group: Option<String>,
    /// Count the dedup rows of this store: sqlite:PATH or postgres://user@host:port/db.
    #[arg(long)]
    pub store: Option<String>,
    /// Show this outbox's state (as `outbox status`): sqlite:PATH or postgres://….
    #[arg(long)]
    pub outbox: Option<String>,
    /// PostgreSQL schema of the store and the outbox.
    #[arg(long)]
    pub schema: Option<String>,
    /// Print it as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The longest the queues' passive declares may take, all of them together: they are asked at
/// once, and one not answered by then (a session lost meanwhile waits for the next one) is
/// shown as unknown.
const ASK_LIMIT: Duration = Duration::from_secs(10);

/// Looks at everything the flags name, prints it, and exits with the status of the worst
/// failure: 3 (no broker) before 4 (a store) before 1 (the work queue is missing).
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut worst: Option<Status> = None;
    let mut fail = |s: Status| {
        let rank = |s: Status| match s {
            Status::Connect => 3,
            Status::Store => 2,
            _ => 1,
        };
        if worst.is_none_or(|w| rank(s) > rank(w)) {
            worst = Some(s);
        }
    };
    let endpoints: Vec<String> = a
        .conn
        .config("rabbit-once status")?
        .get_endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    let (conn, connection) =
        match crate::common::connect(&a.conn, a.conn.config("rabbit-once status")?).await {
            Ok(conn) => {
                let c = connection_json(&conn, &endpoints).await;
                (Some(conn), c)
            }
            Err(e) => {
                fail(exit::classify(&e));
                let c = json!({
                    "endpoints": endpoints, "connected": false, "ready": false,
                    "error": format!("{e:#}"),
                });
                (None, c)
            }
        };
    let mut queues = Vec::new();
    if let (Some(conn), Some(q)) = (&conn, &a.queue) {
        let unknown;
        (queues, unknown) = queue_states(conn, &consumer(q, &a), a.dead_queue.as_deref()).await;
        if let Some(s) = unknown {
            fail(s);
        }
        if queues.first().is_some_and(|w| w["exists"] == false) {
            eprintln!("the work queue is missing: no queue {q} on the broker");
            fail(Status::Incomplete);
        }
    }
    if let Some(conn) = conn {
        conn.close().await;
    }
    let group = a.group.clone().or_else(|| a.queue.clone());
    let dedup = match &a.store {
        None => Value::Null,
        Some(spec) => match dedup_rows(spec, a.schema.clone()).await {
            Ok(groups) => {
                let total: i64 = groups.iter().map(|g| g.1).sum();
                let rows = group.as_ref().map(|g| {
                    groups
                        .iter()
                        .find(|(name, _)| name == g)
                        .map_or(0, |(_, n)| *n)
                });
                json!({
                    "store": without_password(spec),
                    "group": group,
                    "rows": rows,
                    "total": total,
                    "groups": groups.iter().map(|(g, n)| json!({"group": g, "rows": n}))
                        .collect::<Vec<_>>(),
                })
            }
            Err(e) => {
                fail(exit::classify(&e));
                json!({"store": without_password(spec), "error": format!("{e:#}")})
            }
        },
    };
    let mut outbox_rows = None;
    let outbox = match &a.outbox {
        None => Value::Null,
        Some(spec) => match outbox_state(spec, a.schema.clone()).await {
            Ok(s) => {
                let mut v = crate::outbox::status::status_json(&s);
                v["database"] = without_password(spec).into();
                outbox_rows = Some(s);
                v
            }
            Err(e) => {
                fail(exit::classify(&e));
                json!({"database": without_password(spec), "error": format!("{e:#}")})
            }
        },
    };
    let all = json!({
        "connection": connection,
        "queues": queues,
        "dedup": dedup,
        "outbox": outbox,
    });
    if a.json {
        println!("{all}");
    } else {
        print_text(&all);
        if let Some(s) = &outbox_rows {
            crate::outbox::status::print_status(s);
        }
    }
    Ok(worst.map_or(ExitCode::SUCCESS, ExitCode::from))
}

/// The connection's part: endpoints, the one connected to, the broker, ready or why not.
async fn connection_json(conn: &Connection, endpoints: &[String]) -> Value {
    // The session is up; the state says so a moment later.
    let mut state = conn.watch_state();
    let settled = |s: &ConnectionState| !matches!(s, ConnectionState::Connecting { .. });
    let _ = tokio::time::timeout(Duration::from_secs(1), state.wait_for(settled)).await;
    let health = conn.health();
    let endpoint = match conn.state() {
        ConnectionState::Connected { endpoint, .. } => Some(endpoint),
        _ => None,
    };
    json!({
        "endpoints": endpoints,
        "connected": health.is_connected(),
        "endpoint": endpoint,
        "server": conn.server(),
        "ready": health.is_ready(),
        "not_ready": health.reason(),
    })
}

/// The consumer of `queue` as the flags describe it: `consume`'s unless `--retry-delays` or
/// `--dead-queue` say otherwise. Only the names of its queues are used.
fn consumer(queue: &str, a: &Args) -> ConsumerConfig {
    let mut config = crate::consume::consumer_config(queue, crate::consume::MAX_ATTEMPTS, false);
    if !a.retry_delays.is_empty() {
        let delays = a.retry_delays.iter().map(|ms| Duration::from_millis(*ms));
        config = config.retry(RetryPolicy::new(
            crate::consume::MAX_ATTEMPTS,
            delays.collect(),
        ));
    }
    if let Some(dead) = &a.dead_queue {
        config = config.dead_letter(DeadLetter::Queue(dead.clone()));
    }
    config
}

/// The work queue first, then its retry queues, then its dead-letter queue: each with its
/// messages ready and consumers, or missing, or unknown — all asked at once, within
/// [`ASK_LIMIT`]. Also the exit status an unknown state calls for, if any: 3 when the broker
/// did not answer in time or the connection failed, 1 for any other error.
async fn queue_states(
    conn: &Connection,
    consumer: &ConsumerConfig,
    dead_queue: Option<&str>,
) -> (Vec<Value>, Option<Status>) {
    let queue = consumer.queue();
    let names = consumer.queues();
    let mut dead = DeadLetters::new(conn, queue);
    if let Some(q) = dead_queue {
        dead = dead.dead_queue(q);
    }
    let deadline = tokio::time::Instant::now() + ASK_LIMIT;
    let mut asked = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (conn, name) = (conn.clone(), name.clone());
        asked.spawn(async move {
            let answer = tokio::time::timeout_at(deadline, conn.queue_info(&name)).await;
            (i, answer)
        });
    }
    let mut answers: Vec<Option<_>> = names.iter().map(|_| None).collect();
    while let Some(joined) = asked.join_next().await {
        if let Ok((i, answer)) = joined {
            answers[i] = Some(answer);
        }
    }
    let mut worst: Option<Status> = None;
    let mut out = Vec::with_capacity(names.len());
    for (name, answer) in names.into_iter().zip(answers) {
        let role = if name == queue {
            "work"
        } else if name == dead.dead_queue_name() {
            "dead-letter"
        } else {
            "retry"
        };
        let mut v = json!({"name": name, "role": role});
        let failed = match answer {
            Some(Ok(Ok(info))) => {
                v["exists"] = true.into();
                v["messages_ready"] = info.messages.into();
                v["consumers"] = info.consumers.into();
                None
            }
            Some(Ok(Err(Error::QueueNotFound { .. }))) => {
                v["exists"] = false.into();
                None
            }
            Some(Ok(Err(e))) => {
                v["error"] = e.to_string().into();
                Some(match exit::classify(&anyhow::Error::new(e)) {
                    Status::Connect => Status::Connect,
                    _ => Status::Incomplete,
                })
            }
            Some(Err(_)) => {
                v["error"] = format!("no answer within {} s", ASK_LIMIT.as_secs()).into();
                Some(Status::Connect)
            }
            None => {
                v["error"] = "the question was lost".into();
                Some(Status::Incomplete)
            }
        };
        if let Some(f) = failed
            && (worst.is_none() || f == Status::Connect)
        {
            worst = Some(f);
        }
        out.push(v);
    }
    (out, worst)
}

/// The SQLite file `spec` names, if it names one (not a PostgreSQL URL).
fn sqlite_path(spec: &str) -> Option<&str> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return None;
    }
    Some(
        spec.strip_prefix("sqlite://")
            .or_else(|| spec.strip_prefix("sqlite:"))
            .unwrap_or(spec),
    )
}

/// Dedup rows per consumer group, by group name. The store must exist and hold the dedup
/// table: a mistyped path or schema is an error (exit 4), never a new, empty store.
async fn dedup_rows(spec: &str, schema: Option<String>) -> anyhow::Result<Vec<(String, i64)>> {
    if let Some(path) = sqlite_path(spec)
        && !path.is_empty()
        && !std::path::Path::new(path).exists()
    {
        return Err(exit::store(format!("no dedup store at {path}")));
    }
    let db = Db::open(spec, schema.clone()).await?;
    let rows = match &db {
        Db::Sqlite(s) => {
            let table: Option<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
            )
            .bind(DEDUP_TABLE)
            .fetch_optional(s.pool())
            .await?;
            match table {
                // Sealed segments included (`SqliteOptions::segment_rows`).
                Some(_) => Some(
                    s.records_by_group()
                        .await?
                        .into_iter()
                        .map(|(g, n)| (g, n as i64))
                        .collect(),
                ),
                None => None,
            }
        }
        // Sealed segments included (`PostgresOptions::segment_rows`).
        Db::Postgres(s) => s
            .records_by_group()
            .await?
            .map(|rows| rows.into_iter().map(|(g, n)| (g, n as i64)).collect()),
    };
    match &db {
        Db::Sqlite(s) => s.pool().close().await,
        Db::Postgres(s) => s.pool().close().await,
    }
    rows.ok_or_else(|| {
        exit::store(format!(
            "no dedup table ({DEDUP_TABLE}) in {}",
            match (&db, &schema) {
                (Db::Postgres(_), Some(s)) => format!("schema {s}"),
                (Db::Postgres(_), None) => "the database's search_path".to_string(),
                (Db::Sqlite(_), _) => "that SQLite database".to_string(),
            }
        ))
    })
}

/// The outbox's state, as `outbox status` reads it.
async fn outbox_state(
    spec: &str,
    schema: Option<String>,
) -> anyhow::Result<rabbit_once::OutboxStatus> {
    let args = OutboxArgs {
        spec: spec.to_string(),
        schema,
    };
    let db = OutboxDb::open_existing(&args).await?;
    let s = db.status().await;
    db.close().await;
    s
}

/// The same as the JSON, for people.
fn print_text(all: &Value) {
    let c = &all["connection"];
    let shown = |v: &Value| v.as_str().map(str::to_string);
    let endpoint = shown(&c["endpoint"]).unwrap_or_else(|| {
        c["endpoints"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    });
    let state = if let Some(e) = shown(&c["error"]) {
        format!("not connected: {e}")
    } else if let Some(why) = shown(&c["not_ready"]) {
        why
    } else {
        format!(
            "connected to {}, ready",
            shown(&c["server"]).unwrap_or_else(|| "the broker".into())
        )
    };
    println!("connection  {endpoint}  {state}");
    if let Some(queues) = all["queues"].as_array().filter(|q| !q.is_empty()) {
        println!("queues");
        for q in queues {
            let what = if let Some(e) = shown(&q["error"]) {
                format!("unknown: {e}")
            } else if q["exists"] == false {
                "missing".to_string()
            } else {
                format!(
                    "ready {}  consumers {}",
                    q["messages_ready"], q["consumers"]
                )
            };
            println!(
                "  {:<12} {:<40} {what}",
                q["role"].as_str().unwrap_or_default(),
                q["name"].as_str().unwrap_or_default()
            );
        }
    }
    let d = &all["dedup"];
    if !d.is_null() {
        let store = shown(&d["store"]).unwrap_or_default();
        if let Some(e) = shown(&d["error"]) {
            println!("dedup       {store}  error: {e}");
        } else {
            let group = match (shown(&d["group"]), d["rows"].as_i64()) {
                (Some(g), Some(n)) => format!("group {g}: {n} rows  "),
                _ => String::new(),
            };
            println!(
                "dedup       {store}  {group}all groups: {} rows",
                d["total"]
            );
        }
    }
    let o = &all["outbox"];
    if !o.is_null() {
        let db = shown(&o["database"]).unwrap_or_default();
        match shown(&o["error"]) {
            Some(e) => println!("outbox      {db}  error: {e}"),
            // `outbox status`'s own lines follow.
            None => print!("outbox      {db}  "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_postgres_urls_are_told_apart() {
        assert_eq!(sqlite_path("sqlite:/tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(sqlite_path("sqlite:///tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(sqlite_path("/tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
        assert_eq!(sqlite_path("postgresql://u@h/db"), None);
    }
}
