//! The chaos run in CI: a private node, ≥ 20,000 messages, ≥ 10 cuts, a black hole, a broker
//! restart and a kill -9, consumer and publisher SIGKILLs — and the ledger must balance.

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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no ledger:\n{stdout}\n{stderr}"));
    let l: serde_json::Value = serde_json::from_str(line).unwrap();
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
