//! The chaos run in CI: a private node, ≥ 20,000 messages, ≥ 10 cuts, a black hole, a broker
//! restart and a kill -9, consumer and publisher SIGKILLs — and the ledger must balance. Then
//! the outbox mode on SQLite and PostgreSQL (publisher and relay processes killed), bounded to
//! 3,000 messages on the shared broker.

mod common;

use common::json;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_loses_nothing_and_applies_nothing_twice() {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(BIN)
            .args([
                "chaos",
                "--own-broker",
                "--messages",
                "20000",
                "--publishers",
                "2",
                "--consumers",
                "2",
                "--cuts",
                "10",
                "--blackholes",
                "1",
                "--restarts",
                "1",
                "--broker-kills",
                "1",
                "--consumer-kills",
                "1",
                "--publisher-kills",
                "1",
                "--heartbeat",
                "2",
                "--fault-interval",
                "1.0",
                "--timeout",
                "420",
                "--json",
            ])
            .output(),
    )
    .await
    .expect("the chaos run ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let l = json(&out);
    let n = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {l}"))
    };
    assert_eq!(n("lost"), 0, "{l}");
    assert_eq!(n("applied_twice"), 0, "{l}");
    assert_eq!(n("missing"), 0, "{l}");
    assert_eq!(n("confirmed"), 20_000, "{l}");
    assert_eq!(n("applied_once"), 20_000, "{l}");
    let faults = &l["faults"];
    let f = |k: &str| faults[k].as_u64().unwrap_or(0);
    assert!(f("cut") >= 10, "{faults}");
    for kind in [
        "blackhole",
        "broker_restart",
        "broker_kill9",
        "consumer_kill",
        "publisher_kill",
    ] {
        assert!(f(kind) >= 1, "{kind} did not fire: {faults}");
    }
    assert!(out.status.success(), "{stderr}");
}

/// `chaos --outbox --pipeline`: publishers commit through the outbox and are SIGKILLed
/// (PostgreSQL: relay processes too), connections are cut, stage-1 consumers — which emit each
/// message to stage 2 through the outbox in the transaction that applies it — are killed; every
/// committed message is applied exactly once, and produces exactly one applied stage-2 message.
/// Returns the ledger.
async fn outbox_chaos(store: &[&str]) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(BIN)
            .args([
                "chaos",
                "--outbox",
                "--pipeline",
                "--messages",
                "3000",
                "--publishers",
                "2",
                "--consumers",
                "2",
                "--cuts",
                "3",
                "--blackholes",
                "0",
                "--consumer-kills",
                "2",
                "--publisher-kills",
                "2",
                "--relays",
                "2",
                "--relay-kills",
                "3",
                "--heartbeat",
                "2",
                "--fault-interval",
                "1.0",
                "--timeout",
                "240",
                "--json",
            ])
            .args(store)
            .output(),
    )
    .await
    .expect("the chaos run ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let l = json(&out);
    for (k, want) in [
        ("lost", 0),
        ("applied_twice", 0),
        ("missing", 0),
        ("committed", 3000),
        ("confirmed", 3000),
        ("applied_once", 3000),
        ("stage2_applied_once", 3000),
        ("stage2_applied_twice", 0),
        ("stage2_lost", 0),
    ] {
        assert_eq!(l[k].as_u64(), Some(want), "{k}: {l}");
    }
    assert!(
        l.get("unconfirmed_at_crash").is_none(),
        "no such column with the outbox: {l}"
    );
    let f = |k: &str| l["faults"][k].as_u64().unwrap_or(0);
    assert_eq!(f("cut"), 3, "{l}");
    assert!(f("publisher_kill") >= 1 && f("consumer_kill") >= 1, "{l}");
    assert!(out.status.success(), "{stderr}");
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_outbox_pipeline_on_sqlite_applies_every_committed_message_once_in_both_stages() {
    // The consumers' SQLite stores seal their dedup tables every 100 records (sealed segments
    // under faults, several consumer processes sealing one file).
    let l = outbox_chaos(&["--segment-rows", "100"]).await;
    assert_eq!(
        l["faults"]["relay_kill"].as_u64(),
        None,
        "no relay processes on SQLite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_outbox_pipeline_on_postgres_with_relays_killed_applies_every_message_once_in_both_stages()
 {
    let pg = std::env::var("RONCE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let l = outbox_chaos(&["--store", &pg]).await;
    assert_eq!(l["faults"]["relay_kill"].as_u64(), Some(3), "{l}");
}
