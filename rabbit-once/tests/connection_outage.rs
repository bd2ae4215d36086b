//! A connection that reaches no broker is not silent: it warns at the first failed attempt,
//! naming the endpoint and never the password, then at most once per interval, and logs when
//! it is connected again. Logs are captured with a `fmt` subscriber on the test's own thread
//! (a current-thread runtime runs every task there).
//!
//! Needs the shared broker on 127.0.0.1:5672 (`RONCE_AMQP_URI` overrides).

mod support;

use rabbit_once::{Backoff, Connection, ConnectionConfig, Event};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(30);

/// Everything logged on the test's thread, as the `fmt` subscriber writes it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines at `level` (`WARN`, `INFO`, …) that contain `what`.
    fn lines(&self, level: &str, what: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(&format!(" {level} ")) && l.contains(what))
            .map(str::to_string)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` on a current-thread runtime with every log of this thread (so of every task the
/// runtime runs) captured, at every level.
fn with_captured_logs<F: Future<Output = ()>>(f: impl FnOnce() -> F) -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    });
    captured
}

/// Fast, even retries: many attempts in little time.
fn fast(uri: &str) -> ConnectionConfig {
    ConnectionConfig::new(uri)
        .unwrap()
        .name(unique("nsf"))
        .connect_timeout(Duration::from_secs(2))
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(50),
            0.0,
        ))
}

#[test]
fn an_unreachable_broker_is_warned_about_with_its_endpoint_never_its_password_and_rarely() {
    const PASSWORD: &str = "pw-9f3e71c2";
    let port = closed_port();
    let logs = with_captured_logs(|| async move {
        let uri = format!("amqp://app:{PASSWORD}@127.0.0.1:{port}/orders");
        let conn = Connection::start(fast(&uri)).unwrap();
        let mut events = conn.events();
        // 40 failed attempts, 50 ms apart: about 2 s, well inside one 30 s warning interval.
        let mut failed = 0;
        while failed < 40 {
            match tokio::time::timeout(GUARD, events.recv()).await {
                Ok(Some(Event::ConnectFailed { .. })) => failed += 1,
                Ok(Some(_)) => {}
                other => panic!("expected 40 failed attempts, got {failed} then {other:?}"),
            }
        }
        assert!(matches!(
            conn.state(),
            rabbit_once::ConnectionState::Connecting { attempt, .. } if attempt >= 40
        ));
        conn.close().await;
    });
    let warns = logs.lines("WARN", "connect to the broker");
    assert_eq!(
        warns.len(),
        1,
        "one warning for 40 attempts in one interval: {warns:#?}"
    );
    let endpoint = format!("amqp://app@127.0.0.1:{port}/orders");
    assert!(
        warns[0].contains(&endpoint) && warns[0].contains("attempts=1"),
        "the first attempt's warning names the endpoint: {}",
        warns[0]
    );
    assert!(warns[0].contains("error="), "and the error: {}", warns[0]);
    let text = logs.text();
    assert!(text.lines().count() > 40, "debug logs captured too: {text}");
    assert!(!text.contains(PASSWORD), "the password was logged: {text}");
}

#[test]
fn a_connection_that_reaches_the_broker_again_says_so() {
    let logs = with_captured_logs(|| async {
        let proxy = FaultProxy::start(broker_addr()).await.unwrap();
        proxy.refuse_for(Duration::from_secs(600));
        let conn = Connection::start(fast(&uri_via(proxy.port()))).unwrap();
        let mut events = conn.events();
        let mut failed = 0;
        while failed < 5 {
            if let Ok(Some(Event::ConnectFailed { .. })) =
                tokio::time::timeout(GUARD, events.recv()).await
            {
                failed += 1;
            }
        }
        proxy.refuse_for(Duration::ZERO);
        tokio::time::timeout(GUARD, conn.wait_connected())
            .await
            .expect("connects once the proxy forwards")
            .unwrap();
        conn.close().await;
    });
    assert_eq!(
        logs.lines("WARN", "cannot connect to the broker").len(),
        1,
        "{}",
        logs.text()
    );
    let back = logs.lines("INFO", "connected again");
    assert_eq!(back.len(), 1, "{}", logs.text());
    assert!(back[0].contains("failed_attempts="), "{}", back[0]);
}
