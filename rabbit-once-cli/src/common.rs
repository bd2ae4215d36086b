//! Pieces the commands share: connection flags, sequence-numbered bodies, progress bars, the
//! task that awaits confirmations.

use indicatif::{ProgressBar, ProgressStyle};
use rabbit_once::{
    Backoff, Confirmation, Confirmed, Connection, ConnectionConfig, Event, PublishError,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The local broker as guest, vhost `/`.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Flags every command that talks to a broker takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Broker URI; repeat (or separate with commas) for several endpoints, tried in turn.
    #[arg(long = "uri", default_value = DEFAULT_URI, value_delimiter = ',')]
    pub uris: Vec<String>,
    /// Heartbeat interval in seconds (0 disables).
    #[arg(long, default_value_t = 5)]
    pub heartbeat: u64,
    /// Seconds to wait for the first session with the broker before giving up (exit 3); 0 waits
    /// for ever, the default of the services `consume` and `relay` (60 for the others). Wrong
    /// credentials or an unknown vhost end the wait at once.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub connect_wait: u64,
}

impl Conn {
    /// Connection settings from these flags; `name` is shown in the broker's connection list.
    /// Reconnect backoff from 50 ms to 2 s, jitter 0.5.
    pub fn config(&self, name: &str) -> anyhow::Result<ConnectionConfig> {
        Ok(ConnectionConfig::from_uris(&self.uris)?
            .name(name)
            .heartbeat(Duration::from_secs(self.heartbeat))
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(2),
                0.5,
            )))
    }
}

/// The Prometheus endpoint of a long-running command (`consume`, `publish`, `relay`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Metrics {
    /// Serve Prometheus metrics (docs/metrics.md) over HTTP on this address, e.g.
    /// 127.0.0.1:9464 (any path answers with the metrics). Off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: keep serving this many seconds after the work is done, so a
    /// scraper sees the final counters (Ctrl-C or SIGTERM ends the wait).
    #[arg(long, value_name = "SECS", requires = "metrics_addr")]
    pub metrics_linger: Option<u64>,
}

impl Metrics {
    /// Installs the Prometheus recorder and starts its HTTP listener, if `--metrics-addr` was
    /// given. Call it first thing: connections, publishers and consumers resolve their metric
    /// handles when they start. A port that cannot be bound is a usage error (exit 2).
    pub fn start(&self) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_addr else {
            return Ok(());
        };
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        const SECONDS: &[f64] = &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        let mut builder = PrometheusBuilder::new().with_http_listener(addr);
        for name in rabbit_once::metrics::SECONDS_HISTOGRAMS {
            builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), SECONDS)?;
        }
        builder = builder.set_buckets_for_metric(
            Matcher::Full(rabbit_once::metrics::CONSUMER_BATCH_SIZE.into()),
            SIZES,
        )?;
        builder.install().map_err(|e| {
            crate::exit::usage(format!(
                "cannot serve metrics on {addr} (--metrics-addr): {e}"
            ))
        })?;
        // Units and `# HELP` lines for every family.
        rabbit_once::metrics::describe();
        Ok(())
    }

    /// Keeps the endpoint up for `--metrics-linger` seconds (if given), or until Ctrl-C or
    /// SIGTERM.
    pub async fn linger(&self) {
        if let (Some(_), Some(secs)) = (self.metrics_addr, self.metrics_linger) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = stop_signal() => {}
            }
        }
    }
}

/// Starts a connection with `config` and waits for its first session, at most `--connect-wait`
/// seconds. From the first failed attempt on it says on stderr what it is waiting for (the
/// endpoint, never a password). Exit status 3 for what ends the wait.
pub async fn connect(conn: &Conn, config: ConnectionConfig) -> anyhow::Result<Connection> {
    let connection = Connection::start(config)?;
    let mut events = connection.events();
    let wait = Duration::from_secs(conn.connect_wait);
    let deadline = (conn.connect_wait > 0).then(|| tokio::time::Instant::now() + wait);
    let waiter = connection.clone();
    let mut first = std::pin::pin!(async move { waiter.wait_connected().await });
    let mut last_failure: Option<String> = None;
    loop {
        tokio::select! {
            up = &mut first => {
                return match up {
                    Ok(_) => Ok(connection),
                    Err(e) => {
                        connection.close().await;
                        Err(e.into())
                    }
                };
            }
            Some(event) = events.recv() => {
                if let Event::ConnectFailed { endpoint, reason, .. } = event {
                    // A fatal reason (credentials, vhost) ends the wait: `first` reports it.
                    if last_failure.is_none() && reason.is_recoverable() {
                        let until = match deadline {
                            Some(_) => format!("for up to {}s (--connect-wait)", wait.as_secs()),
                            None => "until it answers".to_string(),
                        };
                        eprintln!("cannot reach {endpoint} yet: {reason}; retrying {until}");
                    }
                    last_failure = Some(format!("{endpoint}: {reason}"));
                }
            }
            _ = sleep_until(deadline) => {
                connection.close().await;
                return Err(crate::exit::connect(format!(
                    "no broker reachable within {}s (--connect-wait); last attempt: {}",
                    wait.as_secs(),
                    last_failure.as_deref().unwrap_or("still connecting")
                )));
            }
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: the one way every command hears that it is asked to
/// stop. The handlers are installed by the first call (until then either signal ends the
/// process at once, as it does before a command has anything in hand); from then on every
/// signal is counted, and each resolves one wait: the first wait that is (or next is) polled.
/// A signal that comes while no wait is pending is kept for the next one — never missed, as it
/// was when each wait listened on its own from its first poll.
pub fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let signals = Signals::installed();
    async move { signals.take().await }
}

/// Waits for `closing` (a close that settles `what`, e.g. "the batch in hand"); a Ctrl-C or
/// SIGTERM gives up waiting (`None`). When the command's run ended on a signal (`signalled`)
/// the next one gives up; when it ended by itself (`--until-idle`, `--until-empty`, ...) the
/// first one only says what it waits for, and the one after gives up.
pub async fn close_or_stop<F: std::future::Future>(
    closing: F,
    signalled: bool,
    what: &str,
) -> Option<F::Output> {
    let signals = Signals::installed();
    close_or_stop_on(&signals, closing, signalled, what).await
}

/// [`close_or_stop`] with the signals `signals`.
async fn close_or_stop_on<F: std::future::Future>(
    signals: &Signals,
    closing: F,
    signalled: bool,
    what: &str,
) -> Option<F::Output> {
    let mut closing = std::pin::pin!(closing);
    if !signalled {
        tokio::select! {
            out = &mut closing => return Some(out),
            _ = signals.take() => eprintln!(
                "interrupted: still waiting for {what} to be settled (Ctrl-C again to stop at once)"
            ),
        }
    }
    tokio::select! {
        out = &mut closing => Some(out),
        _ = signals.take() => None,
    }
}

/// The signals heard and the waits they ended: one listener task for the whole process.
struct Signals {
    /// Signals received since the handlers were installed.
    heard: AtomicU64,
    /// Signals that ended a wait (at most `heard`).
    taken: AtomicU64,
    /// Woken at each signal.
    notify: tokio::sync::Notify,
}

impl Signals {
    /// No signal heard yet, none taken; [`Signals::heard`] feeds it.
    fn new() -> Signals {
        Signals {
            heard: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Counts one signal, and wakes the waits.
    fn heard(&self) {
        self.heard.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// The process's signals; the first call installs the handlers (in the running tokio
    /// runtime) and spawns the task that counts them.
    fn installed() -> Arc<Signals> {
        static SIGNALS: OnceLock<Arc<Signals>> = OnceLock::new();
        SIGNALS
            .get_or_init(|| {
                use tokio::signal::unix::{SignalKind, signal};
                let signals = Arc::new(Signals::new());
                // Installed here, synchronously: a signal from now on is counted. A handler
                // that cannot be installed is a signal never heard.
                let mut term = signal(SignalKind::terminate()).ok();
                let mut int = signal(SignalKind::interrupt()).ok();
                let counter = signals.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            Some(()) = recv(&mut term) => {}
                            Some(()) = recv(&mut int) => {}
                            else => return,
                        }
                        counter.heard();
                    }
                });
                signals
            })
            .clone()
    }

    /// Waits for a signal no other wait has taken, and takes it.
    async fn take(&self) {
        loop {
            // Registered before the counts are read: a signal in between still wakes it.
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let taken = self.taken.load(Ordering::Acquire);
            if self.heard.load(Ordering::Acquire) > taken {
                if self
                    .taken
                    .compare_exchange(taken, taken + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            notified.await;
        }
    }
}

/// The next signal of `s`; `None` once it can give none (or was never installed).
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => None,
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A body that starts with the JSON `{"seq":i}`, padded with spaces to `size` bytes.
pub fn seq_body(seq: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{{\"seq\":{seq}}}").into_bytes();
    if b.len() < size {
        b.resize(size, b' ');
    }
    b
}

/// The `seq` of a body made by [`seq_body`], if it is one.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} {{msg}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// A task that awaits every [`Confirmation`] sent to it, in the order sent, and folds each
/// outcome into `state` with `each` (`T` travels along, e.g. the message's sequence number).
/// It returns `state` once every sender is dropped and the last confirmation has settled, so
/// publishing never waits for a confirm while the confirms are counted as they come.
pub fn await_confirmations<T, S, F>(
    mut state: S,
    mut each: F,
) -> (mpsc::UnboundedSender<(T, Confirmation)>, JoinHandle<S>)
where
    T: Send + 'static,
    S: Send + 'static,
    F: FnMut(&mut S, T, Result<Confirmed, PublishError>) + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(T, Confirmation)>();
    let task = tokio::spawn(async move {
        while let Some((tag, c)) = rx.recv().await {
            let outcome = c.await;
            each(&mut state, tag, outcome);
        }
        state
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_bodies_round_trip() {
        let b = seq_body(42, 64);
        assert_eq!(b.len(), 64);
        assert!(b.starts_with(br#"{"seq":42}"#));
        assert_eq!(seq_of(&b), Some(42));
        assert_eq!(seq_of(b"nope"), None);
        assert_eq!(seq_body(7, 0), br#"{"seq":7}"#.to_vec());
    }

    /// A signal that comes while nothing waits for one ends the next wait; each signal ends one
    /// wait. (No real signal: the counting is fed by hand.)
    #[tokio::test]
    async fn a_signal_between_two_waits_is_kept_for_the_second() {
        let signals = Signals::new();
        signals.heard();
        assert_eq!(
            signals.heard.load(Ordering::Acquire),
            1,
            "heard, with no wait"
        );
        tokio::time::timeout(Duration::from_secs(10), signals.take())
            .await
            .expect("the kept signal ends the next wait");
        assert_eq!(signals.taken.load(Ordering::Acquire), 1);
        let mut next = std::pin::pin!(signals.take());
        assert!(
            poll_once(next.as_mut()).await.is_pending(),
            "a taken signal ends no other wait"
        );
        signals.heard();
        assert!(poll_once(next.as_mut()).await.is_ready(), "a new one does");
        assert_eq!(signals.taken.load(Ordering::Acquire), 2);
    }

    /// After a run that ended by itself, the first signal during the close keeps waiting and
    /// the second gives up; after a run that ended on a signal, the next one gives up.
    #[tokio::test]
    async fn the_first_signal_during_a_close_after_a_normal_finish_keeps_waiting() {
        let signals = Signals::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut closing = std::pin::pin!(close_or_stop_on(&signals, rx, false, "the test"));
        assert!(poll_once(closing.as_mut()).await.is_pending());
        signals.heard();
        assert!(
            poll_once(closing.as_mut()).await.is_pending(),
            "the first signal keeps waiting"
        );
        assert_eq!(signals.taken.load(Ordering::Acquire), 1);
        tx.send(7).unwrap();
        assert!(matches!(
            poll_once(closing.as_mut()).await,
            std::task::Poll::Ready(Some(Ok(7)))
        ));

        let (_tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut closing = std::pin::pin!(close_or_stop_on(&signals, rx, false, "the test"));
        assert!(poll_once(closing.as_mut()).await.is_pending());
        signals.heard();
        assert!(poll_once(closing.as_mut()).await.is_pending());
        signals.heard();
        assert!(
            matches!(
                poll_once(closing.as_mut()).await,
                std::task::Poll::Ready(None)
            ),
            "the second gives up"
        );

        let (_tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut closing = std::pin::pin!(close_or_stop_on(&signals, rx, true, "the test"));
        assert!(poll_once(closing.as_mut()).await.is_pending());
        signals.heard();
        assert!(
            matches!(
                poll_once(closing.as_mut()).await,
                std::task::Poll::Ready(None)
            ),
            "after a signalled run the next one gives up"
        );
        assert_eq!(signals.taken.load(Ordering::Acquire), 4);
    }

    /// Polls `f` once.
    async fn poll_once<F: std::future::Future + Unpin>(mut f: F) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx))).await
    }
}
