//! `chaos --cluster 3` in CI: a private 3-node cluster (quorum queues), 2 publisher and 3
//! consumer processes given every node through per-node fault proxies, one PostgreSQL dedup
//! store; the work queue's leader node killed with `kill -9` and started again, a follower's app
//! stopped and started, cuts and a black hole on one node's proxy, consumer and publisher
//! SIGKILLs, the consumers sealing dedup segments every 200 records — and the ledger must
//! balance. Bounded to 4,000 messages (about 80 s here). The same faults with `--outbox`: the
//! publishers commit through the shared PostgreSQL outbox, a relay process helps them, and
//! publisher and relay processes are SIGKILLed too — every committed message applied once
//! (2,500 messages). Then a run interrupted with Ctrl-C must remove what it made: nodes, child
//! processes, schema.
//!
//! A test binary of its own: cargo runs test binaries one after the other, so the cluster never
//! shares the machine's 2 cores with the other chaos runs; and its tests take turns
//! ([`ONE_CLUSTER_AT_A_TIME`]).

mod common;

use common::json;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");
const MESSAGES: u64 = 4_000;
/// The `--outbox` run's messages.
const OUTBOX_MESSAGES: u64 = 2_500;

/// Held by each test while its cluster may run: two clusters at once are too much for 2 cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_url() -> String {
    std::env::var("RONCE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A finished `chaos --cluster` run: its ledger, its stderr, whether it exited 0, and the
/// chaos process's id (its nodes, children and schema are named after it).
struct ClusterRun {
    ledger: serde_json::Value,
    stderr: String,
    success: bool,
    pid: u32,
}

/// Runs `chaos --cluster 3 --store <pg>` with `args` (and `--json`) to its end, checks that
/// its 3 nodes were seen running and that nothing of it is left (no node, child process or
/// schema), and returns the run. A run that fails to end in 420 s fails the test.
async fn run_cluster_chaos(pg: &str, args: &[&str]) -> ClusterRun {
    let child = tokio::process::Command::new(BIN)
        .args(["chaos", "--cluster", "3", "--store", pg])
        .args(args)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The nodes and the schema are named after the chaos process.
    let pid = child.id().expect("the chaos process runs");
    let _guard = Leftovers(pid);
    // The most nodes of the run seen running at once (so the check at the end that none is
    // left looks for what is there).
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let n = tokio::task::spawn_blocking(move || nodes_of(pid).len())
                    .await
                    .unwrap();
                seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(420), child.wait_with_output())
        .await
        .expect("the chaos run ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ledger = json(&out);
    eprintln!("{stderr}\n{ledger}");
    // Nothing left behind: no node, child process or schema of the run.
    watch.abort();
    // (`rabbitmqctl` runs in a VM of its own, with the node's environment: more may be seen.)
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed) >= 3,
        "the run's 3 nodes were seen running (so the next check looks for what was there)"
    );
    assert_eq!(left_behind(pid, pg).await, (vec![], vec![], 0), "{ledger}");
    ClusterRun {
        ledger,
        stderr,
        success: out.status.success(),
        pid,
    }
}

/// Every kind of fault in `kinds` fired at least once, each kill of the leader named a node of
/// the run's cluster and another one next, and no single-node fault was planned.
fn assert_cluster_faults(run: &ClusterRun, kinds: &[&str]) {
    let l = &run.ledger;
    let f = |k: &str| l["faults"][k].as_u64().unwrap_or(0);
    for kind in kinds {
        assert!(f(kind) >= 1, "{kind} did not fire: {l}");
    }
    assert_eq!(l["faults_not_fired"], serde_json::json!([]), "{l}");
    // The single-node faults have no place on a cluster.
    assert_eq!(f("broker_kill9") + f("broker_restart"), 0, "{l}");
    let kills = l["leader_kills"].as_array().expect("leader_kills");
    assert_eq!(kills.len() as u64, f("leader_kill9"), "{l}");
    let ours = node_pattern(run.pid);
    for k in kills {
        let (killed, next) = (
            k["killed"].as_str().unwrap(),
            k["new_leader"].as_str().unwrap(),
        );
        assert!(
            killed.starts_with(&ours) && next.starts_with(&ours) && killed != next,
            "a node of the run's cluster led, another one next: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_three_node_cluster_with_the_leader_killed_loses_nothing_and_applies_nothing_twice()
 {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let run = run_cluster_chaos(
        &pg_url(),
        &[
            "--messages",
            &MESSAGES.to_string(),
            "--publishers",
            "2",
            "--consumers",
            "3",
            "--cuts",
            "3",
            "--blackholes",
            "1",
            "--restarts",
            "1",
            "--broker-kills",
            "1",
            "--consumer-kills",
            "2",
            "--publisher-kills",
            "1",
            "--heartbeat",
            "2",
            "--fault-interval",
            "1.0",
            // Three consumer processes seal one PostgreSQL dedup table as they go (sealed
            // segments under node kills, cuts and consumer kills).
            "--segment-rows",
            "200",
            "--timeout",
            "240",
        ],
    )
    .await;
    let (l, stderr) = (&run.ledger, &run.stderr);
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
    assert_eq!(l["faults"]["cut"].as_u64(), Some(3), "{l}");
    assert_cluster_faults(
        &run,
        &[
            "blackhole",
            "leader_kill9",
            "node_stop_app",
            "consumer_kill",
            "publisher_kill",
        ],
    );
    assert_eq!(l["leader_kills"].as_array().map(Vec::len), Some(1), "{l}");
    assert!(run.success, "{stderr}");
}

/// `chaos --cluster 3 --outbox`: the publishers commit each message with its `sent` row through
/// the PostgreSQL outbox they share, a relay process helps them (every relay given every node
/// through the proxies, declaring the quorum queues as the consumers do); the leader's node is
/// killed, a follower's app restarted, one node's proxy cut and black-holed, and consumer,
/// publisher and relay processes SIGKILLed — every committed message is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_outbox_on_a_three_node_cluster_applies_every_committed_message_once() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let run = run_cluster_chaos(
        &pg_url(),
        &[
            "--outbox",
            "--messages",
            &OUTBOX_MESSAGES.to_string(),
            "--publishers",
            "2",
            "--consumers",
            "3",
            "--relays",
            "1",
            "--cuts",
            "2",
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
            "--relay-kills",
            "1",
            "--heartbeat",
            "2",
            "--fault-interval",
            "1.0",
            "--timeout",
            "240",
        ],
    )
    .await;
    let (l, stderr) = (&run.ledger, &run.stderr);
    for (k, want) in [
        ("lost", 0),
        ("applied_twice", 0),
        ("missing", 0),
        ("committed", OUTBOX_MESSAGES),
        ("confirmed", OUTBOX_MESSAGES),
        ("applied_once", OUTBOX_MESSAGES),
        // No handler fails, and a quorum queue's delivery limit is out of the faults' reach.
        ("retried", 0),
        ("dead_lettered", 0),
        // Every relay start held (a refused declaration would restart it again and again).
        ("relay_exits", 0),
    ] {
        assert_eq!(l[k].as_u64(), Some(want), "{k}: {l}\n{stderr}");
    }
    assert!(
        l.get("unconfirmed_at_crash").is_none(),
        "no such column with the outbox: {l}"
    );
    assert_eq!(l["faults"]["cut"].as_u64(), Some(2), "{l}");
    assert_cluster_faults(
        &run,
        &[
            "blackhole",
            "leader_kill9",
            "node_stop_app",
            "consumer_kill",
            "publisher_kill",
            "relay_kill",
        ],
    );
    assert!(run.success, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_cluster_interrupted_with_ctrl_c_removes_its_nodes_children_and_schema() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let pg = pg_url();
    let mut child = tokio::process::Command::new(BIN)
        .args(["chaos", "--cluster", "3", "--store", &pg])
        .args(["--messages", "100000", "--rate", "50"])
        .args(["--timeout", "600", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().expect("the chaos process runs");
    let _guard = Leftovers(pid);
    // Interrupted once the children run (they announce the plan after they are started) and
    // a fault or two has passed.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let started = line.contains("faults planned");
            seen.push(line);
            if started {
                return;
            }
        }
        panic!("the run ended before it started its children: {seen:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no children after 180 s: {seen:#?}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (nodes, children, _) = left_behind(pid, &pg).await;
    // (One node may be down for a fault, never two.)
    assert!(nodes.len() >= 2, "the run's nodes run: {seen:#?}");
    assert!(!children.is_empty(), "the run's children run: {seen:#?}");
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the interrupted run ends")
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push(line);
    }
    assert!(!status.success(), "{rest:#?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "it says it was interrupted: {rest:#?}"
    );
    assert_eq!(
        left_behind(pid, &pg).await,
        (vec![], vec![], 0),
        "{rest:#?}"
    );
}

/// What chaos process `pid` left: its nodes' VMs, its children (by process id) and its
/// PostgreSQL schemas (how many).
async fn left_behind(pid: u32, pg: &str) -> (Vec<u32>, Vec<u32>, i64) {
    let (nodes, children) = tokio::task::spawn_blocking(move || (nodes_of(pid), children_of(pid)))
        .await
        .unwrap();
    let db = rabbit_once::sqlx::PgPool::connect(pg).await.unwrap();
    let schemas: i64 =
        rabbit_once::sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
            .bind(format!("chaos\\_{pid}\\_%"))
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    (nodes, children, schemas)
}

/// The processes that run a queue of chaos process `pid` (`--queue chaos-<pid>-…`): its
/// publishers and consumers.
fn children_of(pid: u32) -> Vec<u32> {
    let wanted = format!("chaos-{pid}-");
    processes(|p| {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        cmdline
            .split(|b| *b == 0)
            .any(|a| a.starts_with(wanted.as_bytes()))
    })
}

/// The running processes for which `pick` (given a process id) says yes.
fn processes(pick: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| pick(*p))
        .collect()
}

/// What the node names of chaos process `pid` start with (`rabbit_once_testkit::unique`).
fn node_pattern(pid: u32) -> String {
    format!("ronce-{pid}-")
}

/// The Erlang VMs (`beam.smp`) of the nodes of chaos process `pid` still running, by process
/// id. A node's name is not on its command line but in its environment (`RABBITMQ_NODENAME`).
fn nodes_of(pid: u32) -> Vec<u32> {
    let wanted = format!("RABBITMQ_NODENAME={}", node_pattern(pid));
    processes(|p| {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        comm.trim() == "beam.smp"
            && env
                .split(|b| *b == 0)
                .any(|v| v.starts_with(wanted.as_bytes()))
    })
}

/// If the test fails while the run goes on, the chaos process is asked to stop (SIGINT: it
/// removes its cluster, children, schema and work directory) and given a minute; whatever of it
/// is left then (or when the chaos process was already killed, at the test's timeout) — nodes
/// and children — is killed.
struct Leftovers(u32);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let pid = self.0;
        let gone = || nodes_of(pid).is_empty() && children_of(pid).is_empty();
        if !gone() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let end = std::time::Instant::now() + Duration::from_secs(60);
            while !gone() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for p in nodes_of(pid).into_iter().chain(children_of(pid)) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &p.to_string()])
                .status();
        }
    }
}
