//! A TCP fault proxy: forwards to a target and, on command, cuts every connection at once
//! (abrupt, both directions), black-holes traffic without closing (only heartbeats notice),
//! adds latency, or refuses new connections for a while.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
struct Ctl {
    target: String,
    /// Bumped by `cut_all`: every connection older than the new value closes.
    cut: watch::Sender<u64>,
    blackhole: watch::Sender<bool>,
    latency_us: AtomicU64,
    refuse_until: std::sync::Mutex<Option<Instant>>,
    accepted: AtomicU64,
    live: AtomicUsize,
    cuts: AtomicU64,
    refused: AtomicU64,
    stopped: AtomicBool,
}

/// A running proxy. Dropping it stops accepting and cuts every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target` (`host:port`).
    pub async fn start(target: impl Into<String>) -> io::Result<Self> {
        Self::start_on("127.0.0.1:0", target).await
    }

    /// Listens on `listen` (e.g. a fixed port that must survive restarts of the proxy).
    pub async fn start_on(listen: &str, target: impl Into<String>) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Ctl {
            target: target.into(),
            cut: watch::channel(0).0,
            blackhole: watch::channel(false).0,
            latency_us: AtomicU64::new(0),
            refuse_until: std::sync::Mutex::new(None),
            accepted: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            cuts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, ctl.clone()));
        Ok(FaultProxy { addr, ctl, accept })
    }

    /// The address it listens on (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Resets every open connection now (RST to both sides).
    pub fn cut_all(&self) {
        self.ctl.cuts.fetch_add(1, Ordering::Relaxed);
        self.ctl.cut.send_modify(|g| *g += 1);
    }

    /// Stops (or resumes) forwarding in both directions without closing anything.
    pub fn blackhole(&self, on: bool) {
        self.ctl.blackhole.send_replace(on);
    }

    /// Delay added before forwarding each chunk, in both directions.
    pub fn set_latency(&self, d: Duration) {
        self.ctl
            .latency_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// New connections are reset at once for `d`.
    pub fn refuse_for(&self, d: Duration) {
        *self.ctl.refuse_until.lock().expect("lock") = Some(Instant::now() + d);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::Relaxed)
    }

    /// Connections forwarding now.
    /// Connections forwarding right now.
    pub fn live(&self) -> usize {
        self.ctl.live.load(Ordering::Relaxed)
    }

    /// How many times [`cut_all`](Self::cut_all) was called so far.
    pub fn cuts(&self) -> u64 {
        self.ctl.cuts.load(Ordering::Relaxed)
    }

    /// Connections refused so far (while refusing, or after the proxy stopped).
    pub fn refused(&self) -> u64 {
        self.ctl.refused.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` connections are forwarding (or `timeout` passes).
    pub async fn wait_live(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.live() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.ctl.stopped.store(true, Ordering::Relaxed);
        self.accept.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, ctl: Arc<Ctl>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        ctl.accepted.fetch_add(1, Ordering::Relaxed);
        let refusing = ctl
            .refuse_until
            .lock()
            .expect("lock")
            .is_some_and(|t| Instant::now() < t);
        if refusing || ctl.stopped.load(Ordering::Relaxed) {
            ctl.refused.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            continue;
        }
        tokio::spawn(forward(client, ctl.clone()));
    }
}

/// SO_LINGER 0: closing sends RST instead of FIN, like a crashed peer or a dropped route.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn forward(client: TcpStream, ctl: Arc<Ctl>) {
    let generation = *ctl.cut.borrow();
    let Ok(server) = TcpStream::connect(&ctl.target).await else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    ctl.live.fetch_add(1, Ordering::Relaxed);
    let mut cut = ctl.cut.subscribe();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, ctl.clone());
    let down = pump(sr, cw, ctl.clone());
    tokio::select! {
        _ = cut.wait_for(|g| *g > generation) => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    ctl.live.fetch_sub(1, Ordering::Relaxed);
    // Halves dropped here; the linger setting on both sockets makes the close an RST.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Ctl>,
) {
    reset_half(&from, &to);
    let mut hole = ctl.blackhole.subscribe();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let _ = hole.wait_for(|on| !*on).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let lat = ctl.latency_us.load(Ordering::Relaxed);
        if lat > 0 {
            tokio::time::sleep(Duration::from_micros(lat)).await;
        }
        // Data read just as the hole opens is held, not delivered, until it closes again.
        let _ = hole.wait_for(|on| !*on).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn reset_half(from: &tokio::net::tcp::OwnedReadHalf, to: &tokio::net::tcp::OwnedWriteHalf) {
    let _ = socket2::SockRef::from(from.as_ref()).set_linger(Some(Duration::ZERO));
    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
}
