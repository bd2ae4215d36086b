//! `rabbit-once status`: queue depths and consumers of a consumer's work, retry and dead-letter
//! queues, its dedup rows and an outbox, after real `publish` and `consume --reject-every`
//! runs; a missing work queue (exit 1), a wrong store path (exit 4), no broker (exit 3, no
//! password shown). Real processes, the real broker.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{assert_status, delete_queues, json, run_on};
use std::process::Output;
use support::*;

/// `rabbit-once` with `args` on the shared broker.
async fn run(args: &[&str]) -> Output {
    run_on(&broker_uri(), args).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The entry of queue `name` in `status --json`'s `queues`.
fn queue<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_depths_dead_letters_dedup_rows_and_the_outbox() {
    let q = unique("cli-status");
    let dead_q = format!("{q}.dead");
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let outbox_db = TempDb::new();
    let outbox = format!("sqlite:{}", outbox_db.path.display());

    // 12 published, every 4th rejected: 9 applied, 3 dead-lettered.
    let out = run(&["publish", "--queue", &q, "--count", "12", "--size", "32"]).await;
    assert_status(&out, 0);
    let out = run(&[
        "consume",
        "--queue",
        &q,
        "--store",
        &store,
        "--until-idle",
        "2",
        "--batch",
        "10",
        "--reject-every",
        "4",
        "--json",
    ])
    .await;
    assert_status(&out, 0);
    let s = json(&out);
    assert_eq!((&s["applied"], &s["dead_lettered"]), (&9.into(), &3.into()));
    // 5 more wait in the work queue; 4 rows wait in an outbox (no relay).
    let out = run(&["publish", "--queue", &q, "--count", "5", "--start", "12"]).await;
    assert_status(&out, 0);
    let out = run(&[
        "publish",
        "--queue",
        &q,
        "--count",
        "4",
        "--outbox",
        &outbox,
        "--no-relay",
    ])
    .await;
    assert_status(&out, 0);

    let args = [
        "status", "--queue", &q, "--store", &store, "--outbox", &outbox,
    ];
    let out = run(&[&args[..], &["--json"]].concat()).await;
    assert_status(&out, 0);
    let st = json(&out);
    let c = &st["connection"];
    assert_eq!((&c["connected"], &c["ready"]), (&true.into(), &true.into()));
    assert!(c["server"].as_str().unwrap().starts_with("RabbitMQ"), "{c}");
    let work = queue(&st, &q);
    assert_eq!(work["role"], "work");
    assert_eq!(work["exists"], true);
    assert_eq!(work["messages_ready"], 5);
    assert_eq!(work["consumers"], 0);
    let dead = queue(&st, &dead_q);
    assert_eq!(dead["role"], "dead-letter");
    assert_eq!(dead["messages_ready"], 3);
    let retries: Vec<_> = st["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["role"] == "retry")
        .collect();
    assert_eq!(retries.len(), 3, "{st}");
    assert!(
        retries
            .iter()
            .all(|r| r["exists"] == true && r["messages_ready"] == 0),
        "declared by the consumer, empty: {st}"
    );
    let d = &st["dedup"];
    assert_eq!(d["group"], q.as_str());
    // The applied ones: a rejected message is not recorded (a replay applies it).
    let rows = 9;
    assert_eq!(d["rows"], rows, "{d}");
    assert_eq!(d["total"], rows, "one group in this store: {d}");
    assert_eq!(st["outbox"]["pending"], 4, "{st}");
    assert_eq!(st["outbox"]["parked"], 0, "{st}");

    // Text mode says the same.
    let out = run(&args).await;
    assert_status(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("connected to RabbitMQ"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name} in\n{text}"))
            .to_string()
    };
    assert!(line(&q).contains("ready 5  consumers 0"), "{text}");
    assert!(line(&dead_q).contains("ready 3"), "{text}");
    assert!(text.contains(&format!("group {q}: {rows} rows")), "{text}");
    assert!(text.contains("pending 4"), "{text}");
    assert!(!text.contains("missing"), "{text}");

    let conn = direct().await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_work_queue_is_shown_as_missing_and_exits_1() {
    let q = unique("cli-status-none");
    let out = run(&["status", "--queue", &q, "--json"]).await;
    assert_status(&out, 1);
    let st = json(&out);
    assert_eq!(queue(&st, &q)["exists"], false, "{st}");
    assert_eq!(queue(&st, &format!("{q}.dead"))["exists"], false, "{st}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no queue {q}")),
        "said on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status", "--queue", &q]).await;
    assert_status(&out, 1);
    assert!(stdout(&out).contains("missing"), "{}", stdout(&out));

    // Another consumer's queues: its retry delays and dead-letter queue.
    let dead = format!("{q}-dlq");
    let out = run(&[
        "status",
        "--queue",
        &q,
        "--retry-delays",
        "1000,10000",
        "--dead-queue",
        &dead,
        "--json",
    ])
    .await;
    assert_status(&out, 1);
    let st = json(&out);
    let named: Vec<(&str, &str)> = st["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["role"].as_str().unwrap(), q["name"].as_str().unwrap()))
        .collect();
    let (retry_1, retry_10) = (format!("{q}.retry.1000"), format!("{q}.retry.10000"));
    assert_eq!(
        named,
        [
            ("work", q.as_str()),
            ("retry", retry_1.as_str()),
            ("retry", retry_10.as_str()),
            ("dead-letter", dead.as_str()),
        ]
    );
}

/// A queue the broker will not say anything about (here a dead-letter queue another connection
/// holds exclusively: 405 to a passive declare) is shown as unknown, and the run exits 1, the
/// others still shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_state_is_unknown_exits_1() {
    use rabbit_once::{Queue, Topology};
    let q = unique("cli-status-unknown");
    let dead = format!("{q}-locked");
    let conn = direct().await;
    conn.declare(
        &Topology::new()
            .queue(Queue::new(&q))
            .queue(Queue::new(&dead).durable(false).exclusive(true)),
    )
    .await
    .unwrap();
    let out = run(&["status", "--queue", &q, "--dead-queue", &dead, "--json"]).await;
    assert_status(&out, 1);
    let st = json(&out);
    assert_eq!(queue(&st, &q)["exists"], true, "{st}");
    assert!(queue(&st, &dead)["error"].is_string(), "{st}");
    let out = run(&["status", "--queue", &q, "--dead-queue", &dead]).await;
    assert_status(&out, 1);
    assert!(stdout(&out).contains("unknown: "), "{}", stdout(&out));
    delete_queues(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_there_exits_4_and_the_rest_is_still_shown() {
    let db = TempDb::new(); // never created
    let store = format!("sqlite:{}", db.path.display());
    let out = run(&["status", "--store", &store, "--json"]).await;
    assert_status(&out, 4);
    let st = json(&out);
    assert_eq!(st["connection"]["connected"], true, "{st}");
    assert!(
        st["dedup"]["error"]
            .as_str()
            .unwrap()
            .contains("no dedup store"),
        "{st}"
    );
    assert!(!db.path.exists(), "not created by looking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_exits_3_and_never_shows_the_password() {
    let port = rabbit_once_testkit::free_port().unwrap();
    let uri = format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f");
    for json_flag in [true, false] {
        let mut args = vec!["status", "--queue", "q", "--connect-wait", "1"];
        if json_flag {
            args.push("--json");
        }
        let out = run_on(&uri, &args).await;
        assert_status(&out, 3);
        let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(!all.contains("s3cret-pw"), "{all}");
        assert!(
            all.contains(&format!("amqp://guest@127.0.0.1:{port}")),
            "{all}"
        );
        if json_flag {
            let st = json(&out);
            assert_eq!(st["connection"]["connected"], false, "{st}");
            assert!(st["connection"]["error"].is_string(), "{st}");
        } else {
            assert!(stdout(&out).contains("not connected"), "{}", stdout(&out));
        }
    }
}
