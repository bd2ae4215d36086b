//! `chaos --cluster 3` in CI: a private 3-node cluster (quorum queues), 2 publisher and 3
//! consumer processes given every node through per-node fault proxies, one PostgreSQL dedup
//! store; the work queue's leader node killed with `kill -9` and started again, a follower's app
//! stopped and started, cuts and a black hole on one node's proxy, consumer and publisher
//! SIGKILLs — and the ledger must balance. Bounded to 4,000 messages (about 2 minutes here).
//!
//! A test binary of its own: cargo runs test binaries one after the other, so the cluster never
//! shares the machine's 2 cores with the other chaos runs.

mod common;

use common::json;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");
const MESSAGES: u64 = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_three_node_cluster_with_the_leader_killed_loses_nothing_and_applies_nothing_twice()
 {
    let pg = std::env::var("RONCE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let child = tokio::process::Command::new(BIN)
        .args(["chaos", "--cluster", "3", "--store", &pg])
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--publishers", "2", "--consumers", "3"])
        .args(["--cuts", "3", "--blackholes", "1"])
        .args(["--restarts", "1", "--broker-kills", "1"])
        .args(["--consumer-kills", "2", "--publisher-kills", "1"])
        .args(["--heartbeat", "2", "--fault-interval", "1.0"])
        .args(["--timeout", "240", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The nodes and the schema are named after the chaos process.
    let pid = child.id().expect("the chaos process runs");
    let out = tokio::time::timeout(Duration::from_secs(420), child.wait_with_output())
        .await
        .expect("the chaos run ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let l = json(&out);
    eprintln!("{stderr}\n{l}");
    let n = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {l}\n{stderr}"))
    };
    assert_eq!(n("lost"), 0, "{l}\n{stderr}");
    assert_eq!(n("applied_twice"), 0, "{l}\n{stderr}");
    assert_eq!(n("missing"), 0, "{l}\n{stderr}");
    assert_eq!(n("confirmed"), MESSAGES, "{l}");
    assert_eq!(n("applied_once"), MESSAGES, "{l}");
    // No handler fails: nothing may go the retry or dead-letter way (a quorum queue's delivery
    // limit is far above what the faults can cause).
    assert_eq!(n("retried"), 0, "{l}");
    assert_eq!(n("dead_lettered"), 0, "{l}");
    let f = |k: &str| l["faults"][k].as_u64().unwrap_or(0);
    assert_eq!(f("cut"), 3, "{l}");
    for kind in [
        "blackhole",
        "leader_kill9",
        "node_stop_app",
        "consumer_kill",
        "publisher_kill",
    ] {
        assert!(f(kind) >= 1, "{kind} did not fire: {l}");
    }
    assert_eq!(l["faults_not_fired"], serde_json::json!([]), "{l}");
    // The single-node faults have no place on a cluster.
    assert_eq!(f("broker_kill9") + f("broker_restart"), 0, "{l}");
    let kills = l["leader_kills"].as_array().expect("leader_kills");
    assert_eq!(kills.len(), 1, "{l}");
    let (killed, next) = (
        kills[0]["killed"].as_str().unwrap(),
        kills[0]["new_leader"].as_str().unwrap(),
    );
    let ours = format!("ronce-{pid}-");
    assert!(
        killed.starts_with(&ours) && next.starts_with(&ours) && killed != next,
        "a node of the run's cluster led, another one next: {l}"
    );
    assert!(out.status.success(), "{stderr}");

    // Nothing left behind: no node of the run's cluster, no schema of the run.
    let nodes = std::process::Command::new("pgrep")
        .args(["-f", &ours])
        .output()
        .unwrap();
    assert!(
        nodes.stdout.is_empty(),
        "nodes of the run still running: {}",
        String::from_utf8_lossy(&nodes.stdout)
    );
    let db = rabbit_once::sqlx::PgPool::connect(&pg).await.unwrap();
    let schemas: i64 =
        rabbit_once::sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
            .bind(format!("chaos\\_{pid}\\_%"))
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(schemas, 0, "the run's schema is dropped");
    db.close().await;
}
