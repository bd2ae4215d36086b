//! A hostile fake AMQP 0-9-1 broker: it speaks just enough of the protocol to get a client
//! through the handshake and a consumer subscribed, then misbehaves on purpose.
//!
//! A real RabbitMQ never sends a non-UTF-8 short string, a table nested 12,000 deep, a frame on
//! a channel nobody opened or a frame that ends in the wrong octet, so tests against the real
//! broker cannot show what the client does with them. This broker can: each [`Scenario`] is one
//! kind of misbehaviour, played on every connection the client makes (it reconnects), while the
//! broker counts connections and records every method it receives so tests can assert.
//!
//! Frames are encoded here byte by byte on purpose: the testkit does not depend on rabbit-once,
//! so a bug in the client's codec cannot hide itself by being shared with the broker's.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The channel [`Scenario::FrameOnUnopenedChannel`] sends on (the client never opens it).
pub const UNOPENED_CHANNEL: u16 = 999;

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4) + frame-end (1).
const FRAME_OVERHEAD: usize = 8;
/// What the broker offers in `connection.tune`; the client may ask for less.
const FRAME_MAX: u32 = 131_072;
const CHANNEL_MAX: u16 = 2047;
const HEARTBEAT_OFFER: u16 = 60;
/// How long the broker waits for `connection.close-ok` after closing a connection itself.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the broker does to every connection once the client got far enough.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// No misbehaviour: a well-behaved broker with an empty queue (a baseline for the others).
    Polite,
    /// Sends `connection.start`, reads `start-ok`, then closes the socket cleanly: a node
    /// shutting down, or a load balancer that lost its backend, mid-handshake.
    EofAfterStartOk,
    /// Answers `start-ok` with `connection.close(code, text)` instead of `tune` (403
    /// ACCESS_REFUSED is what RabbitMQ sends for bad credentials).
    CloseAfterStartOk(u16, String),
    /// Once the consumer subscribed, sends these deliveries (method, content header, body
    /// frames each), then behaves.
    Deliver(Vec<RawDelivery>),
    /// Once the consumer subscribed, writes these bytes raw, then keeps answering.
    Garbage(Vec<u8>),
    /// Once the consumer subscribed, sends a whole delivery on [`UNOPENED_CHANNEL`].
    FrameOnUnopenedChannel,
    /// Once the consumer subscribed, sends a frame whose size field promises more bytes than
    /// follow, then closes the socket (clean EOF mid-frame).
    TruncatedFrame,
    /// Once the consumer subscribed, sends a frame that ends in 0xAB instead of 0xCE, then
    /// keeps answering.
    BadFrameEnd,
}

/// One method frame the broker received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Which connection it came on, counted from 1 in accept order.
    pub connection: u64,
    pub channel: u16,
    pub class: u16,
    pub method: u16,
    /// The delivery tag of `basic.ack`, `basic.nack` and `basic.reject`.
    pub delivery_tag: Option<u64>,
}

#[derive(Debug)]
struct Ctl {
    scenario: Scenario,
    connections: AtomicU64,
    received: Mutex<Vec<Received>>,
}

impl Ctl {
    fn record(&self, r: Received) {
        self.received.lock().expect("received lock").push(r);
    }
}

/// A running hostile broker on `127.0.0.1`. Dropping it stops accepting and closes every
/// connection.
#[derive(Debug)]
pub struct HostileBroker {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HostileBroker {
    /// Listens on a free port of 127.0.0.1 and plays `scenario` on every connection.
    pub async fn start(scenario: Scenario) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Ctl {
            scenario,
            connections: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        });
        let (stop, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, ctl.clone(), stop.clone()));
        Ok(HostileBroker {
            addr,
            ctl,
            stop,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the broker accepts any credentials).
    pub fn uri(&self) -> String {
        self.uri_with("guest", "guest")
    }

    /// A URI with these credentials, e.g. to check that a password never shows in an error.
    pub fn uri_with(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.ctl.connections.load(Ordering::SeqCst)
    }

    /// Every method frame received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.ctl.received.lock().expect("received lock").clone()
    }

    /// How many `class.method` frames were received (e.g. `(60, 20)` for `basic.consume`).
    pub fn count(&self, class: u16, method: u16) -> usize {
        self.received()
            .iter()
            .filter(|r| (r.class, r.method) == (class, method))
            .count()
    }

    /// Delivery tags of the `basic.ack`s received, in order.
    pub fn acks(&self) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| (r.class, r.method) == (60, 80))
            .filter_map(|r| r.delivery_tag)
            .collect()
    }

    /// Waits until at least `n` connections were accepted, for at most `limit`.
    pub async fn wait_connections(&self, n: u64, limit: Duration) -> bool {
        self.wait_until(limit, || self.connections() >= n).await
    }

    /// Waits until at least `n` `class.method` frames were received, for at most `limit`.
    pub async fn wait_received(&self, class: u16, method: u16, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.count(class, method) >= n)
            .await
    }

    async fn wait_until(&self, limit: Duration, f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }
}

impl Drop for HostileBroker {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, ctl: Arc<Ctl>, stop: watch::Sender<bool>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::debug!(error = %e, "hostile broker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let n = ctl.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let session = Session::new(stream, ctl.clone(), n);
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                r = session.run() => {
                    if let Err(e) = r {
                        tracing::debug!(connection = n, error = %e, "hostile broker connection ended");
                    }
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// One connection.

/// What to do after handling something: go on, or end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    channel: u16,
    payload: Vec<u8>,
}

impl Frame {
    fn ids(&self) -> Option<(u16, u16)> {
        (self.kind == METHOD && self.payload.len() >= 4).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                u16::from_be_bytes([self.payload[2], self.payload[3]]),
            )
        })
    }

    /// The method's arguments (after class and method ids).
    fn args(&self) -> &[u8] {
        self.payload.get(4..).unwrap_or(&[])
    }
}

enum Next {
    Frame(Option<Frame>),
    Beat,
}

struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
    ctl: Arc<Ctl>,
    connection: u64,
    frame_max: u32,
    heartbeat: Duration,
    next_tag: u64,
    /// Channels in confirm mode, and how many publishes each has seen.
    confirms: Vec<(u16, u64)>,
}

impl Session {
    fn new(stream: TcpStream, ctl: Arc<Ctl>, connection: u64) -> Self {
        Session {
            stream,
            buf: Vec::with_capacity(8192),
            ctl,
            connection,
            frame_max: FRAME_MAX,
            heartbeat: Duration::ZERO,
            next_tag: 1,
            confirms: Vec::new(),
        }
    }

    async fn run(mut self) -> io::Result<()> {
        if self.handshake().await? == Flow::Close {
            return Ok(());
        }
        // Heartbeats keep a client that survived the misbehaviour from timing the broker out.
        let period = if self.heartbeat.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.heartbeat / 2
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                f = self.read_frame() => Next::Frame(f?),
                _ = tick.tick() => Next::Beat,
            };
            let frame = match next {
                Next::Beat => {
                    self.write(&frame(HEARTBEAT, 0, &[])).await?;
                    continue;
                }
                Next::Frame(None) => return Ok(()),
                Next::Frame(Some(f)) => f,
            };
            if self.answer(&frame).await? == Flow::Close {
                return Ok(());
            }
        }
    }

    /// Protocol header, start / start-ok, then (unless the scenario ends it there) tune /
    /// tune-ok and open / open-ok.
    async fn handshake(&mut self) -> io::Result<Flow> {
        let mut header = [0u8; 8];
        self.stream.read_exact(&mut header).await?;
        if &header[..4] != b"AMQP" {
            return Ok(Flow::Close);
        }
        self.send_method(0, 10, 10, &start_args()).await?;
        if self.expect_method(10, 11).await?.is_none() {
            return Ok(Flow::Close);
        }
        match &self.ctl.scenario {
            Scenario::EofAfterStartOk => {
                self.stream.shutdown().await?;
                return Ok(Flow::Close);
            }
            Scenario::CloseAfterStartOk(code, text) => {
                let (code, text) = (*code, text.clone());
                self.close_connection(code, text.as_bytes()).await?;
                return Ok(Flow::Close);
            }
            _ => {}
        }
        let mut tune = Vec::new();
        tune.extend_from_slice(&CHANNEL_MAX.to_be_bytes());
        tune.extend_from_slice(&FRAME_MAX.to_be_bytes());
        tune.extend_from_slice(&HEARTBEAT_OFFER.to_be_bytes());
        self.send_method(0, 10, 30, &tune).await?;
        let Some(tune_ok) = self.expect_method(10, 31).await? else {
            return Ok(Flow::Close);
        };
        let a = tune_ok.args();
        if a.len() >= 8 {
            let frame_max = u32::from_be_bytes([a[2], a[3], a[4], a[5]]);
            if frame_max != 0 {
                self.frame_max = frame_max.min(FRAME_MAX);
            }
            self.heartbeat = Duration::from_secs(u16::from_be_bytes([a[6], a[7]]).into());
        }
        if self.expect_method(10, 40).await?.is_none() {
            return Ok(Flow::Close);
        }
        self.send_method(0, 10, 41, &short(b"")).await?;
        Ok(Flow::Continue)
    }

    /// Sends `connection.close` and waits a little for `close-ok` (or EOF).
    async fn close_connection(&mut self, code: u16, text: &[u8]) -> io::Result<()> {
        let mut args = code.to_be_bytes().to_vec();
        args.extend_from_slice(&short(text));
        args.extend_from_slice(&[0, 0, 0, 0]);
        self.send_method(0, 10, 50, &args).await?;
        let _ = tokio::time::timeout(CLOSE_LINGER, self.expect_method(10, 51)).await;
        Ok(())
    }

    /// Reads frames until a method frame on channel 0: `Some` if it is `class.method`, `None`
    /// on EOF or any other method.
    async fn expect_method(&mut self, class: u16, method: u16) -> io::Result<Option<Frame>> {
        loop {
            let Some(f) = self.read_frame().await? else {
                return Ok(None);
            };
            if f.channel != 0 {
                continue;
            }
            if let Some(ids) = f.ids() {
                return Ok((ids == (class, method)).then_some(f));
            }
        }
    }

    /// The next whole frame; `None` on EOF. Cancel-safe: bytes read stay in `buf`. Records
    /// every method frame.
    async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = split_frame(&mut self.buf)? {
                if let Some((class, method)) = f.ids() {
                    self.ctl.record(Received {
                        connection: self.connection,
                        channel: f.channel,
                        class,
                        method,
                        delivery_tag: settled_tag(class, method, f.args()),
                    });
                }
                return Ok(Some(f));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn send_method(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
        args: &[u8],
    ) -> io::Result<()> {
        self.write(&method_frame(channel, class, method, args))
            .await
    }

    /// Answers what a broker must answer; records the rest (already done by `read_frame`).
    async fn answer(&mut self, f: &Frame) -> io::Result<Flow> {
        let Some((class, method)) = f.ids() else {
            return Ok(Flow::Continue); // content and heartbeat frames need no answer
        };
        let ch = f.channel;
        let args = f.args();
        match (class, method) {
            (10, 50) => {
                self.send_method(0, 10, 51, &[]).await?;
                return Ok(Flow::Close);
            }
            (10, 51) => return Ok(Flow::Close),
            (20, 10) => self.send_method(ch, 20, 11, &long(b"")).await?,
            (20, 20) => self.send_method(ch, 20, 21, args).await?,
            (20, 40) => self.send_method(ch, 20, 41, &[]).await?,
            (40, 10) => self.send_method(ch, 40, 11, &[]).await?,
            (40, 20) => self.send_method(ch, 40, 21, &[]).await?,
            (40, 30) => self.send_method(ch, 40, 31, &[]).await?,
            (50, 10) => {
                let mut name = read_short(args, 2).unwrap_or_default();
                if name.is_empty() {
                    name = b"amq.gen-hostile".to_vec();
                }
                let mut ok = short(&name);
                ok.extend_from_slice(&[0; 8]);
                self.send_method(ch, 50, 11, &ok).await?;
            }
            (50, 20) => self.send_method(ch, 50, 21, &[]).await?,
            (50, 30) => self.send_method(ch, 50, 31, &[0; 4]).await?,
            (50, 40) => self.send_method(ch, 50, 41, &[0; 4]).await?,
            (50, 50) => self.send_method(ch, 50, 51, &[]).await?,
            (60, 10) => self.send_method(ch, 60, 11, &[]).await?,
            (60, 20) => {
                let tag = consumer_tag(args);
                self.send_method(ch, 60, 21, &short(&tag)).await?;
                return self.misbehave(ch, &tag).await;
            }
            (60, 30) => {
                let tag = read_short(args, 0).unwrap_or_default();
                let nowait = args.get(1 + tag.len()).is_some_and(|b| b & 1 != 0);
                if !nowait {
                    self.send_method(ch, 60, 31, &short(&tag)).await?;
                }
            }
            (60, 40) => self.confirm_publish(ch).await?,
            (85, 10) => {
                self.confirms.push((ch, 0));
                self.send_method(ch, 85, 11, &[]).await?;
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// Acks a publish at once on a channel in confirm mode (there is no queue to wait for).
    async fn confirm_publish(&mut self, ch: u16) -> io::Result<()> {
        let Some(seq) = self.confirms.iter_mut().find(|(c, _)| *c == ch) else {
            return Ok(());
        };
        seq.1 += 1;
        let mut ack = seq.1.to_be_bytes().to_vec();
        ack.push(0);
        self.send_method(ch, 60, 80, &ack).await
    }

    /// Plays the scenario on the consumer's channel, right after `basic.consume-ok`.
    async fn misbehave(&mut self, ch: u16, tag: &[u8]) -> io::Result<Flow> {
        match self.ctl.scenario.clone() {
            Scenario::Polite | Scenario::EofAfterStartOk | Scenario::CloseAfterStartOk(..) => {}
            Scenario::Deliver(deliveries) => {
                for d in &deliveries {
                    let bytes = self.delivery_frames(ch, tag, d);
                    self.write(&bytes).await?;
                }
            }
            Scenario::Garbage(bytes) => self.write(&bytes).await?,
            Scenario::FrameOnUnopenedChannel => {
                let d = RawDelivery::new("on a channel nobody opened");
                let bytes = self.delivery_frames(UNOPENED_CHANNEL, tag, &d);
                self.write(&bytes).await?;
            }
            Scenario::TruncatedFrame => {
                // Announces 1000 payload bytes, sends 10, then a clean EOF.
                let mut bytes = vec![METHOD];
                bytes.extend_from_slice(&ch.to_be_bytes());
                bytes.extend_from_slice(&1000u32.to_be_bytes());
                bytes.extend_from_slice(&[0, 60, 0, 60, 0, 0, 0, 0, 0, 0]);
                self.write(&bytes).await?;
                self.stream.shutdown().await?;
                return Ok(Flow::Close);
            }
            Scenario::BadFrameEnd => {
                let mut bytes = frame(HEARTBEAT, 0, &[]);
                *bytes.last_mut().expect("a frame") = 0xAB;
                self.write(&bytes).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// `basic.deliver`, its content header and body frames (split at the negotiated
    /// frame_max), exactly as `d` describes them.
    fn delivery_frames(&mut self, ch: u16, consumer_tag: &[u8], d: &RawDelivery) -> Vec<u8> {
        let tag = d.delivery_tag.unwrap_or_else(|| {
            let t = self.next_tag;
            self.next_tag += 1;
            t
        });
        let mut deliver = short(consumer_tag);
        deliver.extend_from_slice(&tag.to_be_bytes());
        deliver.push(u8::from(d.redelivered));
        deliver.extend_from_slice(&short(&d.exchange));
        deliver.extend_from_slice(&short(&d.routing_key));
        let mut out = method_frame(ch, 60, 60, &deliver);
        out.extend_from_slice(&frame(HEADER, ch, &d.content_header()));
        let chunk = self.frame_max as usize - FRAME_OVERHEAD;
        for part in d.body.chunks(chunk) {
            out.extend_from_slice(&frame(BODY, ch, part));
        }
        out
    }
}

/// The delivery tag of `basic.ack` (60.80), `basic.reject` (60.90) and `basic.nack` (60.120).
fn settled_tag(class: u16, method: u16, args: &[u8]) -> Option<u64> {
    match (class, method) {
        (60, 80 | 90 | 120) => Some(u64::from_be_bytes(args.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// The consumer tag of `basic.consume` (reserved u16, queue, tag), or one of ours if empty.
fn consumer_tag(args: &[u8]) -> Vec<u8> {
    let queue_len = args.get(2).copied().unwrap_or(0) as usize;
    match read_short(args, 3 + queue_len) {
        Some(t) if !t.is_empty() => t,
        _ => b"amq.ctag-hostile".to_vec(),
    }
}

fn start_args() -> Vec<u8> {
    let props = TableBytes::new()
        .entry("product", FieldBytes::long_string("hostile-broker"))
        .entry("version", FieldBytes::long_string("0"))
        .entry(
            "capabilities",
            FieldBytes::table(
                &TableBytes::new()
                    .entry("publisher_confirms", FieldBytes::bool(true))
                    .entry("consumer_cancel_notify", FieldBytes::bool(true))
                    .entry("authentication_failure_close", FieldBytes::bool(true)),
            ),
        );
    let mut a = vec![0, 9];
    a.extend_from_slice(&props.encode());
    a.extend_from_slice(&long(b"PLAIN AMQPLAIN"));
    a.extend_from_slice(&long(b"en_US"));
    a
}

// ---------------------------------------------------------------------------------------------
// Frames and primitive types.

/// Splits one whole frame off the front of `buf`. A frame that does not end in 0xCE is an
/// error: the client never sends one.
fn split_frame(buf: &mut Vec<u8>) -> io::Result<Option<Frame>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > FRAME_MAX as usize {
        return Err(io::Error::other(format!("client frame of {size} bytes")));
    }
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(io::Error::other("client frame does not end with 0xCE"));
    }
    let f = Frame {
        kind: buf[0],
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        payload: buf[7..total - 1].to_vec(),
    };
    buf.drain(..total);
    Ok(Some(f))
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(METHOD, channel, &payload)
}

/// A short string: length octet, then the bytes as they are (UTF-8 or not).
fn short(s: &[u8]) -> Vec<u8> {
    let len = u8::try_from(s.len()).expect("a short string holds at most 255 bytes");
    let mut out = vec![len];
    out.extend_from_slice(s);
    out
}

/// A long string: u32 length, then the bytes.
fn long(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// The short string at `at` in `args`.
fn read_short(args: &[u8], at: usize) -> Option<Vec<u8>> {
    let len = *args.get(at)? as usize;
    args.get(at + 1..at + 1 + len).map(<[u8]>::to_vec)
}

// ---------------------------------------------------------------------------------------------
// Deliveries and field tables, described byte by byte.

/// One delivery as bytes: every short string is raw bytes (so non-UTF-8 can be sent), the
/// headers are a pre-encoded field table (so any nesting or type can be sent), and the body
/// size the content header announces may differ from the body actually sent.
#[derive(Debug, Clone, Default)]
pub struct RawDelivery {
    delivery_tag: Option<u64>,
    redelivered: bool,
    exchange: Vec<u8>,
    routing_key: Vec<u8>,
    content_type: Option<Vec<u8>>,
    message_id: Option<Vec<u8>>,
    kind: Option<Vec<u8>>,
    app_id: Option<Vec<u8>>,
    headers: Option<Vec<u8>>,
    body: Vec<u8>,
    announced_size: Option<u64>,
}

impl RawDelivery {
    /// A delivery of `body` with no properties, routing key "hostile", the next delivery tag.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        RawDelivery {
            routing_key: b"hostile".to_vec(),
            body: body.into(),
            ..Default::default()
        }
    }

    /// A fixed delivery tag (by default tags count from 1 on each connection).
    pub fn delivery_tag(mut self, tag: u64) -> Self {
        self.delivery_tag = Some(tag);
        self
    }

    pub fn redelivered(mut self, yes: bool) -> Self {
        self.redelivered = yes;
        self
    }

    pub fn exchange(mut self, b: impl AsRef<[u8]>) -> Self {
        self.exchange = b.as_ref().to_vec();
        self
    }

    pub fn routing_key(mut self, b: impl AsRef<[u8]>) -> Self {
        self.routing_key = b.as_ref().to_vec();
        self
    }

    pub fn content_type(mut self, b: impl AsRef<[u8]>) -> Self {
        self.content_type = Some(b.as_ref().to_vec());
        self
    }

    pub fn message_id(mut self, b: impl AsRef<[u8]>) -> Self {
        self.message_id = Some(b.as_ref().to_vec());
        self
    }

    /// The `type` property.
    pub fn kind(mut self, b: impl AsRef<[u8]>) -> Self {
        self.kind = Some(b.as_ref().to_vec());
        self
    }

    pub fn app_id(mut self, b: impl AsRef<[u8]>) -> Self {
        self.app_id = Some(b.as_ref().to_vec());
        self
    }

    /// Headers from a table built with [`TableBytes`].
    pub fn headers(self, t: &TableBytes) -> Self {
        self.raw_headers(t.encode())
    }

    /// Headers as raw bytes, length prefix included: sent as they are, right or wrong.
    pub fn raw_headers(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.headers = Some(bytes.into());
        self
    }

    /// The body size the content header announces (by default the body's real length).
    pub fn announced_size(mut self, n: u64) -> Self {
        self.announced_size = Some(n);
        self
    }

    /// The content header payload: class 60, weight 0, body size, property flags, properties
    /// in flag order.
    fn content_header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&60u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        let size = self.announced_size.unwrap_or(self.body.len() as u64);
        out.extend_from_slice(&size.to_be_bytes());
        let mut flags = 0u16;
        let mut props = Vec::new();
        if let Some(v) = &self.content_type {
            flags |= 1 << 15;
            props.extend_from_slice(&short(v));
        }
        if let Some(h) = &self.headers {
            flags |= 1 << 13;
            props.extend_from_slice(h);
        }
        if let Some(v) = &self.message_id {
            flags |= 1 << 7;
            props.extend_from_slice(&short(v));
        }
        if let Some(v) = &self.kind {
            flags |= 1 << 5;
            props.extend_from_slice(&short(v));
        }
        if let Some(v) = &self.app_id {
            flags |= 1 << 3;
            props.extend_from_slice(&short(v));
        }
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&props);
        out
    }
}

/// One encoded field value: its type tag and payload (RabbitMQ's tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldBytes(Vec<u8>);

impl FieldBytes {
    /// Any tag with any payload, e.g. an unknown tag.
    pub fn raw(tag: u8, payload: &[u8]) -> Self {
        let mut v = vec![tag];
        v.extend_from_slice(payload);
        FieldBytes(v)
    }

    /// `t`
    pub fn bool(v: bool) -> Self {
        Self::raw(b't', &[u8::from(v)])
    }

    /// `b`
    pub fn i8(v: i8) -> Self {
        Self::raw(b'b', &v.to_be_bytes())
    }

    /// `B`
    pub fn u8(v: u8) -> Self {
        Self::raw(b'B', &[v])
    }

    /// `s`
    pub fn i16(v: i16) -> Self {
        Self::raw(b's', &v.to_be_bytes())
    }

    /// `u`
    pub fn u16(v: u16) -> Self {
        Self::raw(b'u', &v.to_be_bytes())
    }

    /// `I`
    pub fn i32(v: i32) -> Self {
        Self::raw(b'I', &v.to_be_bytes())
    }

    /// `i` (unsigned, as RabbitMQ reads it)
    pub fn u32(v: u32) -> Self {
        Self::raw(b'i', &v.to_be_bytes())
    }

    /// `l`
    pub fn i64(v: i64) -> Self {
        Self::raw(b'l', &v.to_be_bytes())
    }

    /// `f`
    pub fn f32(v: f32) -> Self {
        Self::raw(b'f', &v.to_be_bytes())
    }

    /// `d`
    pub fn f64(v: f64) -> Self {
        Self::raw(b'd', &v.to_be_bytes())
    }

    /// `D`: scale, then the unscaled value.
    pub fn decimal(scale: u8, v: u32) -> Self {
        let mut p = vec![scale];
        p.extend_from_slice(&v.to_be_bytes());
        Self::raw(b'D', &p)
    }

    /// `S`
    pub fn long_string(v: impl AsRef<[u8]>) -> Self {
        Self::raw(b'S', &long(v.as_ref()))
    }

    /// `T`: seconds since the Unix epoch.
    pub fn timestamp(v: u64) -> Self {
        Self::raw(b'T', &v.to_be_bytes())
    }

    /// `F`
    pub fn table(t: &TableBytes) -> Self {
        Self::raw(b'F', &t.encode())
    }

    /// `A`
    pub fn array(items: &[FieldBytes]) -> Self {
        let body: Vec<u8> = items.iter().flat_map(|i| i.0.iter().copied()).collect();
        Self::raw(b'A', &long(&body))
    }

    /// `V`
    pub fn void() -> Self {
        Self::raw(b'V', &[])
    }

    /// `x`
    pub fn byte_array(v: impl AsRef<[u8]>) -> Self {
        Self::raw(b'x', &long(v.as_ref()))
    }

    /// A table holding a table holding … `depth` tables in all (each holds the next under key
    /// "n"; the innermost is empty). Written front to back in one pass: the lengths are known
    /// (each level adds 7 bytes), so 12,000 levels cost 84 KB and no quadratic copying.
    pub fn nested_tables(depth: usize) -> Self {
        let mut v = Vec::with_capacity(depth * 7);
        for level in (1..=depth).rev() {
            v.push(b'F');
            v.extend_from_slice(&(7 * (level as u32 - 1)).to_be_bytes());
            if level > 1 {
                v.extend_from_slice(&[1, b'n']);
            }
        }
        FieldBytes(v)
    }

    /// An array holding an array holding … `depth` arrays in all (the innermost is empty).
    pub fn nested_arrays(depth: usize) -> Self {
        let mut v = Vec::with_capacity(depth * 5);
        for level in (1..=depth).rev() {
            v.push(b'A');
            v.extend_from_slice(&(5 * (level as u32 - 1)).to_be_bytes());
        }
        FieldBytes(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A field table as bytes: keys are raw bytes (so a key may be non-UTF-8), values are
/// [`FieldBytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableBytes {
    entries: Vec<u8>,
}

impl TableBytes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry (no check for duplicate keys: a hostile table may repeat one).
    pub fn entry(mut self, key: impl AsRef<[u8]>, value: FieldBytes) -> Self {
        self.entries.extend_from_slice(&short(key.as_ref()));
        self.entries.extend_from_slice(&value.0);
        self
    }

    /// The table as it goes on the wire: u32 length, then the entries.
    pub fn encode(&self) -> Vec<u8> {
        long(&self.entries)
    }

    /// One entry of every field type, keyed by type name: `bool` true, `i8` -3, `u8` 200,
    /// `i16` -300, `u16` 60000, `i32` -70000, `u32` 4000000000, `i64` -5000000000, `f32` 1.5,
    /// `f64` -2.25, `decimal` (2, 12345), `string` "héllo", `timestamp` 1700000000, `table`
    /// {`inner`: i32 7}, `array` [i32 1, "x"], `void`, `bytes` [0, 255].
    pub fn every_type() -> Self {
        TableBytes::new()
            .entry("bool", FieldBytes::bool(true))
            .entry("i8", FieldBytes::i8(-3))
            .entry("u8", FieldBytes::u8(200))
            .entry("i16", FieldBytes::i16(-300))
            .entry("u16", FieldBytes::u16(60000))
            .entry("i32", FieldBytes::i32(-70000))
            .entry("u32", FieldBytes::u32(4_000_000_000))
            .entry("i64", FieldBytes::i64(-5_000_000_000))
            .entry("f32", FieldBytes::f32(1.5))
            .entry("f64", FieldBytes::f64(-2.25))
            .entry("decimal", FieldBytes::decimal(2, 12345))
            .entry("string", FieldBytes::long_string("héllo"))
            .entry("timestamp", FieldBytes::timestamp(1_700_000_000))
            .entry(
                "table",
                FieldBytes::table(&TableBytes::new().entry("inner", FieldBytes::i32(7))),
            )
            .entry(
                "array",
                FieldBytes::array(&[FieldBytes::i32(1), FieldBytes::long_string("x")]),
            )
            .entry("void", FieldBytes::void())
            .entry("bytes", FieldBytes::byte_array([0, 255]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested values written in one pass must equal the naive inside-out construction.
    #[test]
    fn nesting_matches_the_naive_encoding() {
        let mut table = FieldBytes::table(&TableBytes::new());
        let mut array = FieldBytes::array(&[]);
        for depth in 1..=20 {
            assert_eq!(
                FieldBytes::nested_tables(depth),
                table,
                "tables, depth {depth}"
            );
            assert_eq!(
                FieldBytes::nested_arrays(depth),
                array,
                "arrays, depth {depth}"
            );
            table = FieldBytes::table(&TableBytes::new().entry("n", table));
            array = FieldBytes::array(&[array]);
        }
    }

    #[test]
    fn frames_split_back() {
        let mut buf = method_frame(3, 60, 80, &[0, 0, 0, 0, 0, 0, 0, 9, 0]);
        buf.extend_from_slice(&frame(HEARTBEAT, 0, &[]));
        buf.push(METHOD);
        let f = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.channel, f.ids()), (3, Some((60, 80))));
        assert_eq!(settled_tag(60, 80, f.args()), Some(9));
        assert_eq!(split_frame(&mut buf).unwrap().unwrap().kind, HEARTBEAT);
        assert!(
            split_frame(&mut buf).unwrap().is_none(),
            "a partial frame waits"
        );
    }

    #[test]
    fn content_header_puts_properties_in_flag_order() {
        let d = RawDelivery::new("body")
            .message_id([0xff])
            .app_id("a")
            .content_type("c")
            .announced_size(99);
        let h = d.content_header();
        assert_eq!(&h[4..12], &99u64.to_be_bytes());
        let flags = u16::from_be_bytes([h[12], h[13]]);
        assert_eq!(flags, (1 << 15) | (1 << 7) | (1 << 3));
        assert_eq!(&h[14..], &[1, b'c', 1, 0xff, 1, b'a']);
    }
}
