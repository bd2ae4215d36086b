//! The `rabbit-once` binary end to end: real processes against the real broker and databases.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{delete_queues, json};

use rabbit_once::sqlx;
use rabbit_once::{Connection, Message, Publisher, PublisherConfig, Queue, Topology};
use std::process::Stdio;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_balances_its_ledger() {
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--count", "2000", "--cuts", "5"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lost                      0"), "{stdout}");
    assert!(stdout.contains("applied twice             0"), "{stdout}");
    assert!(
        stdout.contains("OK: published = confirmed = applied once"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_and_fails_clearly_on_bad_credentials() {
    let q = unique("cli-pub");
    let out = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--queue",
            &q,
            "--count",
            "500",
            "--size",
            "64",
            "--json",
            "--uri",
            &broker_uri(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json(&out);
    assert_eq!(
        (s["published"].as_u64(), s["confirmed"].as_u64()),
        (Some(500), Some(500))
    );
    let conn = direct().await;
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 500);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;

    let bad = broker_uri().replace("guest:guest", "guest:Wrong-Secret");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .args(["publish", "--queue", &q, "--count", "5", "--uri", &bad])
            .output(),
    )
    .await
    .expect("fails fast")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("Wrong-Secret"), "{err}");
}

/// Two consumer processes on one queue, one PostgreSQL: every id is published twice in a row,
/// so the two copies usually go to different processes at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumer_processes_sharing_postgres_apply_each_id_once() {
    const N: u64 = 3000;
    let q = unique("cli-two");
    let schema = PgSchema::new();
    let conn = Connection::connect(
        support::config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))),
    )
    .await
    .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for i in 0..N {
        for _ in 0..2 {
            let m = Message::to_queue(&q, body(i, 32)).with_message_id(format!("{q}-{i}"));
            cs.push(p.publish(m).await.unwrap());
        }
    }
    for c in cs {
        c.await.unwrap();
    }
    let spawn = || {
        tokio::process::Command::new(BIN)
            .args([
                "consume",
                "--queue",
                &q,
                "--store",
                &pg_url(),
                "--schema",
                &schema.name,
                "--until-idle",
                "2",
                "--prefetch",
                "50",
                "--batch",
                "10",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let (ja, jb) = (json(&a), json(&b));
    let applied = ja["applied"].as_u64().unwrap() + jb["applied"].as_u64().unwrap();
    let dups = ja["duplicates"].as_u64().unwrap() + jb["duplicates"].as_u64().unwrap();
    assert_eq!((applied, dups), (N, N), "{ja} {jb}");

    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let table = format!("\"{}\".applied", schema.name);
    let (rows, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM {table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct),
        (N as i64, N as i64),
        "each id applied exactly once across both"
    );
    let pids: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(DISTINCT consumer_pid) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pids, 2, "both processes applied messages");
    pool.close().await;
    p.close(Duration::from_secs(5)).await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}

/// `publish --quorum` and `consume --quorum` declare the same quorum work queue (the consumer's
/// arguments: a delivery limit, at-least-once dead-lettering), so either may start first; the
/// retry and dead-letter queues are quorum queues too; every message applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_on_quorum_queues() {
    let q = unique("cli-quorum");
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let out = tokio::process::Command::new(BIN)
        .args([
            "publish", "--queue", &q, "--quorum", "--count", "300", "--size", "64",
        ])
        .args(["--json", "--uri", &uri])
        .output()
        .await
        .unwrap();
    assert_eq!(json(&out)["confirmed"], 300);
    let out = tokio::process::Command::new(BIN)
        .args(["consume", "--queue", &q, "--quorum", "--store", &store])
        .args(["--until-idle", "2", "--json", "--uri", &uri])
        .output()
        .await
        .unwrap();
    let s = json(&out);
    assert!(out.status.success(), "{s}");
    assert_eq!(
        (s["applied"].as_u64(), s["duplicates"].as_u64()),
        (Some(300), Some(0))
    );
    let types = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type"])
        .output()
        .unwrap();
    let types = String::from_utf8_lossy(&types.stdout);
    for name in [q.clone(), format!("{q}.dead"), format!("{q}.retry.200")] {
        assert!(
            types.lines().any(|l| l == format!("{name}\tquorum")),
            "{name} is a quorum queue:\n{types}"
        );
    }
    let conn = direct().await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}
