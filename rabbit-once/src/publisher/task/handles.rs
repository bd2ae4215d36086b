//! The handles' side of the task: their commands in, their verdicts, room and counters out.

use super::close::Closing;
use super::session::{DRAIN, Task};
use crate::metrics::Elapsed;
use crate::publisher::confirmation::{Confirmed, PublishError};
use crate::publisher::handle::Cmd;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;

impl Task {
    pub(super) fn on_cmd(&mut self, cmd: Option<Cmd>) {
        let mut next = cmd;
        let mut accepted = 0u64;
        // One clock read per batch of commands: the start of each message's confirm latency.
        let now = std::time::Instant::now();
        for n in 1..=DRAIN {
            match next {
                None => {
                    self.rx_open = false;
                    break;
                }
                Some(Cmd::Publish { msg, size, reply }) => {
                    self.buf.push(msg, size, reply, now);
                    accepted += 1;
                }
                Some(Cmd::Close { timeout, reply }) => {
                    let deadline = Instant::now() + timeout;
                    let c = self.closing.get_or_insert(Closing {
                        deadline,
                        replies: Vec::new(),
                    });
                    c.deadline = c.deadline.min(deadline);
                    c.replies.push(reply);
                }
            }
            if n == DRAIN {
                break;
            }
            next = match self.rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        self.shared.counters.accepted.add(accepted);
        self.gauges_at(Some(now));
    }

    /// The buffer's gauges, once per batch; reads the clock for the oldest message's age
    /// unless the buffer is empty.
    pub(super) fn gauges(&self) {
        self.gauges_at(None);
    }

    /// [`gauges`](Self::gauges) with the clock already read (`now`).
    fn gauges_at(&self, now: Option<std::time::Instant>) {
        let c = &self.shared.counters;
        let age = self.buf.oldest_accepted().map_or(0.0, |t| {
            now.unwrap_or_else(std::time::Instant::now)
                .saturating_duration_since(t)
                .as_secs_f64()
        });
        c.oldest_unconfirmed_gauge.set(age);
        c.buffered.store(self.buf.len(), Ordering::Relaxed);
        let bytes = self.buf.bytes();
        c.buffered_bytes.store(bytes, Ordering::Relaxed);
        c.peak_buffered_bytes.fetch_max(bytes, Ordering::Relaxed);
        c.buffered_gauge.set(self.buf.len() as f64);
        c.buffered_bytes_gauge.set(bytes as f64);
        c.in_flight_gauge.set(self.buf.in_flight() as f64);
    }

    /// Delivers verdicts and frees buffer room. Counters and room are updated first, so a
    /// caller that has its verdict never sees stats or room from before it.
    pub(super) fn complete(&mut self) {
        if self.resolved.is_empty() {
            return;
        }
        let (mut ok, mut bytes) = (0u64, 0usize);
        for r in &self.resolved {
            ok += u64::from(r.verdict.is_ok());
            bytes += r.size;
        }
        let count = self.resolved.len();
        let c = &self.shared.counters;
        c.confirmed.add(ok);
        if ok < count as u64 {
            // The cold path: failures counted by reason.
            for r in &self.resolved {
                if let Err(e) = &r.verdict {
                    c.fail(crate::metrics::reason(e), 1);
                }
            }
        }
        self.shared.release(count, bytes);
        // One clock read per batch of verdicts: the end of each message's confirm latency.
        let now = std::time::Instant::now();
        for mut r in self.resolved.drain(..) {
            let result = match r.verdict {
                Ok(()) => {
                    // Computed only inside a live handle: nothing with no recorder.
                    c.confirm_seconds.record(Elapsed {
                        from: r.accepted,
                        to: now,
                    });
                    Ok(Confirmed {
                        message_id: r.msg.properties.message_id.take().unwrap_or_default(),
                        sequence: r.seq,
                        publishes: r.publishes,
                    })
                }
                Err(error) => {
                    tracing::debug!(%error, "message failed");
                    Err(PublishError {
                        error,
                        message: Some(r.msg),
                    })
                }
            };
            if let Some(reply) = r.reply.take() {
                let _ = reply.send(result);
            }
        }
        self.gauges_at(Some(now));
    }
}
