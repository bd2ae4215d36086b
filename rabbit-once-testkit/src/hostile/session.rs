//! One connection to the hostile broker: the handshake, the answers a broker must give, and
//! the scenario's misbehaviour once the consumer subscribed.

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker::{Ctl, Published, Received};
use super::scenario::{Scenario, UNOPENED_CHANNEL};
use crate::wire::{
    BODY, FRAME_OVERHEAD, FieldBytes, Frame, HEADER, HEARTBEAT, METHOD, RawDelivery, TableBytes,
    content_message_id, frame, long, method_frame, read_short, short, split_frame,
};

/// What the broker offers in `connection.tune`; the client may ask for less.
const FRAME_MAX: u32 = 131_072;
const CHANNEL_MAX: u16 = 2047;
const HEARTBEAT_OFFER: u16 = 60;
/// How long the broker waits for `connection.close-ok` after closing a connection itself.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

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

pub(super) struct Session {
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
    pub(super) fn new(stream: TcpStream, ctl: Arc<Ctl>, connection: u64) -> Self {
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

    pub(super) async fn run(mut self) -> io::Result<()> {
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
