//! What the channel tells the task: confirms and nacks settle messages, returns mark them, and
//! a close either loses the channel or, over a message it cannot name, hunts the suspect.

use super::session::{Exit, Task};
use crate::error::Error;
use crate::transport::ChannelEvent;

impl Task {
    /// Settles what one channel event says. `Some` when the channel or its connection is gone.
    pub(super) fn on_event(&mut self, ev: Option<ChannelEvent>) -> Option<Exit> {
        match ev {
            Some(ChannelEvent::Ack { tag, multiple }) => {
                self.buf.ack(tag, multiple, &mut self.resolved);
            }
            Some(ChannelEvent::Nack { tag, multiple }) => {
                self.shared.counters.nacks.add(1);
                // Nacked messages go out again on a fresh channel (see `Task::recycle`).
                self.recycle = true;
                let backoff = self.shared.config.nack_backoff;
                self.buf.nack(
                    tag,
                    multiple,
                    std::time::Instant::now(),
                    |n| backoff.delay(n.saturating_sub(1)),
                    &mut self.resolved,
                );
            }
            Some(ChannelEvent::Return(r)) => {
                self.shared.counters.returns.add(1);
                match r.properties.message_id.as_deref() {
                    Some(id)
                        if self.buf.returned(
                            id,
                            &r.exchange,
                            &r.routing_key,
                            r.reply_code,
                            &r.reply_text,
                        ) => {}
                    id => tracing::warn!(
                        ?id,
                        code = r.reply_code,
                        exchange = %r.exchange,
                        routing_key = %r.routing_key,
                        "basic.return for no in-flight message"
                    ),
                }
            }
            Some(ChannelEvent::Closed(e)) if e.is_connection_level() && !frame_fault(&e) => {
                let n = self.buf.channel_lost(false);
                tracing::debug!(error = %e, unconfirmed = n, "publishing connection lost");
                return Some(Exit::Connection);
            }
            Some(ChannelEvent::Closed(e)) => return Some(self.hunt_suspects(&e)),
            Some(
                ChannelEvent::Method(_) | ChannelEvent::Deliver(_) | ChannelEvent::Cancelled { .. },
            ) => {}
            None => {
                self.buf.channel_lost(false);
                return Some(Exit::Connection);
            }
        }
        None
    }

    /// A channel the broker closed, or a connection it closed over a frame it could not take
    /// (a message it refused that badly, see [`frame_fault`]): either way the in-flight
    /// messages are suspects, re-sent one at a time, so one message can never wedge the channel
    /// or the connection — the lone suspect in flight at the next close is the culprit.
    fn hunt_suspects(&mut self, e: &Error) -> Exit {
        let exit = if e.is_connection_level() {
            Exit::Connection
        } else {
            Exit::Channel
        };
        let (code, text) = match e {
            Error::ChannelClosed { code, text } | Error::ConnectionClosed { code, text } => {
                (*code, text.clone())
            }
            other => (0, other.to_string()),
        };
        if let Some(seq) = self.buf.lone_suspect() {
            let entry = self.buf.entry(seq).expect("suspect is buffered");
            let message_id = entry.msg().message_id().unwrap_or_default().to_string();
            let err = if code == 404 && text.contains("no exchange") {
                Error::ExchangeNotFound {
                    message_id,
                    exchange: entry.msg().exchange.clone(),
                }
            } else {
                Error::Refused {
                    message_id,
                    code,
                    text: text.clone(),
                }
            };
            tracing::warn!(code, %text, "broker refused a message; failing it alone");
            self.buf.fail(seq, err, &mut self.resolved);
            self.buf.channel_lost(false);
        } else {
            let n = self.buf.channel_lost(true);
            tracing::warn!(code, %text, suspects = n, "publishing channel closed by the broker; re-sending one by one");
        }
        exit
    }
}

/// A connection the broker closed over a frame it could not accept (501 FRAME_ERROR,
/// 502 SYNTAX_ERROR, 505 UNEXPECTED_FRAME, 541 INTERNAL_ERROR): what we just wrote may be the
/// cause, so the in-flight messages are treated as suspects, not simply re-sent.
fn frame_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::ConnectionClosed {
            code: 501 | 502 | 505 | 541,
            ..
        }
    )
}
