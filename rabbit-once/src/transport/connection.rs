//! One AMQP connection: the handshake, then a reader task and a writer task around the socket.
//!
//! Channels append encoded frames to a shared outbox under a short lock; the writer swaps the
//! outbox out and writes it with one syscall, so frames from many publishes share one write.
//! The reader splits frames off a large read buffer (no copies), assembles content and
//! dispatches events to each channel's queue. When either task fails, the connection is dead:
//! every channel receives `Closed` with the reason, the outbox refuses new frames, and nothing
//! in this module ever reconnects (that is the supervisor's job).

use super::channel::{Channel, ChannelEvent, RawDelivery, Returned};
use super::frame::{
    self, ContentHeader, FRAME_MIN_SIZE, PROTOCOL_HEADER, RawFrame, decode_content_header,
    parse_frame, put_heartbeat, put_method,
};
use super::method::{Close, Method};
use super::table::FieldTable;
use crate::error::Error;
use crate::uri::Endpoint;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};

/// The outbox is "full" past this many bytes: writers should await [`Connection::writable`].
const HIGH_WATER: usize = 4 << 20;
const READ_CHUNK: usize = 128 << 10;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// What the connection asks for; the broker may lower frame_max, channel_max and heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    pub name: String,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Deliveries announcing a larger body are handed up malformed, without the body.
    pub max_body_size: u64,
}

/// A cheap handle to a live (or dead) connection.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .field("closed", &self.is_closed())
            .finish()
    }
}

struct Outbox {
    buf: BytesMut,
    /// No frame is accepted any more.
    closed: bool,
    /// The writer stops after writing what is in `buf` (we answered `connection.close`).
    stop_after_flush: bool,
    /// Channels the broker closed (we queued their close-ok): nothing more may be written on
    /// them, or the broker would close the whole connection (504 CHANNEL_ERROR).
    closed_channels: Vec<bool>,
}

struct Table {
    slots: Vec<Option<mpsc::UnboundedSender<ChannelEvent>>>,
    /// Set by the reader as it exits: no channel can be opened on this connection any more.
    closed: bool,
    /// Where to look for the next free id (ids are not reused at once).
    next: u16,
}

pub(crate) struct Shared {
    out: Mutex<Outbox>,
    wake_writer: Notify,
    drained: Notify,
    table: Mutex<Table>,
    pub(crate) frame_max: u32,
    channel_max: u16,
    max_body_size: u64,
    heartbeat: Duration,
    endpoint: String,
    /// The first reason this connection died for.
    reason: Mutex<Option<Error>>,
    /// `true` once dead; both tasks stop on it.
    stop: watch::Sender<bool>,
    blocked: watch::Sender<Option<String>>,
    /// Bumped by the reader on every read, by the writer on every write: the heartbeat task
    /// watches both.
    read_activity: AtomicU64,
    write_activity: AtomicU64,
    server_properties: FieldTable,
}

impl Shared {
    /// Records why the connection died (the first reason wins) and stops both tasks.
    fn fail(&self, e: Error) {
        self.record(e);
        self.out.lock().expect("outbox lock").closed = true;
        self.stop.send_replace(true);
        self.drained.notify_waiters();
    }

    fn record(&self, e: Error) {
        let mut r = self.reason.lock().expect("reason lock");
        if r.is_none() {
            *r = Some(e);
        }
    }

    fn reason(&self) -> Error {
        self.reason
            .lock()
            .expect("reason lock")
            .clone()
            .unwrap_or_else(|| Error::ConnectionLost("connection closed".into()))
    }

    /// Appends frames to the outbox; `Err` once the connection is dead.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> Result<(R, bool), Error> {
        let mut out = self.out.lock().expect("outbox lock");
        if out.closed {
            drop(out);
            return Err(self.reason());
        }
        let r = f(&mut out.buf);
        let full = out.buf.len() >= HIGH_WATER;
        drop(out);
        self.wake_writer.notify_one();
        Ok((r, full))
    }

    /// Appends frames of channel `id`; refused once the broker closed that channel.
    pub(crate) fn write_channel<R>(
        &self,
        id: u16,
        f: impl FnOnce(&mut BytesMut) -> R,
    ) -> Result<(R, bool), Error> {
        let mut out = self.out.lock().expect("outbox lock");
        if out.closed {
            drop(out);
            return Err(self.reason());
        }
        if out
            .closed_channels
            .get(id as usize)
            .copied()
            .unwrap_or(false)
        {
            return Err(Error::ChannelClosed {
                code: 0,
                text: "the broker closed this channel".into(),
            });
        }
        let r = f(&mut out.buf);
        let full = out.buf.len() >= HIGH_WATER;
        drop(out);
        self.wake_writer.notify_one();
        Ok((r, full))
    }

    fn mark_channel(&self, id: u16, closed: bool) {
        let mut out = self.out.lock().expect("outbox lock");
        mark(&mut out, id, closed);
    }

    /// Queues `channel.close-ok` and, under the same lock, refuses further frames on `id`.
    fn answer_channel_close(&self, id: u16) {
        let mut out = self.out.lock().expect("outbox lock");
        if !out.closed {
            put_method(&mut out.buf, id, &Method::ChannelCloseOk);
        }
        mark(&mut out, id, true);
        drop(out);
        self.wake_writer.notify_one();
    }

    /// Removes a channel's slot. Called by the reader (after close / close-ok) and nobody else.
    fn release(&self, id: u16) -> Option<mpsc::UnboundedSender<ChannelEvent>> {
        let mut t = self.table.lock().expect("table lock");
        t.slots.get_mut(id as usize).and_then(Option::take)
    }
}

fn mark(out: &mut Outbox, id: u16, closed: bool) {
    let i = id as usize;
    if out.closed_channels.len() <= i {
        out.closed_channels.resize(i + 1, false);
    }
    out.closed_channels[i] = closed;
}

impl Connection {
    /// Connects, authenticates and opens the vhost, then starts the I/O tasks.
    pub(crate) async fn open(endpoint: &Endpoint, params: &ConnectParams) -> Result<Self, Error> {
        let timeout = endpoint.connect_timeout.unwrap_or(params.connect_timeout);
        match tokio::time::timeout(timeout, Self::open_inner(endpoint, params)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Connect {
                endpoint: endpoint.to_string(),
                reason: format!("no answer within {timeout:?} (TCP connect and AMQP handshake)"),
            }),
        }
    }

    async fn open_inner(endpoint: &Endpoint, params: &ConnectParams) -> Result<Self, Error> {
        let connect_err = |reason: String| Error::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| connect_err(e.to_string()))?;
        if endpoint.tls {
            #[cfg(feature = "tls")]
            {
                let mut tls = super::tls::wrap(tcp, endpoint).await?;
                let hs = handshake(&mut tls, endpoint, params).await?;
                let (r, w) = tokio::io::split(tls);
                return Ok(Self::start(endpoint, params, hs, Box::new(r), Box::new(w)));
            }
            #[cfg(not(feature = "tls"))]
            return Err(connect_err("amqps needs the \"tls\" feature".into()));
        }
        let mut tcp = tcp;
        let hs = handshake(&mut tcp, endpoint, params).await?;
        let (r, w) = tcp.into_split();
        Ok(Self::start(endpoint, params, hs, Box::new(r), Box::new(w)))
    }

    fn start(
        endpoint: &Endpoint,
        params: &ConnectParams,
        hs: Handshake,
        r: ReadHalf,
        w: WriteHalf,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        let (blocked, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            out: Mutex::new(Outbox {
                buf: BytesMut::with_capacity(64 << 10),
                closed: false,
                stop_after_flush: false,
                closed_channels: Vec::new(),
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            table: Mutex::new(Table {
                slots: Vec::new(),
                closed: false,
                next: 1,
            }),
            frame_max: hs.frame_max,
            channel_max: hs.channel_max,
            max_body_size: params.max_body_size,
            heartbeat: hs.heartbeat,
            endpoint: endpoint.to_string(),
            reason: Mutex::new(None),
            stop,
            blocked,
            read_activity: AtomicU64::new(0),
            write_activity: AtomicU64::new(0),
            server_properties: hs.server_properties,
        });
        tokio::spawn(reader(shared.clone(), r, hs.leftover));
        tokio::spawn(writer(shared.clone(), w));
        if !hs.heartbeat.is_zero() {
            tokio::spawn(heartbeats(shared.clone()));
        }
        tracing::debug!(endpoint = %shared.endpoint, frame_max = hs.frame_max, heartbeat = ?hs.heartbeat, "connected");
        Connection { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Opens a channel on this connection.
    pub(crate) async fn open_channel(&self) -> Result<Channel, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut t = self.shared.table.lock().expect("table lock");
            if t.closed {
                drop(t);
                return Err(self.shared.reason());
            }
            let max = self.shared.channel_max.max(1);
            let mut id = None;
            for i in 0..max {
                let cand = ((t.next as u32 - 1 + i as u32) % max as u32 + 1) as u16;
                if t.slots.get(cand as usize).is_none_or(Option::is_none) {
                    id = Some(cand);
                    break;
                }
            }
            let id = id.ok_or_else(|| {
                Error::Config(format!("all {max} channels of the connection are in use"))
            })?;
            if t.slots.len() <= id as usize {
                t.slots.resize_with(id as usize + 1, || None);
            }
            t.slots[id as usize] = Some(tx);
            t.next = if id == max { 1 } else { id + 1 };
            self.shared.mark_channel(id, false);
            id
        };
        let mut ch = Channel::new(id, self.clone(), rx);
        match ch.call(Method::ChannelOpen).await? {
            Method::ChannelOpenOk => Ok(ch),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    /// Writes `channel.close` for a channel dropped without closing, unless the broker closed it
    /// already (then its slot is gone and a second close would be a protocol error).
    pub(crate) fn abandon_channel(&self, id: u16) {
        let t = self.shared.table.lock().expect("table lock");
        if t.slots.get(id as usize).is_some_and(Option::is_some) {
            let _ = self
                .shared
                .write(|out| put_method(out, id, &Method::ChannelClose(Close::normal())));
        }
    }

    /// Closes gracefully (`connection.close`, wait for close-ok), or gives up after `timeout`.
    pub(crate) async fn close(&self, timeout: Duration) {
        let mut stop = self.shared.stop.subscribe();
        if self
            .shared
            .write(|out| put_method(out, 0, &Method::ConnectionClose(Close::normal())))
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, stopped(&mut stop)).await;
        }
        self.shared.fail(Error::Closed);
    }

    /// Kills the connection at once without a goodbye (used when a session is abandoned).
    pub(crate) fn kill(&self, reason: Error) {
        self.shared.fail(reason);
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Resolves with the reason once the connection is dead.
    pub(crate) async fn closed(&self) -> Error {
        let mut stop = self.shared.stop.subscribe();
        let _ = stopped(&mut stop).await;
        self.shared.reason()
    }

    /// `Some(reason)` while the broker has blocked publishing (`connection.blocked`).
    pub(crate) fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    pub(crate) fn frame_max(&self) -> u32 {
        self.shared.frame_max
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        self.shared.heartbeat
    }

    pub(crate) fn server_properties(&self) -> &FieldTable {
        &self.shared.server_properties
    }

    /// Waits until the outbox is below its high-water mark (or the connection is dead).
    pub(crate) async fn writable(&self) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let out = self.shared.out.lock().expect("outbox lock");
                if out.closed || out.buf.len() < HIGH_WATER {
                    return;
                }
            }
            drained.await;
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Method) -> Error {
    Error::Protocol(super::wire::ProtocolError::new(format!(
        "expected {wanted}, got {:?}",
        got.ids()
    )))
}

struct Handshake {
    frame_max: u32,
    channel_max: u16,
    heartbeat: Duration,
    server_properties: FieldTable,
    leftover: BytesMut,
}

async fn read_method<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    endpoint: &Endpoint,
    stage: &str,
) -> Result<Option<Method>, Error> {
    loop {
        if buf.starts_with(b"AMQP") && buf.len() >= 8 {
            return Err(Error::Connect {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "the server does not speak AMQP 0-9-1 (it offered protocol {:?})",
                    &buf[4..8]
                ),
            });
        }
        if let Some(f) = parse_frame(buf, 131_072)? {
            if f.kind == frame::METHOD && f.channel == 0 {
                return Ok(Some(Method::decode(&f.payload)?));
            }
            continue;
        }
        buf.reserve(4096);
        match s.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Connect {
                    endpoint: endpoint.to_string(),
                    reason: format!("{e} ({stage})"),
                });
            }
        }
    }
}

fn client_properties(name: &str) -> FieldTable {
    let caps = FieldTable::new()
        .with("publisher_confirms", true)
        .with("exchange_exchange_bindings", true)
        .with("basic.nack", true)
        .with("consumer_cancel_notify", true)
        .with("connection.blocked", true)
        .with("authentication_failure_close", true)
        .with("per_consumer_qos", true);
    FieldTable::new()
        .with("product", "rabbit-once")
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("platform", "Rust")
        .with("connection_name", name)
        .with("capabilities", caps)
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    endpoint: &Endpoint,
    params: &ConnectParams,
) -> Result<Handshake, Error> {
    let io_err = |e: std::io::Error| Error::Connect {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    let closed_early = |stage: &str| Error::Connect {
        endpoint: endpoint.to_string(),
        reason: format!("the server closed the connection {stage}"),
    };
    s.write_all(PROTOCOL_HEADER).await.map_err(io_err)?;
    let mut buf = BytesMut::with_capacity(8192);
    let start = read_method(s, &mut buf, endpoint, "waiting for connection.start")
        .await?
        .ok_or_else(|| closed_early("before connection.start"))?;
    let (server_properties, mechanisms) = match start {
        Method::ConnectionStart {
            server_properties,
            mechanisms,
            ..
        } => (server_properties, mechanisms),
        other => return Err(unexpected("connection.start", &other)),
    };
    if !mechanisms.split_whitespace().any(|m| m == "PLAIN") {
        return Err(Error::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("the broker offers no PLAIN authentication (it offers {mechanisms:?})"),
        });
    }
    let mut response = Vec::with_capacity(2 + endpoint.user.len() + endpoint.password.len());
    response.push(0);
    response.extend_from_slice(endpoint.user.as_bytes());
    response.push(0);
    response.extend_from_slice(endpoint.password.as_bytes());
    let mut out = BytesMut::new();
    put_method(
        &mut out,
        0,
        &Method::ConnectionStartOk {
            client_properties: client_properties(&params.name),
            mechanism: "PLAIN".into(),
            response,
            locale: "en_US".into(),
        },
    );
    s.write_all(&out).await.map_err(io_err)?;
    let auth_failed = |reason: String| Error::AuthenticationFailed {
        endpoint: endpoint.to_string(),
        user: endpoint.user.clone(),
        reason,
    };
    // We advertise `authentication_failure_close`, so a broker that has that capability too
    // refuses credentials with `connection.close 403`; an EOF here is then a node shutting down
    // or a load balancer losing its backend — transient. Only from a broker without the
    // capability is a silent close the (old-style) authentication failure.
    let explicit_auth_failure = server_properties
        .get("capabilities")
        .and_then(|c| match c {
            super::table::FieldValue::Table(t) => t.get("authentication_failure_close"),
            _ => None,
        })
        .is_some_and(|v| *v == super::table::FieldValue::Bool(true));
    let tune = read_method(s, &mut buf, endpoint, "waiting for connection.tune")
        .await?
        .ok_or_else(|| {
            if explicit_auth_failure {
                closed_early(
                    "after the credentials were sent, without refusing them (a node shutting \
                     down or a proxy without a backend)",
                )
            } else {
                auth_failed(
                    "the broker closed the connection after the credentials were sent".into(),
                )
            }
        })?;
    let (ch_max, fr_max, hb) = match tune {
        Method::ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        } => (channel_max, frame_max, heartbeat),
        Method::ConnectionClose(c) if c.reply_code == 403 => return Err(auth_failed(c.reply_text)),
        Method::ConnectionClose(c) => {
            return Err(Error::ConnectionClosed {
                code: c.reply_code,
                text: c.reply_text,
            });
        }
        other => return Err(unexpected("connection.tune", &other)),
    };
    let want_fm = endpoint
        .frame_max
        .unwrap_or(params.frame_max)
        .max(FRAME_MIN_SIZE);
    let frame_max = if fr_max == 0 {
        want_fm
    } else {
        want_fm.min(fr_max)
    };
    let want_cm = endpoint.channel_max.unwrap_or(params.channel_max);
    let channel_max = match (ch_max, want_cm) {
        (0, 0) => 2047,
        (0, w) | (w, 0) => w,
        (a, b) => a.min(b),
    };
    let want_hb = endpoint
        .heartbeat
        .unwrap_or(params.heartbeat)
        .as_secs()
        .min(u16::MAX as u64) as u16;
    let heartbeat = match (want_hb, hb) {
        (0, _) => 0,
        (w, 0) => w,
        (w, s) => w.min(s),
    };
    let mut out = BytesMut::new();
    put_method(
        &mut out,
        0,
        &Method::ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat,
        },
    );
    put_method(
        &mut out,
        0,
        &Method::ConnectionOpen {
            vhost: endpoint.vhost.clone(),
        },
    );
    s.write_all(&out).await.map_err(io_err)?;
    let vhost_refused = |reason: String| Error::VhostRefused {
        endpoint: endpoint.to_string(),
        vhost: endpoint.vhost.clone(),
        reason,
    };
    match read_method(s, &mut buf, endpoint, "waiting for connection.open-ok")
        .await?
        .ok_or_else(|| closed_early("after connection.open"))?
    {
        Method::ConnectionOpenOk => {}
        // 530 also says "connection limit reached", which passes: only the vhost refusals are
        // fatal.
        Method::ConnectionClose(c)
            if matches!(c.reply_code, 530 | 402 | 403) && !c.reply_text.contains("limit") =>
        {
            return Err(vhost_refused(c.reply_text));
        }
        Method::ConnectionClose(c) => {
            return Err(Error::ConnectionClosed {
                code: c.reply_code,
                text: c.reply_text,
            });
        }
        other => return Err(unexpected("connection.open-ok", &other)),
    }
    Ok(Handshake {
        frame_max,
        channel_max,
        heartbeat: Duration::from_secs(heartbeat as u64),
        server_properties,
        leftover: buf,
    })
}

// ---------------------------------------------------------------------------------------------
// The writer task.

async fn writer(shared: Arc<Shared>, mut w: WriteHalf) {
    let mut stop = shared.stop.subscribe();
    let mut spare = BytesMut::with_capacity(64 << 10);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = shared.wake_writer.notified() => {}
        }
        let stop_after = {
            let mut out = shared.out.lock().expect("outbox lock");
            std::mem::swap(&mut out.buf, &mut spare);
            out.stop_after_flush
        };
        if !spare.is_empty() {
            let res = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                r = w.write_all(&spare) => r,
            };
            if let Err(e) = res {
                shared.fail(Error::ConnectionLost(format!("write failed: {e}")));
                break;
            }
            spare.clear();
            shared.write_activity.fetch_add(1, Ordering::Relaxed);
            shared.drained.notify_waiters();
        }
        if stop_after {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.flush()).await;
            shared.fail(Error::ConnectionLost("closed".into()));
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Heartbeats, on their own so a writer stuck on a full socket cannot hide a dead peer:
/// every half interval, send one if nothing was written, and declare the connection dead after
/// two intervals without a byte from the broker.
async fn heartbeats(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let hb = shared.heartbeat;
    let mut tick = tokio::time::interval(hb / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut last_read, mut last_write) = (0u64, 0u64);
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let read = shared.read_activity.load(Ordering::Relaxed);
        if read == last_read {
            silent_ticks += 1;
            // Ticks are heartbeat/2 apart: four silent ticks = two missed heartbeats.
            if silent_ticks >= 4 {
                shared.fail(Error::ConnectionLost(format!(
                    "no data or heartbeat from the broker for {:?}",
                    hb * 2
                )));
                return;
            }
        } else {
            silent_ticks = 0;
            last_read = read;
        }
        let wrote = shared.write_activity.load(Ordering::Relaxed);
        if wrote == last_write {
            let _ = shared.write(put_heartbeat);
        }
        last_write = wrote;
    }
}

// ---------------------------------------------------------------------------------------------
// The reader task.

/// Content being assembled: the method that announced it, then its header, then body frames.
struct Assembling {
    method: Method,
    header: Option<ContentHeader>,
    body: BytesMut,
    first: Option<Bytes>,
    /// Body bytes are counted but not kept: a return (we hold the message ourselves) or a body
    /// over the cap (the delivery goes up malformed).
    discard: bool,
    discarded: u64,
}

struct Slot {
    tx: mpsc::UnboundedSender<ChannelEvent>,
    content: Option<Assembling>,
}

/// Ends the connection for every channel when the reader stops — also if it panics: each
/// channel gets `Closed` with the reason, and no channel can be opened any more.
struct ReaderExit(Arc<Shared>);

impl Drop for ReaderExit {
    fn drop(&mut self) {
        let shared = &self.0;
        // After the broker's connection.close, the writer still has our close-ok to send and
        // stops by itself; otherwise stop everything now.
        let flushing = shared
            .out
            .lock()
            .map(|o| o.stop_after_flush)
            .unwrap_or(false);
        if !flushing {
            shared.fail(Error::ConnectionLost(
                "the connection's reader stopped".into(),
            ));
        }
        let reason = shared.reason();
        let slots: Vec<_> = match shared.table.lock() {
            Ok(mut t) => {
                t.closed = true;
                t.slots.drain(..).flatten().collect()
            }
            Err(_) => Vec::new(),
        };
        for tx in slots {
            let _ = tx.send(ChannelEvent::Closed(reason.clone()));
        }
        shared.blocked.send_if_modified(|b| b.take().is_some());
    }
}

async fn reader(shared: Arc<Shared>, mut r: ReadHalf, mut buf: BytesMut) {
    let _exit = ReaderExit(shared.clone());
    let mut stop = shared.stop.subscribe();
    let mut cache: Vec<Option<Slot>> = Vec::new();
    let outcome: Result<(), Error> = 'run: loop {
        loop {
            match parse_frame(&mut buf, shared.frame_max) {
                Ok(Some(f)) => match handle_frame(&shared, &mut cache, f) {
                    Ok(true) => {}
                    Ok(false) => break 'run Ok(()),
                    Err(e) => break 'run Err(e),
                },
                Ok(None) => break,
                Err(e) => break 'run Err(e.into()),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break Ok(()),
            n = r.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) => break Err(Error::ConnectionLost("the broker closed the socket".into())),
            Ok(_) => {
                shared.read_activity.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => break Err(Error::ConnectionLost(format!("read failed: {e}"))),
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(endpoint = %shared.endpoint, error = %e, "connection lost");
        shared.fail(e);
    }
}

/// Handles one frame; `Ok(false)` ends the reader (the connection is closing).
fn handle_frame(
    shared: &Shared,
    cache: &mut Vec<Option<Slot>>,
    f: RawFrame,
) -> Result<bool, Error> {
    if f.kind == frame::HEARTBEAT {
        return Ok(true);
    }
    if f.channel == 0 {
        if f.kind != frame::METHOD {
            return Err(proto("content frame on channel 0"));
        }
        return match Method::decode(&f.payload)? {
            Method::ConnectionClose(c) => {
                tracing::debug!(code = c.reply_code, text = %c.reply_text, "broker closed the connection");
                shared.record(Error::ConnectionClosed {
                    code: c.reply_code,
                    text: c.reply_text,
                });
                let _ = shared.write(|out| put_method(out, 0, &Method::ConnectionCloseOk));
                shared.out.lock().expect("outbox lock").stop_after_flush = true;
                shared.wake_writer.notify_one();
                Ok(false)
            }
            Method::ConnectionCloseOk => {
                shared.fail(Error::Closed);
                Ok(false)
            }
            Method::ConnectionBlocked { reason } => {
                tracing::info!(%reason, "broker blocked publishing");
                shared.blocked.send_replace(Some(reason));
                Ok(true)
            }
            Method::ConnectionUnblocked => {
                tracing::info!("broker unblocked publishing");
                shared.blocked.send_replace(None);
                Ok(true)
            }
            other => Err(proto(&format!(
                "unexpected method {:?} on channel 0",
                other.ids()
            ))),
        };
    }
    let id = f.channel as usize;
    if cache.get(id).is_none_or(Option::is_none) {
        let tx = shared
            .table
            .lock()
            .expect("table lock")
            .slots
            .get(id)
            .cloned()
            .flatten();
        match tx {
            Some(tx) => {
                if cache.len() <= id {
                    cache.resize_with(id + 1, || None);
                }
                cache[id] = Some(Slot { tx, content: None });
            }
            None => {
                // Ids are handed out in turn from 1, so every id below the table's length was
                // opened once: a frame there is a late one for a channel we closed. An id
                // beyond it was never opened — no broker sends that.
                let ever_opened = id < shared.table.lock().expect("table lock").slots.len();
                if !ever_opened {
                    return Err(proto(&format!(
                        "frame on channel {id}, which was never opened"
                    )));
                }
                tracing::trace!(channel = id, "frame for a closed channel ignored");
                return Ok(true);
            }
        }
    }
    let slot = cache[id].as_mut().expect("cached above");
    match f.kind {
        frame::METHOD => {
            if slot.content.is_some() {
                return Err(proto("method frame while content was expected"));
            }
            let m = Method::decode(&f.payload)?;
            if let Method::BasicPublish { .. } = m {
                return Err(proto("basic.publish from the broker"));
            }
            if m.has_content() {
                let discard = matches!(m, Method::BasicReturn { .. });
                slot.content = Some(Assembling {
                    method: m,
                    header: None,
                    body: BytesMut::new(),
                    first: None,
                    discard,
                    discarded: 0,
                });
                return Ok(true);
            }
            let ev = match m {
                Method::BasicAck {
                    delivery_tag,
                    multiple,
                } => ChannelEvent::Ack {
                    tag: delivery_tag,
                    multiple,
                },
                Method::BasicNack {
                    delivery_tag,
                    multiple,
                    ..
                } => ChannelEvent::Nack {
                    tag: delivery_tag,
                    multiple,
                },
                Method::ChannelClose(c) => {
                    // Answer, mark the channel closed for writers, free the id, and tell the
                    // channel why — in that order, under the table lock, so a dropped handle
                    // cannot send a second close and no frame follows our close-ok.
                    let tx = {
                        let mut t = shared.table.lock().expect("table lock");
                        shared.answer_channel_close(f.channel);
                        t.slots.get_mut(id).and_then(Option::take)
                    };
                    cache[id] = None;
                    if let Some(tx) = tx {
                        let _ = tx.send(ChannelEvent::Closed(Error::ChannelClosed {
                            code: c.reply_code,
                            text: c.reply_text,
                        }));
                    }
                    return Ok(true);
                }
                Method::ChannelCloseOk => {
                    let _ = slot.tx.send(ChannelEvent::Method(Method::ChannelCloseOk));
                    shared.release(f.channel);
                    cache[id] = None;
                    return Ok(true);
                }
                Method::ChannelFlow { active } => {
                    let _ = shared
                        .write(|out| put_method(out, f.channel, &Method::ChannelFlowOk { active }));
                    ChannelEvent::Method(Method::ChannelFlow { active })
                }
                Method::BasicCancel {
                    consumer_tag,
                    nowait,
                } => {
                    if !nowait {
                        let _ = shared.write(|out| {
                            put_method(
                                out,
                                f.channel,
                                &Method::BasicCancelOk {
                                    consumer_tag: consumer_tag.clone(),
                                },
                            )
                        });
                    }
                    ChannelEvent::Method(Method::BasicCancel {
                        consumer_tag,
                        nowait,
                    })
                }
                other => ChannelEvent::Method(other),
            };
            let _ = slot.tx.send(ev);
        }
        frame::HEADER => {
            let a = slot
                .content
                .as_mut()
                .filter(|a| a.header.is_none())
                .ok_or_else(|| proto("content header without a content method"))?;
            let mut h = decode_content_header(&f.payload)?;
            if h.body_size > shared.max_body_size {
                a.discard = true;
                if h.malformed.is_none() {
                    h.malformed = Some(format!(
                        "body of {} bytes is over the limit of {} bytes (not kept)",
                        h.body_size, shared.max_body_size
                    ));
                }
            }
            let empty = h.body_size == 0;
            a.header = Some(h);
            if empty {
                complete(slot);
            }
        }
        frame::BODY => {
            let a = slot
                .content
                .as_mut()
                .filter(|a| a.header.is_some())
                .ok_or_else(|| proto("body frame without a content header"))?;
            let want = a.header.as_ref().expect("checked").body_size;
            let have =
                a.discarded + a.body.len() as u64 + a.first.as_ref().map_or(0, |b| b.len() as u64);
            if have + f.payload.len() as u64 > want {
                return Err(proto("body longer than its header announced"));
            }
            if a.discard {
                a.discarded += f.payload.len() as u64;
                if a.discarded == want {
                    complete(slot);
                }
                return Ok(true);
            }
            if have == 0 && f.payload.len() as u64 == want {
                a.first = Some(f.payload);
            } else {
                if let Some(first) = a.first.take() {
                    a.body.extend_from_slice(&first);
                }
                a.body.extend_from_slice(&f.payload);
            }
            let have = a.body.len() as u64 + a.first.as_ref().map_or(0, |b| b.len() as u64);
            if have == want {
                complete(slot);
            }
        }
        other => return Err(proto(&format!("unknown frame type {other}"))),
    }
    Ok(true)
}

fn complete(slot: &mut Slot) {
    let a = slot.content.take().expect("content being assembled");
    let header = a.header.expect("header read");
    let body = a.first.unwrap_or_else(|| a.body.freeze());
    let ev = match a.method {
        Method::BasicDeliver {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            ..
        } => ChannelEvent::Deliver(Box::new(RawDelivery {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            properties: header.properties,
            body,
            malformed: header.malformed,
        })),
        Method::BasicReturn {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => ChannelEvent::Return(Box::new(Returned {
            reply_code,
            reply_text,
            exchange,
            routing_key,
            properties: header.properties,
        })),
        _ => return, // only deliver and return are assembled (checked when they arrive)
    };
    let _ = slot.tx.send(ev);
}

fn proto(what: &str) -> Error {
    Error::Protocol(super::wire::ProtocolError::new(what))
}

/// Resolves once the watched flag is `true` (or its sender is gone). Holds no borrow across
/// awaits, so it can sit in a `select!` of a `Send` future.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
