//! A hostile fake AMQP 0-9-1 broker: it speaks just enough of the protocol to get a client
//! through the handshake and a consumer subscribed, then misbehaves on purpose.
//!
//! A real RabbitMQ never sends a non-UTF-8 short string, a table nested 12,000 deep, a frame on
//! a channel nobody opened or a frame that ends in the wrong octet, so tests against the real
//! broker cannot show what the client does with them. This broker can: each [`Scenario`] is one
//! kind of misbehaviour, played on every connection the client makes (it reconnects), while the
//! broker counts connections and records every method it receives so tests can assert.
//!
//! Frames are encoded byte by byte by the testkit's `wire` module on purpose: the testkit does
//! not depend on rabbit-once, so a bug in the client's codec cannot hide itself by being shared
//! with the broker's.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::wire::{
    BODY, FRAME_OVERHEAD, Frame, HEADER, HEARTBEAT, METHOD, content_message_id, frame, long,
    method_frame, read_short, short, split_frame,
};
pub use crate::wire::{FieldBytes, RawDelivery, TableBytes};

/// The channel [`Scenario::FrameOnUnopenedChannel`] sends on (the client never opens it).
pub const UNOPENED_CHANNEL: u16 = 999;

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
    /// Behaves like [`Polite`](Self::Polite) — publishes on a channel in confirm mode are acked
    /// once their content header arrives, delivery tags counting from 1 per channel — except
    /// that a publish whose content header carries this `message_id` makes the broker close
    /// the whole connection with `code` and `text` (RabbitMQ does that with 501 FRAME_ERROR,
    /// 502 SYNTAX_ERROR or 505 UNEXPECTED_FRAME over a frame it could not take). It waits for
    /// `close-ok` (for at most a second), then drops the connection.
    CloseOnPublish {
        message_id: Vec<u8>,
        code: u16,
        text: String,
    },
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

/// One message published to the broker (its content header arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Which connection it came on, counted from 1 in accept order.
    pub connection: u64,
    pub channel: u16,
    /// Its `message_id` as raw bytes, if it has one.
    pub message_id: Option<Vec<u8>>,
    /// Whether the broker acked it (or closed the connection over it instead).
    pub acked: bool,
}

#[derive(Debug)]
struct Ctl {
    scenario: Scenario,
    connections: AtomicU64,
    received: Mutex<Vec<Received>>,
    published: Mutex<Vec<Published>>,
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
            published: Mutex::new(Vec::new()),
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

    /// Every message published so far (content header received), in order.
    pub fn published(&self) -> Vec<Published> {
        self.ctl.published.lock().expect("published lock").clone()
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
            if let Some(f) = split_frame(&mut self.buf, FRAME_MAX)? {
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
        if f.kind == HEADER {
            return self.on_content_header(f).await;
        }
        let Some((class, method)) = f.ids() else {
            return Ok(Flow::Continue); // body and heartbeat frames need no answer
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
            // basic.publish: answered once its content header arrives.
            (60, 40) => {}
            (85, 10) => {
                self.confirms.push((ch, 0));
                self.send_method(ch, 85, 11, &[]).await?;
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// A publish's content header: acks it (on a channel in confirm mode), or closes the
    /// connection over it if the scenario says so.
    async fn on_content_header(&mut self, f: &Frame) -> io::Result<Flow> {
        let message_id = content_message_id(&f.payload);
        let close = match &self.ctl.scenario {
            Scenario::CloseOnPublish {
                message_id: poison,
                code,
                text,
            } if message_id.as_deref() == Some(poison.as_slice()) => Some((*code, text.clone())),
            _ => None,
        };
        let confirming = self.confirms.iter().any(|(c, _)| *c == f.channel);
        self.ctl
            .published
            .lock()
            .expect("published lock")
            .push(Published {
                connection: self.connection,
                channel: f.channel,
                message_id,
                acked: close.is_none() && confirming,
            });
        if let Some((code, text)) = close {
            self.close_connection(code, text.as_bytes()).await?;
            return Ok(Flow::Close);
        }
        self.confirm_publish(f.channel).await?;
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
            Scenario::Polite
            | Scenario::EofAfterStartOk
            | Scenario::CloseAfterStartOk(..)
            | Scenario::CloseOnPublish { .. } => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HEARTBEAT;

    #[test]
    fn frames_split_back() {
        let mut buf = method_frame(3, 60, 80, &[0, 0, 0, 0, 0, 0, 0, 9, 0]);
        buf.extend_from_slice(&frame(HEARTBEAT, 0, &[]));
        buf.push(METHOD);
        let f = split_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        assert_eq!((f.channel, f.ids()), (3, Some((60, 80))));
        assert_eq!(settled_tag(60, 80, f.args()), Some(9));
        assert_eq!(
            split_frame(&mut buf, FRAME_MAX).unwrap().unwrap().kind,
            HEARTBEAT
        );
        assert!(
            split_frame(&mut buf, FRAME_MAX).unwrap().is_none(),
            "a partial frame waits"
        );
    }
}
