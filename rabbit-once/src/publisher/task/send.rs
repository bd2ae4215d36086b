//! Sending: every message the window allows, oldest first, in one outbox append per run; a
//! message to an exchange not known to exist waits for a passive declare on a probe channel.

use super::close::HandedBack;
use super::session::{Exit, Task};
use crate::connection::Session;
use crate::error::Error;
use crate::transport::publish_frames;
use crate::transport::{Channel, ExchangeFlags};

impl Task {
    /// Writes every message the window allows, oldest first, in one outbox append per run of
    /// messages to verified exchanges. `Ok(true)`: the outbox is full, wait before more.
    pub(super) async fn send_ready(
        &mut self,
        ch: &mut Channel,
        session: &Session,
    ) -> Result<bool, Exit> {
        let window = self.shared.config.window;
        let mut full = false;
        self.batch.clear();
        loop {
            if self.buf.in_flight() >= window || self.buf.suspect_in_flight() {
                break;
            }
            let in_flight = self.buf.in_flight();
            let Some(e) = self.buf.next_unsent() else {
                break;
            };
            if e.suspect && in_flight > 0 {
                break;
            }
            let seq = e.seq;
            if !(e.msg().exchange.is_empty() || self.verified.contains(&e.msg().exchange)) {
                let name = e.msg().exchange.clone();
                let id = e.msg().message_id().unwrap_or_default().to_string();
                full |= self.write_batch(ch);
                match self.verify(session, &name).await {
                    Ok(true) => {
                        self.verified.insert(name);
                    }
                    Ok(false) => {
                        let err = Error::ExchangeNotFound {
                            message_id: id,
                            exchange: name,
                        };
                        self.buf.fail(seq, err, &mut self.resolved);
                    }
                    Err(Exit::Done) => return Err(Exit::Done),
                    Err(exit) => {
                        // Take the confirms already received before calling the channel lost,
                        // so confirmed messages are not published again.
                        while let Some(ev) = ch.try_recv() {
                            if let Some(exit) = self.on_event(Some(ev)) {
                                return Err(exit);
                            }
                        }
                        self.buf.channel_lost(false);
                        return Err(exit);
                    }
                }
                continue;
            }
            // The broker may have negotiated a smaller frame than the publisher checked
            // against when it accepted the message: a header that does not fit would make it
            // close the whole connection, so it is this message's failure instead.
            let frame_max = session.link.frame_max();
            if frame_max < self.shared.frame_max
                && let Err(why) = e.msg().check_header_fits(frame_max)
            {
                let id = e.msg().message_id().unwrap_or_default().to_string();
                let err = Error::InvalidMessage(format!("message {id}: {why}"));
                self.buf.fail(seq, err, &mut self.resolved);
                continue;
            }
            self.buf.mark_sent(seq);
            self.batch.push(seq);
        }
        full |= self.write_batch(ch);
        Ok(full)
    }

    /// Encodes the batch into the outbox under one lock. A failed write means the channel or
    /// connection is gone; its `Closed` event (next on the channel) settles that.
    fn write_batch(&mut self, ch: &Channel) -> bool {
        if self.batch.is_empty() {
            return false;
        }
        let mut republished = 0u64;
        let buf = &self.buf;
        let batch = &self.batch;
        let r = ch.write(|w| {
            for &seq in batch {
                let e = buf.entry(seq).expect("batched message is buffered");
                if e.publishes > 1 {
                    republished += 1;
                }
                let m = e.msg();
                w.publish(publish_frames(
                    &m.exchange,
                    &m.routing_key,
                    m.mandatory,
                    &m.properties,
                    &m.body,
                ));
            }
        });
        self.shared.counters.republished.add(republished);
        self.batch.clear();
        // Once per batch: the gauges show what is on the wire now (a burst to a broker that
        // has stopped confirming shows as in flight, not as 0).
        self.gauges();
        matches!(r, Ok((_, true)))
    }

    /// Whether `exchange` exists: passive declare on the probe channel. `Err` if the connection
    /// died meanwhile.
    async fn verify(&mut self, session: &Session, exchange: &str) -> Result<bool, Exit> {
        if self.probe.is_none() {
            let opened = match self
                .unless_close_deadline(async |_| session.link.open_channel().await)
                .await
            {
                Ok(opened) => opened,
                Err(HandedBack) => return Err(Exit::Done),
            };
            match opened {
                Ok(c) => self.probe = Some(c),
                Err(_) if session.link.is_closed() => return Err(Exit::Connection),
                Err(e) => {
                    // Cannot look (no channel to spare): let the publish itself find out.
                    tracing::debug!(error = %e, "no probe channel; publishing unchecked");
                    return Ok(true);
                }
            }
        }
        let declare = async |t: &mut Self| {
            let probe = t.probe.as_mut().expect("opened above");
            probe
                .exchange_declare(
                    exchange,
                    "direct",
                    ExchangeFlags::PASSIVE,
                    Default::default(),
                )
                .await
        };
        let declared = match self.unless_close_deadline(declare).await {
            Ok(declared) => declared,
            Err(HandedBack) => return Err(Exit::Done),
        };
        match declared {
            Ok(()) => Ok(true),
            Err(Error::ChannelClosed { code: 404, .. }) => {
                self.probe = None;
                Ok(false)
            }
            Err(Error::ChannelClosed { code, text }) => {
                // Not ours to judge (e.g. no permission to look): let the publish itself
                // find out, one message at a time if the broker refuses it.
                tracing::debug!(exchange, code, %text, "passive declare refused");
                self.probe = None;
                Ok(true)
            }
            Err(_) if session.link.is_closed() => {
                self.probe = None;
                Err(Exit::Connection)
            }
            Err(e) => {
                tracing::debug!(exchange, error = %e, "passive declare failed; publishing unchecked");
                self.probe = None;
                Ok(true)
            }
        }
    }
}
