//! A minimal raw AMQP 0-9-1 publisher for a real broker: a foreign client that sends exactly the
//! bytes it is given.
//!
//! rabbit-once's own publisher only sends what it can validate (UTF-8 ids, tables it can
//! encode). Other clients are not so careful, and a consumer must cope with whatever they got
//! past the broker: a non-UTF-8 `message_id`, a header key that is no text, headers nested
//! hundreds of levels deep, every field type, a content header near `frame_max`. This client
//! does the handshake (PLAIN), opens one channel in confirm mode, and publishes one
//! [`RawDelivery`] at a time, waiting for the broker's verdict on each — so a test can record
//! what the broker accepts and what it refuses.
//!
//! It shares the fake broker's byte-by-byte encoder (`wire`), never rabbit-once's.

use crate::wire::{
    BODY, FRAME_OVERHEAD, Frame, HEADER, HEARTBEAT, frame, long, method_frame, read_short, short,
    split_frame,
};
pub use crate::wire::{FieldBytes, RawDelivery, TableBytes};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound of every wait for the broker: a broker that never answers fails the call instead of
/// hanging the test.
const WAIT: Duration = Duration::from_secs(30);
/// What the client offers in `tune-ok` if the broker sets no limit.
const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The largest frame this client reads back (the broker's frames stay within frame_max; this
/// is a guard against a size field that is garbage).
const READ_MAX: u32 = 16 << 20;

/// The broker's verdict on one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// `basic.ack`: the broker took responsibility for the message.
    Acked,
    /// `basic.nack`: the broker refused it (e.g. a queue over its length limit).
    Nacked,
    /// The broker closed the channel over it (`channel.close`, answered with close-ok). The
    /// next publish opens a new channel in confirm mode.
    ChannelClosed {
        /// The reply code of `channel.close`.
        code: u16,
        /// The reply text of `channel.close`.
        text: String,
    },
    /// The broker closed the whole connection over it (`connection.close`, answered with
    /// close-ok). Every later publish fails: connect again.
    ConnectionClosed {
        /// The reply code of `connection.close`.
        code: u16,
        /// The reply text of `connection.close`.
        text: String,
    },
}

impl PublishOutcome {
    /// Whether the broker acked the message.
    pub fn is_acked(&self) -> bool {
        matches!(self, PublishOutcome::Acked)
    }
}

/// A raw publisher on one connection: see the module documentation.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    buf: Vec<u8>,
    frame_max: u32,
    /// The channel in confirm mode, if one is open.
    channel: Option<u16>,
    next_channel: u16,
    /// Publishes on the current channel (the next delivery tag is this + 1).
    published: u64,
    /// Why the connection is gone, once it is.
    closed: Option<(u16, String)>,
}

/// A method frame the broker sent: class, method, arguments.
struct Method {
    channel: u16,
    class: u16,
    method: u16,
    frame: Frame,
}

impl RawPublisher {
    /// Connects to `addr` (`host:port`), logs in with PLAIN, opens `vhost`, then opens channel 1
    /// and puts it in confirm mode. `frame_max` is whatever the broker offers.
    pub async fn connect(addr: &str, user: &str, password: &str, vhost: &str) -> io::Result<Self> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        let _ = stream.set_nodelay(true);
        let mut p = RawPublisher {
            stream,
            buf: Vec::with_capacity(8192),
            frame_max: DEFAULT_FRAME_MAX,
            channel: None,
            next_channel: 1,
            published: 0,
            closed: None,
        };
        p.handshake(user, password, vhost).await?;
        p.open_channel().await?;
        Ok(p)
    }

    /// The frame size negotiated with the broker (payload plus 8 octets of framing): a content
    /// header must fit in one frame of this size.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Why the broker closed the connection, once it did.
    pub fn closed(&self) -> Option<(u16, &str)> {
        self.closed.as_ref().map(|(c, t)| (*c, t.as_str()))
    }

    /// Publishes `message` — its properties and body exactly as built, right or wrong; its own
    /// exchange, routing key, delivery tag and redelivered flag are ignored — to `exchange`
    /// with `routing_key` (raw bytes too), and waits for the broker's verdict. The content
    /// header goes in one frame whatever its size; the body is split at `frame_max`.
    ///
    /// `Err` only if the connection was already closed, or it broke without a
    /// `connection.close` (EOF, reset, or no answer within 30 s).
    pub async fn publish_raw(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        message: &RawDelivery,
    ) -> io::Result<PublishOutcome> {
        if let Some((code, text)) = &self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the broker closed the connection: {code} {text}"),
            ));
        }
        let ch = match self.channel {
            Some(ch) => ch,
            None => match self.open_channel().await {
                Ok(ch) => ch,
                Err(_) if self.closed.is_some() => return Ok(self.connection_closed()),
                Err(e) => return Err(e),
            },
        };
        let mut args = 0u16.to_be_bytes().to_vec();
        args.extend_from_slice(&short(exchange));
        args.extend_from_slice(&short(routing_key));
        args.push(0); // neither mandatory nor immediate
        let mut out = method_frame(ch, 60, 40, &args);
        out.extend_from_slice(&frame(HEADER, ch, &message.content_header()));
        let chunk = self.frame_max as usize - FRAME_OVERHEAD;
        for part in message.body.chunks(chunk) {
            out.extend_from_slice(&frame(BODY, ch, part));
        }
        self.published += 1;
        let tag = self.published;
        if let Err(e) = self.stream.write_all(&out).await {
            // The broker may have closed the connection over the frames already sent, and
            // reset the socket before all of them were written: its close may still be there.
            return match self.read_method().await {
                Ok(m) if (m.class, m.method) == (10, 50) => {
                    self.on_connection_close(&m).await;
                    Ok(self.connection_closed())
                }
                _ => Err(e),
            };
        }
        loop {
            let m = self.read_method().await?;
            match (m.class, m.method) {
                (10, 50) => {
                    self.on_connection_close(&m).await;
                    return Ok(self.connection_closed());
                }
                (20, 40) if m.channel == ch => {
                    let (code, text) = close_reason(m.frame.args());
                    self.send(&method_frame(ch, 20, 41, &[])).await?;
                    self.channel = None;
                    return Ok(PublishOutcome::ChannelClosed { code, text });
                }
                (60, 80 | 120) if m.channel == ch => {
                    let a = m.frame.args();
                    let acked_tag = a
                        .get(..8)
                        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                    let multiple = a.get(8).is_some_and(|b| b & 1 != 0);
                    if acked_tag == tag || (multiple && acked_tag >= tag) {
                        return Ok(if m.method == 80 {
                            PublishOutcome::Acked
                        } else {
                            PublishOutcome::Nacked
                        });
                    }
                }
                _ => {} // anything else (e.g. connection.blocked) is not an answer
            }
        }
    }

    /// Closes the connection politely (`connection.close`, then waits for close-ok).
    pub async fn close(mut self) -> io::Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let mut args = 200u16.to_be_bytes().to_vec();
        args.extend_from_slice(&short(b"bye"));
        args.extend_from_slice(&[0, 0, 0, 0]);
        self.send(&method_frame(0, 10, 50, &args)).await?;
        loop {
            let m = self.read_method().await?;
            if (m.class, m.method) == (10, 51) || (m.class, m.method) == (10, 50) {
                return Ok(());
            }
        }
    }

    async fn handshake(&mut self, user: &str, password: &str, vhost: &str) -> io::Result<()> {
        self.send(b"AMQP\x00\x00\x09\x01").await?;
        self.expect(0, 10, 10, "connection.start").await?;
        let props = TableBytes::new()
            .entry(
                "product",
                FieldBytes::long_string("rabbit-once-testkit raw client"),
            )
            .entry(
                "capabilities",
                FieldBytes::table(
                    &TableBytes::new()
                        .entry("publisher_confirms", FieldBytes::bool(true))
                        .entry("authentication_failure_close", FieldBytes::bool(true)),
                ),
            );
        let mut start_ok = props.encode();
        start_ok.extend_from_slice(&short(b"PLAIN"));
        start_ok.extend_from_slice(&long(format!("\0{user}\0{password}").as_bytes()));
        start_ok.extend_from_slice(&short(b"en_US"));
        self.send(&method_frame(0, 10, 11, &start_ok)).await?;
        let tune = self.expect(0, 10, 30, "connection.tune").await?;
        let a = tune.frame.args();
        let channel_max = a.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let offered = a
            .get(2..6)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        self.frame_max = if offered == 0 {
            DEFAULT_FRAME_MAX
        } else {
            offered
        };
        let mut tune_ok = channel_max.to_be_bytes().to_vec();
        tune_ok.extend_from_slice(&self.frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        self.send(&method_frame(0, 10, 31, &tune_ok)).await?;
        let mut open = short(vhost.as_bytes());
        open.extend_from_slice(&short(b""));
        open.push(0);
        self.send(&method_frame(0, 10, 40, &open)).await?;
        self.expect(0, 10, 41, "connection.open-ok").await?;
        Ok(())
    }

    /// Opens the next channel and puts it in confirm mode.
    async fn open_channel(&mut self) -> io::Result<u16> {
        let ch = self.next_channel;
        self.next_channel += 1;
        self.send(&method_frame(ch, 20, 10, &short(b""))).await?;
        self.expect(ch, 20, 11, "channel.open-ok").await?;
        self.send(&method_frame(ch, 85, 10, &[0])).await?;
        self.expect(ch, 85, 11, "confirm.select-ok").await?;
        self.channel = Some(ch);
        self.published = 0;
        Ok(ch)
    }

    /// The next method on `channel`; a `connection.close` (answered) or anything else first is
    /// an error naming `what` was expected.
    async fn expect(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
        what: &str,
    ) -> io::Result<Method> {
        loop {
            let m = self.read_method().await?;
            if (m.class, m.method) == (10, 50) {
                self.on_connection_close(&m).await;
                let (code, text) = self.closed.clone().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("waiting for {what}, the broker closed the connection: {code} {text}"),
                ));
            }
            if m.channel == channel && (m.class, m.method) == (class, method) {
                return Ok(m);
            }
            if m.channel == channel {
                return Err(io::Error::other(format!(
                    "waiting for {what}, got method {}.{} on channel {}",
                    m.class, m.method, m.channel
                )));
            }
        }
    }

    /// Remembers why the connection was closed and answers with close-ok (best effort: the
    /// broker may already have gone).
    async fn on_connection_close(&mut self, m: &Method) {
        self.closed = Some(close_reason(m.frame.args()));
        self.channel = None;
        let _ = self.send(&method_frame(0, 10, 51, &[])).await;
    }

    fn connection_closed(&self) -> PublishOutcome {
        let (code, text) = self.closed.clone().unwrap_or_default();
        PublishOutcome::ConnectionClosed { code, text }
    }

    /// The next method frame (heartbeats and content frames are skipped), within [`WAIT`].
    async fn read_method(&mut self) -> io::Result<Method> {
        tokio::time::timeout(WAIT, async {
            loop {
                let f = self.read_frame().await?;
                if f.kind == HEARTBEAT {
                    continue;
                }
                if let Some((class, method)) = f.ids() {
                    return Ok(Method {
                        channel: f.channel,
                        class,
                        method,
                        frame: f,
                    });
                }
            }
        })
        .await
        .map_err(|_| timed_out("an answer from the broker"))?
    }

    async fn read_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, READ_MAX)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the socket",
                ));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

/// (reply code, reply text) of `connection.close` or `channel.close`.
fn close_reason(args: &[u8]) -> (u16, String) {
    let code = args
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let text = read_short(args, 2).unwrap_or_default();
    (code, String::from_utf8_lossy(&text).into_owned())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} within {WAIT:?}"),
    )
}
