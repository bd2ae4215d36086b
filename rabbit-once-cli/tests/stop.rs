//! Graceful stop with a real signal to a real process: SIGTERM or Ctrl-C (SIGINT) on `consume`
//! and `relay` mid-way. Each exits 0 with its summary; the batch in hand is committed and acked
//! or rolled back, and the confirmed outbox rows are deleted — so a second run finds no
//! duplicate to skip and publishes no row twice.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{delete_queues, finish, json, send, spawn};
use rabbit_once::sqlx;
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;
use support::*;

/// Runs `args` to its end; it must exit 0. Returns its JSON summary.
async fn run_to_end(args: &[&str]) -> serde_json::Value {
    let out = finish(spawn(args, &[])).await;
    assert_success(&out, args);
    json(&out)
}

/// Exit status 0 — not a death by signal — with the output in the message otherwise.
fn assert_success(out: &Output, what: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what:?} ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (at most 30 s) until `f(messages ready on queue)` holds; false if it never does.
async fn wait_queue(conn: &rabbit_once::Connection, queue: &str, f: impl Fn(u64) -> bool) -> bool {
    for _ in 0..3000 {
        if let Ok(i) = conn.queue_info(queue).await
            && f(i.messages as u64)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Messages the consume tests publish first.
const CONSUMED: u64 = 5000;

/// Publishes seqs 0..CONSUMED to `q`, runs `consume` (`store` flags) and sends it `signal` once
/// it has taken a good part of them; it must exit 0 with its summary, having applied fewer
/// than all. A second `consume` runs to the end: it skips no duplicate (every batch the first
/// committed, it acked before exiting) and applies the rest; each seq is applied exactly once.
async fn consume_stopped_by(signal: &str, q: &str, store: &[&str], db: &Ledger) {
    let uri = broker_uri();
    let n = CONSUMED.to_string();
    run_to_end(&[
        "publish", "--queue", q, "--count", &n, "--size", "64", "--json", "--uri", &uri,
    ])
    .await;
    let conn = direct().await;
    let consume = |extra: &[&'static str]| {
        let mut v = vec![
            "consume", "--queue", q, "--batch", "20", "--json", "--uri", &uri,
        ];
        v.extend_from_slice(store);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let first = consume(&[]);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let child = spawn(&first, &[]);
    // Early, so that it lands mid-way however fast the machine: it has taken 500 beyond its
    // prefetch (500), so it has committed batches and holds more in hand.
    let taken = wait_queue(&conn, q, |ready| ready <= CONSUMED - 1000).await;
    assert!(taken, "the consumer took messages");
    send(signal, child.id().unwrap());
    let out = finish(child).await;
    assert_success(&out, &first);
    let s1 = json(&out);
    let applied1 = s1["applied"].as_u64().unwrap();
    assert_eq!(s1["duplicates"], 0, "{s1}");
    assert!(applied1 > 0 && applied1 < CONSUMED, "stopped mid-way: {s1}");
    assert_eq!(
        db.applied_rows().await,
        applied1,
        "each applied row counted"
    );

    let second = consume(&["--until-idle", "3"]);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let s2 = run_to_end(&second).await;
    eprintln!("{signal}: first run {s1}\nsecond run {s2}");
    assert_eq!(
        s2["duplicates"], 0,
        "the first run acked everything it committed: {s2}"
    );
    assert_eq!(s2["applied"].as_u64(), Some(CONSUMED - applied1), "{s2}");
    let counts = db.seq_counts().await;
    assert_eq!(
        counts,
        (0..CONSUMED as i64).map(|s| (s, 1)).collect::<Vec<_>>(),
        "every seq applied exactly once"
    );
    delete_queues(&conn, q).await;
    conn.close().await;
}

/// The `applied` table `consume` writes, read directly.
enum Ledger {
    /// The file, opened for each look (it exists once the consumer created it).
    Sqlite(std::path::PathBuf),
    Postgres(sqlx::PgPool, String),
}

impl Ledger {
    /// `(seq, rows)` for every applied seq, in seq order.
    async fn seq_counts(&self) -> Vec<(i64, i64)> {
        let sql =
            |table: &str| format!("SELECT seq, COUNT(*) FROM {table} GROUP BY seq ORDER BY seq");
        match self {
            Ledger::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
                    .await
                    .unwrap();
                let rows = sqlx::query_as(&sql("applied")).fetch_all(&pool).await;
                pool.close().await;
                rows
            }
            Ledger::Postgres(p, s) => {
                sqlx::query_as(&sql(&format!("\"{s}\".applied")))
                    .fetch_all(p)
                    .await
            }
        }
        .unwrap()
    }

    /// Rows in the `applied` table.
    async fn applied_rows(&self) -> u64 {
        self.seq_counts().await.iter().map(|(_, n)| *n as u64).sum()
    }

    async fn close(self) {
        if let Ledger::Postgres(p, _) = self {
            p.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_consume_with_sqlite_acks_what_it_committed() {
    let q = unique("cli-stop-consume-sqlite");
    let file = TempDb::new();
    let spec = format!("sqlite:{}", file.path.display());
    let db = Ledger::Sqlite(file.path.clone());
    consume_stopped_by("TERM", &q, &["--store", &spec], &db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_consume_with_postgres_acks_what_it_committed() {
    let q = unique("cli-stop-consume-pg");
    let schema = PgSchema::new();
    let pg = pg_url();
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    let db = Ledger::Postgres(pool, schema.name.clone());
    consume_stopped_by("INT", &q, &["--store", &pg, "--schema", &schema.name], &db).await;
    db.close().await;
}

/// Rows the relay tests commit.
const ROWS: u64 = 20_000;

/// Commits ROWS rows to the outbox (`outbox` flags) without relaying them, runs `relay` and
/// sends it `signal` once a part of them reached the queue: it exits 0 with its summary, having
/// deleted every row it relayed (`outbox status` shows the rest pending). A second relay
/// `--until-empty` publishes the rest: every row reaches the queue exactly once.
async fn relay_stopped_by(signal: &str, q: &str, outbox: &[&str]) {
    let uri = broker_uri();
    let conn = direct().await;
    conn.declare(&rabbit_once::Topology::new().queue(rabbit_once::Queue::new(q)))
        .await
        .unwrap();
    let n = ROWS.to_string();
    let publish = [
        &[
            "publish",
            "--queue",
            q,
            "--count",
            &n,
            "--size",
            "64",
            "--tx-size",
            "500",
            "--no-relay",
            "--json",
            "--uri",
            &uri,
        ][..],
        outbox,
    ]
    .concat();
    run_to_end(&publish).await;
    let relay = [
        &["relay", "--json", "--uri", &uri, "--batch", "200"][..],
        outbox,
    ]
    .concat();
    let child = spawn(&relay, &[]);
    // Early (a tenth of the rows), so that it lands mid-way however fast the machine.
    let flowing = wait_queue(&conn, q, |ready| ready >= 1000).await;
    assert!(flowing, "the relay publishes");
    send(signal, child.id().unwrap());
    let out = finish(child).await;
    assert_success(&out, &relay);
    let r1 = json(&out);
    let relayed1 = r1["relayed"].as_u64().unwrap();
    assert!(relayed1 > 0 && relayed1 < ROWS, "stopped mid-way: {r1}");
    assert_eq!(
        r1["pending"].as_u64(),
        Some(ROWS - relayed1),
        "every confirmed row deleted before it exited: {r1}"
    );
    let status = run_to_end(&[&["outbox", "status", "--json"][..], outbox].concat()).await;
    assert_eq!(
        status["pending"].as_u64(),
        Some(ROWS - relayed1),
        "{status}"
    );

    let r2 = run_to_end(&[&relay[..], &["--until-empty"]].concat()).await;
    eprintln!("{signal}: first relay {r1}\nsecond relay {r2}");
    assert_eq!(
        (r2["relayed"].as_u64(), r2["pending"].as_u64()),
        (Some(ROWS - relayed1), Some(0)),
        "{r2}"
    );
    let got = drain(&conn, q, ROWS as usize, Duration::from_secs(5)).await;
    let mut copies: BTreeMap<String, u64> = BTreeMap::new();
    for (id, _) in &got {
        *copies.entry(id.clone()).or_default() += 1;
    }
    let twice = copies.values().filter(|&&c| c > 1).count();
    assert_eq!(
        (copies.len() as u64, twice, got.len() as u64),
        (ROWS, 0, ROWS),
        "every row on the queue exactly once"
    );
    conn.delete_queue(q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_relay_with_postgres_deletes_what_was_confirmed() {
    let q = unique("cli-stop-relay-pg");
    let schema = PgSchema::new();
    let pg = pg_url();
    relay_stopped_by("TERM", &q, &["--outbox", &pg, "--schema", &schema.name]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_relay_with_sqlite_deletes_what_was_confirmed() {
    let q = unique("cli-stop-relay-sqlite");
    let file = TempDb::new();
    let spec = format!("sqlite:{}", file.path.display());
    relay_stopped_by("INT", &q, &["--outbox", &spec]).await;
}

/// Two signals together (sent while the process is stopped, so both are pending when it runs
/// again; none is missed): the first stops `consume`, the second ends its wait for the batch in
/// hand at once — exit 1, said on stderr. Nothing is lost or applied twice: a second run
/// applies the rest, skipping what the first committed and did not ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_consume_at_once_and_nothing_is_applied_twice() {
    let q = unique("cli-stop-twice");
    let file = TempDb::new();
    let spec = format!("sqlite:{}", file.path.display());
    let db = Ledger::Sqlite(file.path.clone());
    let uri = broker_uri();
    let n = CONSUMED.to_string();
    run_to_end(&[
        "publish", "--queue", &q, "--count", &n, "--size", "64", "--json", "--uri", &uri,
    ])
    .await;
    let conn = direct().await;
    let consume = [
        "consume", "--queue", &q, "--batch", "20", "--json", "--uri", &uri, "--store", &spec,
    ];
    let child = spawn(&consume, &[]);
    let taken = wait_queue(&conn, &q, |ready| ready <= CONSUMED - 1000).await;
    assert!(taken, "the consumer took messages");
    let pid = child.id().unwrap();
    send("STOP", pid);
    send("TERM", pid);
    send("INT", pid);
    send("CONT", pid);
    let out = finish(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped again"), "{stderr}");

    let s2 = run_to_end(&[&consume[..], &["--until-idle", "3"]].concat()).await;
    eprintln!("after two signals: second run {s2}");
    let counts = db.seq_counts().await;
    assert_eq!(
        counts,
        (0..CONSUMED as i64).map(|s| (s, 1)).collect::<Vec<_>>(),
        "every seq applied exactly once"
    );
    delete_queues(&conn, &q).await;
    conn.close().await;
}
