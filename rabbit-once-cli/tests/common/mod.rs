// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

//! What the command-line tests share.

/// The last line of a process's stdout that is a JSON object (the commands' `--json` summary);
/// panics with the process's output when there is none.
pub fn json(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON in\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// Deletes `q` and the retry and dead-letter queues `rabbit-once consume` declares for it (its
/// default policy: 5 attempts, retries after 200 ms, 1 s and 5 s; `consume::retry_policy`).
pub async fn delete_queues(conn: &rabbit_once::Connection, q: &str) {
    let consumer = rabbit_once::ConsumerConfig::new(q).retry(rabbit_once::RetryPolicy::new(
        5,
        vec![
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
        ],
    ));
    for q in consumer.queues() {
        let _ = conn.delete_queue(&q).await;
    }
}

/// `rabbit-once` with `args` and broker `uri`; at most 60 s.
pub async fn run_on(uri: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rabbit-once"))
        .args(args)
        .args(["--uri", uri])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends within 60 s")
        .unwrap()
}

/// The exit status, with the output in the message when it is not `expected`.
pub fn assert_status(out: &std::process::Output, expected: i32) {
    assert_eq!(
        out.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    rabbit_once_testkit::free_port().unwrap()
}

/// GET /metrics on `port`: the response, checked to be a 200.
pub async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// The `rabbit-once` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");

/// `rabbit-once` with `args` and `env`, its stdin, stdout and stderr piped, killed if dropped.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The output of `child` (its stdin closed first), which must end within 60 s.
pub async fn finish(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends within 60 s")
        .unwrap()
}

/// Sends `signal` (`INT`, `TERM`, ...) to the process `pid`.
pub fn send(signal: &str, pid: u32) {
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}
