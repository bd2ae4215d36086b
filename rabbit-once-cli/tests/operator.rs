//! What an operator touches: exit statuses, configuration from the environment, completions,
//! `publish --from` with good, malformed and undeliverable lines, Ctrl-C on `publish`, and
//! `consume --reject-every` down to the dead-letter queue. Real processes, the real broker.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{BIN, assert_status, delete_queues, finish, json, send, spawn};
use rabbit_once::sqlx;
use rabbit_once::{Subscription, SubscriptionConfig};
use std::process::{Output, Stdio};
use std::time::Duration;
use support::*;

/// `rabbit-once` with `args` and `env`, stdin from `input`; at most 60 s.
async fn run(args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = input {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        drop(stdin);
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends within 60 s")
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A message read back: its id, body and properties.
struct Got {
    id: Option<String>,
    body: bytes::Bytes,
    properties: rabbit_once::Properties,
}

impl Got {
    fn message_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn body(&self) -> &bytes::Bytes {
        &self.body
    }

    fn header(&self, key: &str) -> Option<&rabbit_once::FieldValue> {
        self.properties.header(key)
    }
}

/// Every message on `queue`, acked, in queue order, until 1 s passes with nothing new.
async fn read_all(queue: &str) -> Vec<Got> {
    let conn = direct().await;
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(queue)).unwrap();
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await {
        out.push(Got {
            id: d.message_id().map(str::to_string),
            body: d.body().clone(),
            properties: d.properties().clone(),
        });
        d.ack();
    }
    sub.close(Duration::from_secs(5)).await;
    conn.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exit_status_means_one_thing() {
    let q = unique("cli-exit");
    let secret = "Wrong-Pass-4711";
    let wrong_password = broker_uri().replace("guest:guest", &format!("guest:{secret}"));
    let out = run(
        &["publish", "--queue", &q, "--uri", &wrong_password],
        &[],
        None,
    )
    .await;
    assert_status(&out, 3);
    assert!(stderr(&out).contains("authentication failed"), "{out:?}");
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));

    let unknown_vhost = format!(
        "amqp://guest:guest@{}/{}",
        broker_addr(),
        unique("no-vhost")
    );
    let out = run(
        &["publish", "--queue", &q, "--uri", &unknown_vhost],
        &[],
        None,
    )
    .await;
    assert_status(&out, 3);
    assert!(stderr(&out).contains("vhost"), "{}", stderr(&out));

    // Nothing listens on port 1: refused until the connect wait is over.
    let nobody = format!("amqp://guest:{secret}@127.0.0.1:1/%2f");
    let out = run(
        &[
            "publish",
            "--queue",
            &q,
            "--uri",
            &nobody,
            "--connect-wait",
            "1",
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 3);
    assert!(stderr(&out).contains("no broker reachable"), "{out:?}");
    assert!(
        stderr(&out).contains("cannot reach"),
        "said so while waiting"
    );
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));

    let out = run(&["publish", "--queue", &q, "--uri", "amqx://h"], &[], None).await;
    assert_status(&out, 2);
    let out = run(&["publish", "--queue", &q, "--no-such-flag"], &[], None).await;
    assert_status(&out, 2);

    let missing_dir = std::env::temp_dir().join(unique("no-dir")).join("x.db");
    let store = format!("sqlite:{}", missing_dir.display());
    let out = run(&["consume", "--queue", &q, "--store", &store], &[], None).await;
    assert_status(&out, 4);
    assert!(
        stderr(&out).contains("could not open the database"),
        "{out:?}"
    );

    let no_db = pg_url().rsplit_once('/').unwrap().0.to_string() + "/" + &unique("nodb");
    let with_password = no_db.replace("postgres@", &format!("postgres:{secret}@"));
    let out = run(
        &["consume", "--queue", &q, "--store", &with_password],
        &[],
        None,
    )
    .await;
    assert_status(&out, 4);
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    // No queue was declared by any of these.
    let conn = direct().await;
    assert!(conn.queue_info(&q).await.is_err());
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_come_from_the_environment_and_uris_are_never_shown() {
    let q = unique("cli-env");
    let secret = "Env-Secret-0815";
    let wrong = broker_uri().replace("guest:guest", &format!("guest:{secret}"));
    let env = [
        ("RABBIT_ONCE_URI", wrong.as_str()),
        ("RABBIT_ONCE_PUBLISH_QUEUE", &q),
    ];
    let out = run(&["publish", "--count", "3"], &env, None).await;
    assert_status(&out, 3);
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    let help = run(&["publish", "--help"], &env, None).await;
    assert_status(&help, 0);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[env: RABBIT_ONCE_URI]"), "{help}");
    assert!(help.contains("[env: RABBIT_ONCE_PUBLISH_QUEUE]"), "{help}");
    assert!(!help.contains(secret), "{help}");

    // Several URIs, comma-separated: the first refuses, the second is the broker. A switch
    // (--json) and numbers from the environment too.
    let uris = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", broker_uri());
    let env = [
        ("RABBIT_ONCE_URI", uris.as_str()),
        ("RABBIT_ONCE_PUBLISH_QUEUE", &q),
        ("RABBIT_ONCE_PUBLISH_COUNT", "7"),
        ("RABBIT_ONCE_PUBLISH_SIZE", "16"),
        ("RABBIT_ONCE_PUBLISH_JSON", "yes"),
    ];
    let out = run(&["publish"], &env, None).await;
    assert_status(&out, 0);
    assert_eq!(json(&out)["confirmed"], 7);
    // The command line wins over the environment.
    let out = run(&["publish", "--count", "2"], &env, None).await;
    assert_eq!(json(&out)["confirmed"], 2);
    let conn = direct().await;
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 9);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn completions_are_printed_for_a_shell() {
    let out = run(&["completions", "bash"], &[], None).await;
    assert_status(&out, 0);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("rabbit-once"), "{script}");
    for word in ["publish", "consume", "--from", "--reject-every"] {
        assert!(script.contains(word), "{word} completes");
    }
    let out = run(&["completions", "no-such-shell"], &[], None).await;
    assert_status(&out, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_raw_and_json_lines() {
    let q = unique("cli-from");
    // Raw lines from stdin: each line once, in order; the blank line is skipped.
    let out = run(
        &["publish", "--from", "-", "--queue", &q, "--json"],
        &[],
        Some("first line\n{not json at all}\n\nthird\r\n"),
    )
    .await;
    assert_status(&out, 0);
    assert_eq!(json(&out)["confirmed"], 3);
    let got = read_all(&q).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| d.body().as_ref()).collect();
    assert_eq!(bodies, [&b"first line"[..], b"{not json at all}", b"third"]);

    // JSON lines from a file: ids, headers and bodies as written.
    let file = std::env::temp_dir().join(unique("lines"));
    std::fs::write(
        &file,
        concat!(
            r#"{"id":"order-1","headers":{"tenant":"acme","n":3,"vip":true},"body":"one"}"#,
            "\n",
            r#"{"id":"order-2","body":{"amount":12}}"#,
            "\n",
            r#"{"body":"no id"}"#,
            "\n",
        ),
    )
    .unwrap();
    let path = file.display().to_string();
    let out = run(
        &[
            "publish", "--from", &path, "--format", "json", "--queue", &q,
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 0);
    let got = read_all(&q).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].message_id(), Some("order-1"));
    assert_eq!(got[0].body().as_ref(), b"one");
    assert_eq!(
        got[0].header("tenant").and_then(|v| v.as_str()),
        Some("acme")
    );
    assert_eq!(got[0].header("n").and_then(|v| v.as_i64()), Some(3));
    assert!(got[0].header("vip").is_some());
    assert_eq!(got[1].message_id(), Some("order-2"));
    assert_eq!(got[1].body().as_ref(), br#"{"amount":12}"#);
    let generated = got[2].message_id().unwrap();
    assert!(!generated.is_empty() && !generated.starts_with("order-"));
    let _ = std::fs::remove_file(&file);
    let conn = direct().await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_stops_at_a_malformed_line_and_keeps_the_rest() {
    let q = unique("cli-from-bad");
    let dir = std::env::temp_dir();
    let (input, failed) = (dir.join(unique("in")), dir.join(unique("failed")));
    let lines = [
        r#"{"id":"a","body":"1"}"#,
        r#"{"id":"b","body":"2"}"#,
        r#"{"id":"c","body":"#,
        r#"{"id":"d","body":"4"}"#,
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (input_s, failed_s) = (input.display().to_string(), failed.display().to_string());
    let out = run(
        &[
            "publish", "--from", &input_s, "--format", "json", "--queue", &q, "--failed",
            &failed_s, "--json",
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 2);
    assert!(stderr(&out).contains("--from line 3"), "{}", stderr(&out));
    let s = json(&out);
    assert_eq!(
        (s["confirmed"].as_u64(), s["not_published"].as_u64()),
        (Some(2), Some(2))
    );
    let ids: Vec<String> = read_all(&q)
        .await
        .iter()
        .map(|d| d.message_id().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    // What is left to do, verbatim: the malformed line and the one after it.
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        format!("{}\n{}\n", lines[2], lines[3])
    );
    for f in [&input, &failed] {
        let _ = std::fs::remove_file(f);
    }
    let conn = direct().await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_writes_what_the_broker_refused_to_failed() {
    let q = unique("cli-from-refused");
    let failed = std::env::temp_dir().join(unique("failed"));
    let no_exchange = unique("no-such-exchange");
    let lines = [
        r#"{"id":"ok-1","body":"1"}"#.to_string(),
        format!(r#"{{"id":"gone","exchange":"{no_exchange}","body":"2"}}"#),
        r#"{"id":"nowhere","exchange":"amq.direct","routing_key":"no-binding","body":"3"}"#
            .to_string(),
        r#"{"id":"ok-2","body":"4"}"#.to_string(),
    ];
    let failed_s = failed.display().to_string();
    let out = run(
        &[
            "publish", "--from", "-", "--format", "json", "--queue", &q, "--failed", &failed_s,
            "--json",
        ],
        &[],
        Some(&(lines.join("\n") + "\n")),
    )
    .await;
    assert_status(&out, 1);
    let s = json(&out);
    assert_eq!(s["confirmed"], 2, "{s}");
    assert_eq!(s["failed"]["ExchangeNotFound"], 1, "{s}");
    assert_eq!(s["failed"]["Unroutable"], 1, "{s}");
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        format!("{}\n{}\n", lines[1], lines[2])
    );
    let ids: Vec<String> = read_all(&q)
        .await
        .iter()
        .map(|d| d.message_id().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["ok-1", "ok-2"]);
    let _ = std::fs::remove_file(&failed);
    let conn = direct().await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// Ctrl-C on `publish`: it stops publishing, waits for the confirms in flight and prints the
/// summary; everything it published is confirmed, so it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_publish_prints_the_summary() {
    let q = unique("cli-ctrl-c");
    let child = tokio::process::Command::new(BIN)
        .args([
            "publish", "--queue", &q, "--count", "100000", "--rate", "500",
        ])
        .args(["--size", "16", "--json", "--uri", &broker_uri()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn = direct().await;
    // Interrupt once messages are arriving (the handler is installed before the first one).
    let mut arrived = false;
    for _ in 0..500 {
        if conn.queue_info(&q).await.is_ok_and(|i| i.messages >= 20) {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(arrived, "publishing started");
    send("INT", child.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stops within 30 s")
        .unwrap();
    assert_status(&out, 0);
    let s = json(&out);
    assert_eq!(s["interrupted"], true, "{s}");
    let published = s["published"].as_u64().unwrap();
    assert_eq!(s["confirmed"].as_u64(), Some(published), "{s}");
    assert_eq!(s["not_published"].as_u64(), Some(100_000 - published));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages as u64,
        published
    );
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// `consume --reject-every 4` dead-letters seqs 3, 7, 11, … at once, with a reason, and
/// applies every other seq exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_every_k_dead_letters_exactly_those_seqs() {
    const N: u64 = 30;
    let q = unique("cli-reject");
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let out = run(
        &[
            "publish",
            "--queue",
            &q,
            "--count",
            &N.to_string(),
            "--size",
            "32",
            "--uri",
            &uri,
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 0);
    let out = run(
        &[
            "consume",
            "--queue",
            &q,
            "--store",
            &store,
            "--reject-every",
            "4",
            "--until-idle",
            "2",
            "--batch",
            "10",
            "--json",
            "--uri",
            &uri,
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 0);
    let rejected: Vec<u64> = (0..N).filter(|s| s % 4 == 3).collect();
    let s = json(&out);
    assert_eq!(
        (s["applied"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(N - rejected.len() as u64), Some(rejected.len() as u64)),
        "{s}"
    );

    let dead = read_all(&format!("{q}.dead")).await;
    let mut dead_seqs: Vec<u64> = dead.iter().map(|d| seq_of(d.body())).collect();
    dead_seqs.sort();
    assert_eq!(dead_seqs, rejected);
    for d in &dead {
        let reason = d
            .header(rabbit_once::headers::REASON_HEADER)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        assert!(reason.contains("--reject-every 4"), "{reason:?}");
    }

    let pool = sqlx::SqlitePool::connect(&store).await.unwrap();
    let mut applied: Vec<i64> = sqlx::query_scalar("SELECT seq FROM applied")
        .fetch_all(&pool)
        .await
        .unwrap();
    applied.sort();
    let expected: Vec<i64> = (0..N).filter(|s| s % 4 != 3).map(|s| s as i64).collect();
    assert_eq!(applied, expected, "each other seq applied once");
    pool.close().await;
    let conn = direct().await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}

/// Ctrl-C on `demo` in the middle of its run: it deletes its queues and its temporary database
/// before it exits (status 1: the run is incomplete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_demo_removes_its_queues_and_files() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--count", "1000000", "--cuts", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next_line().await.unwrap().unwrap();
    let queue = first.rsplit("queue ").next().unwrap().trim().to_string();
    assert!(queue.starts_with("rabbit-once-demo"), "{first}");
    let db = std::env::temp_dir().join(format!("{queue}.db"));
    let conn = direct().await;
    // Interrupt once its queue holds messages (it runs, its signal handler is in place).
    let mut running = false;
    for _ in 0..500 {
        if conn.queue_info(&queue).await.is_ok_and(|i| i.messages > 0) {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "the demo started publishing");
    assert!(db.exists());
    send("INT", child.id().unwrap());
    let mut rest = Vec::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        rest.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    let consumer = rabbit_once::ConsumerConfig::new(&queue).retry(rabbit_once::RetryPolicy::new(
        5,
        vec![
            Duration::from_millis(200),
            Duration::from_secs(1),
            Duration::from_secs(5),
        ],
    ));
    for q in consumer.queues() {
        assert!(conn.queue_info(&q).await.is_err(), "{q} was deleted");
    }
    for ext in ["", "-wal", "-shm"] {
        let f = format!("{}{ext}", db.display());
        assert!(!std::path::Path::new(&f).exists(), "{f} was removed");
    }
    conn.close().await;
}

/// Waits (at most 20 s) until `queue` holds at least `n` messages; false if it never does.
async fn wait_messages(conn: &rabbit_once::Connection, queue: &str, n: u32) -> bool {
    for _ in 0..1000 {
        if conn.queue_info(queue).await.is_ok_and(|i| i.messages >= n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A named pipe: a `--from` FILE that the test writes while the command reads it.
struct Fifo {
    path: std::path::PathBuf,
}

impl Fifo {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique("fifo"));
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        Fifo { path }
    }

    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// The writing end (waits for the command to open the reading end).
    async fn writer(&self) -> std::fs::File {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(path))
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `lines`, each with a newline.
fn write_lines(w: &mut std::fs::File, lines: &[String]) {
    use std::io::Write;
    for l in lines {
        writeln!(w, "{l}").unwrap();
    }
    w.flush().unwrap();
}

/// A front for the broker that turns on its clients, as a broker does once the user's
/// password was changed: it forwards connections to the broker until [`betray`](Self::betray)
/// closes them, and from then on sends every connection to a broker that refuses the
/// credentials (403 ACCESS_REFUSED).
struct Turncoat {
    port: u16,
    betrayed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _refuser: rabbit_once_testkit::HostileBroker,
}

impl Turncoat {
    async fn start() -> Self {
        let refuser = rabbit_once_testkit::HostileBroker::start(
            rabbit_once_testkit::Scenario::CloseAfterStartOk(
                403,
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN".into(),
            ),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (betrayed, watch) = tokio::sync::watch::channel(false);
        let refuser_addr = refuser.addr().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                let honest = !*watch.borrow();
                let target = if honest {
                    broker_addr()
                } else {
                    refuser_addr.clone()
                };
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let forward = tokio::io::copy_bidirectional(&mut client, &mut server);
                    if honest {
                        tokio::select! {
                            _ = forward => {}
                            _ = watch.wait_for(|b| *b) => {}
                        }
                    } else {
                        let _ = forward.await;
                    }
                });
            }
        });
        Turncoat {
            port,
            betrayed,
            task,
            _refuser: refuser,
        }
    }

    fn uri(&self) -> String {
        uri_via(self.port)
    }

    /// Closes every connection to the broker; new ones meet the refusing broker.
    fn betray(&self) {
        self.betrayed.send_replace(true);
    }
}

impl Drop for Turncoat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Each variable means one thing: `RABBIT_ONCE_OUTBOX` (the outbox database of `relay` and
/// `outbox`) does not turn `publish` into an outbox publisher, `RABBIT_ONCE_RATE` (no command's
/// name) is nobody's, a switch that needs another flag is simply off when false, and the scoped
/// names are honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_in_the_environment_means_one_thing() {
    let q = unique("cli-env-scope");
    let dir = std::env::temp_dir().join(unique("env-cwd"));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = broker_uri();
    let env = [
        ("RABBIT_ONCE_OUTBOX", "1"),
        ("RABBIT_ONCE_RATE", "0.5"),
        ("RABBIT_ONCE_BATCH", "x"),
        ("RABBIT_ONCE_PUBLISH_RESUME", "false"),
        ("RABBIT_ONCE_PUBLISH_SIZE", "20"),
        ("RABBIT_ONCE_PUBLISH_JSON", "true"),
        ("RABBIT_ONCE_URI", uri.as_str()),
    ];
    let out = tokio::process::Command::new(BIN)
        .args(["publish", "--queue", &q, "--count", "1"])
        .envs(env)
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert_status(&out, 0);
    let s = json(&out);
    assert_eq!(
        s["confirmed"], 1,
        "published directly, not through an outbox: {s}"
    );
    assert!(!dir.join("1").exists(), "no outbox file named 1");
    let got = read_all(&q).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().len(), 20, "RABBIT_ONCE_PUBLISH_SIZE");

    // The scoped outbox name is honoured: the message is committed to that file.
    let db = dir.join("outbox.db");
    let spec = format!("sqlite:{}", db.display());
    let out = tokio::process::Command::new(BIN)
        .args(["publish", "--queue", &q, "--count", "1"])
        .envs(env)
        .env("RABBIT_ONCE_PUBLISH_OUTBOX", &spec)
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert_status(&out, 0);
    assert_eq!(json(&out)["committed"], 1, "{}", stderr(&out));
    assert!(db.exists());
    assert_eq!(read_all(&q).await.len(), 1);

    for (command, name) in [
        ("chaos", "RABBIT_ONCE_CHAOS_OUTBOX"),
        ("chaos", "RABBIT_ONCE_CHAOS_STORE"),
        ("publish", "RABBIT_ONCE_PUBLISH_RATE"),
        ("consume", "RABBIT_ONCE_CONSUME_BATCH"),
        ("relay", "RABBIT_ONCE_OUTBOX"),
    ] {
        let help = run(&[command, "--help"], &[], None).await;
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains(&format!("[env: {name}]")),
            "{command}: {help}"
        );
    }
    // bench's flags are its harness's alone (the global --threads aside).
    let help = run(&["bench", "--help"], &[], None).await;
    let help = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.matches("[env:").count(), 1, "{help}");
    assert!(help.contains("[env: RABBIT_ONCE_THREADS]"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
    let conn = direct().await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// Flags that mean nothing without another are refused without it (exit 2), before anything
/// is declared or published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_need_another_are_refused_without_it() {
    let q = unique("cli-needs");
    for args in [
        &["publish", "--queue", &q, "--failed", "left.txt"][..],
        &["publish", "--queue", &q, "--format", "json"],
        &["publish", "--queue", &q, "--exchange", "amq.direct"],
        &["publish", "--queue", &q, "--routing-key", "k"],
        &["publish", "--quorum", "--from", "-"],
        &["publish", "--queue", &q, "--resume"],
        &["publish", "--queue", &q, "--no-relay"],
    ] {
        let out = run(args, &[], Some("")).await;
        assert_status(&out, 2);
    }
    let out = run(
        &["publish", "--queue", &q],
        &[("RABBIT_ONCE_PUBLISH_NO_RELAY", "on")],
        None,
    )
    .await;
    assert_status(&out, 2);
    let conn = direct().await;
    assert!(conn.queue_info(&q).await.is_err(), "nothing declared");
    conn.close().await;
}

/// Credentials refused on a reconnect end the run with status 3 — numbered `publish`,
/// `publish --from`, `consume` and `relay` alike — as wrong credentials at the start do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refused_on_a_reconnect_exit_3() {
    let q = unique("cli-refused");
    let conn = direct().await;
    // At the start, both ways of publishing.
    let wrong = broker_uri().replace("guest:guest", "guest:Wrong-0042");
    let out = run(&["publish", "--queue", &q, "--uri", &wrong], &[], None).await;
    assert_status(&out, 3);
    let out = run(
        &["publish", "--from", "-", "--queue", &q, "--uri", &wrong],
        &[],
        Some("a line\n"),
    )
    .await;
    assert_status(&out, 3);

    // Numbered, mid-run.
    let turncoat = Turncoat::start().await;
    let uri = turncoat.uri();
    let child = spawn(
        &[
            "publish", "--queue", &q, "--count", "100000", "--rate", "200", "--size", "16",
            "--uri", &uri,
        ],
        &[],
    );
    assert!(wait_messages(&conn, &q, 10).await, "publishing started");
    turncoat.betray();
    let out = finish(child).await;
    assert_status(&out, 3);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    conn.purge_queue(&q).await.unwrap();

    // consume, mid-run.
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let turncoat = Turncoat::start().await;
    let uri = turncoat.uri();
    let child = spawn(
        &["consume", "--queue", &q, "--store", &store, "--uri", &uri],
        &[],
    );
    let mut subscribed = false;
    for _ in 0..1000 {
        if conn.queue_info(&q).await.is_ok_and(|i| i.consumers > 0) {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(subscribed, "the consumer subscribed");
    turncoat.betray();
    let out = finish(child).await;
    assert_status(&out, 3);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    delete_queues(&conn, &q).await;

    // relay, mid-run: it exits rather than hold the outbox with a connection that gave up.
    let outbox = TempDb::new();
    let outbox_spec = format!("sqlite:{}", outbox.path.display());
    let declared = unique("cli-refused-relay");
    let turncoat = Turncoat::start().await;
    let uri = turncoat.uri();
    let child = spawn(
        &[
            "relay",
            "--outbox",
            &outbox_spec,
            "--declare",
            &declared,
            "--uri",
            &uri,
        ],
        &[],
    );
    let mut up = false;
    for _ in 0..1000 {
        if conn.queue_info(&declared).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the relay connected (and declared its queue)");
    turncoat.betray();
    let out = finish(child).await;
    assert_status(&out, 3);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    let _ = conn.delete_queue(&declared).await;
    conn.close().await;
}

/// `publish --from FILE --failed F` whose connection gives up mid-file (credentials refused on
/// a reconnect): exit 3, and F holds every line not confirmed — those in flight, the one in
/// hand and the rest of FILE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_keeps_every_line_left_when_the_connection_gives_up() {
    let q = unique("cli-from-gave-up");
    let failed = std::env::temp_dir().join(unique("left"));
    let lines: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"id":"m-{i}","body":"{i}"}}"#))
        .collect();
    let fifo = Fifo::new();
    let turncoat = Turncoat::start().await;
    let (uri, from, failed_s) = (turncoat.uri(), fifo.path(), failed.display().to_string());
    let child = spawn(
        &[
            "publish", "--from", &from, "--format", "json", "--queue", &q, "--failed", &failed_s,
            "--json", "--uri", &uri,
        ],
        &[],
    );
    let mut w = fifo.writer().await;
    write_lines(&mut w, &lines[..5]);
    let conn = direct().await;
    assert!(wait_messages(&conn, &q, 5).await, "the first lines arrived");
    turncoat.betray();
    write_lines(&mut w, &lines[5..]);
    drop(w);
    let out = finish(child).await;
    assert_status(&out, 3);
    let left = std::fs::read_to_string(&failed).unwrap();
    let left: Vec<&str> = left.lines().collect();
    // A suffix of the file: every line after the ones that arrived, and perhaps some that
    // arrived unconfirmed (their ids make a retry harmless).
    let first = lines.len() - left.len();
    assert!(first <= 5, "{left:?}");
    assert_eq!(
        left,
        lines[first..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let ids: Vec<String> = read_all(&q)
        .await
        .iter()
        .map(|d| d.message_id().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["m-0", "m-1", "m-2", "m-3", "m-4"]);
    let _ = std::fs::remove_file(&failed);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// `--failed` in a directory that cannot be written is a usage error before anything is
/// published; `--from F --failed F` replaces F with what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_is_checked_first_and_may_be_the_input() {
    let q = unique("cli-failed-file");
    let not_a_dir = std::env::temp_dir().join(unique("plain-file"));
    std::fs::write(&not_a_dir, "").unwrap();
    let inside = not_a_dir.join("left.txt").display().to_string();
    let out = run(
        &["publish", "--from", "-", "--queue", &q, "--failed", &inside],
        &[],
        Some("one\n"),
    )
    .await;
    assert_status(&out, 2);
    assert!(stderr(&out).contains("--failed"), "{}", stderr(&out));
    let conn = direct().await;
    assert!(
        conn.queue_info(&q).await.is_err(),
        "nothing declared or published"
    );
    let _ = std::fs::remove_file(&not_a_dir);

    let file = std::env::temp_dir().join(unique("in-and-left"));
    let no_exchange = unique("no-such-exchange");
    let refused = format!(r#"{{"id":"r","exchange":"{no_exchange}","body":"x"}}"#);
    let lines = [
        r#"{"id":"a","body":"1"}"#.to_string(),
        refused.clone(),
        r#"{"id":"b","body":"2"}"#.to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let f = file.display().to_string();
    let out = run(
        &[
            "publish", "--from", &f, "--failed", &f, "--format", "json", "--queue", &q,
        ],
        &[],
        None,
    )
    .await;
    assert_status(&out, 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), refused + "\n");
    assert_eq!(read_all(&q).await.len(), 2);
    let _ = std::fs::remove_file(&file);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// Ctrl-C on `publish --from -` while stdin is idle stops it at once; what it published is
/// confirmed (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_publish_from_an_idle_pipe() {
    use tokio::io::AsyncWriteExt;
    let q = unique("cli-idle-pipe");
    let uri = broker_uri();
    let mut child = spawn(
        &[
            "publish", "--from", "-", "--queue", &q, "--json", "--uri", &uri,
        ],
        &[],
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    stdin.flush().await.unwrap();
    let conn = direct().await;
    assert!(wait_messages(&conn, &q, 2).await);
    send("INT", child.id().unwrap());
    let out = finish(child).await;
    drop(stdin);
    assert_status(&out, 0);
    let s = json(&out);
    assert_eq!(
        (s["interrupted"].as_bool(), s["confirmed"].as_u64()),
        (Some(true), Some(2))
    );
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// While `publish --from` waits for confirms that do not come (the broker unreachable), a
/// signal is heard: the next one ends the wait at once (exit 1) and the unconfirmed lines are
/// in `--failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_wait_for_confirms() {
    let q = unique("cli-close-wait");
    let failed = std::env::temp_dir().join(unique("left"));
    let proxy = FaultProxy::start(broker_addr()).await.unwrap();
    let fifo = Fifo::new();
    let (uri, from, failed_s) = (
        uri_via(proxy.port()),
        fifo.path(),
        failed.display().to_string(),
    );
    let child = spawn(
        &[
            "publish",
            "--from",
            &from,
            "--queue",
            &q,
            "--failed",
            &failed_s,
            "--uri",
            &uri,
            "--close-timeout",
            "600",
        ],
        &[],
    );
    let lines: Vec<String> = (0..4).map(|i| format!("line {i}")).collect();
    let mut w = fifo.writer().await;
    // The first line arrives: the command is publishing (and hears signals).
    write_lines(&mut w, &lines[..1]);
    let conn = direct().await;
    assert!(wait_messages(&conn, &q, 1).await, "the first line arrived");
    proxy.blackhole(true);
    write_lines(&mut w, &lines[1..]);
    drop(w);
    let pid = child.id().unwrap();
    send("TERM", pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send("TERM", pid);
    let out = finish(child).await;
    assert_status(&out, 1);
    // The lines after the first (and the first, if its confirm was caught in the black hole).
    let left = std::fs::read_to_string(&failed).unwrap();
    let left: Vec<&str> = left.lines().collect();
    let first = lines.len() - left.len();
    assert!(first <= 1, "{left:?}");
    assert_eq!(
        left,
        lines[first..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_file(&failed);
    drop(proxy);
    let _ = conn.delete_queue(&q).await;
    conn.close().await;
}

/// Ctrl-C on `publish --outbox`: it stops committing, its relay publishes what was committed,
/// and the summary says so; every committed row is confirmed (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_publish_outbox_relays_what_was_committed() {
    let q = unique("cli-outbox-ctrl-c");
    let db = TempDb::new();
    let spec = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let child = spawn(
        &[
            "publish", "--queue", &q, "--outbox", &spec, "--count", "100000", "--rate", "200",
            "--size", "16", "--json", "--uri", &uri,
        ],
        &[],
    );
    let conn = direct().await;
    assert!(wait_messages(&conn, &q, 10).await, "relaying started");
    send("INT", child.id().unwrap());
    let out = finish(child).await;
    assert_status(&out, 0);
    let s = json(&out);
    assert_eq!(s["interrupted"], true, "{s}");
    let committed = s["committed"].as_u64().unwrap();
    assert_eq!(
        s["not_committed"].as_u64(),
        Some(100_000 - committed),
        "{s}"
    );
    assert_eq!(s["pending"], 0, "{s}");
    assert_eq!(s["relayed"].as_u64(), Some(committed), "{s}");
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages as u64,
        committed
    );
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
