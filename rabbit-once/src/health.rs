//! [`Health`]: whether a connection, a publisher or a consumer can work now, read from state
//! the supervisor, the publisher and the consumer keep anyway — no I/O, no `await`, nothing per message — for a
//! service's readiness endpoint.

use crate::connection::{ConnectionState, Inner};
use crate::error::Error;
use std::fmt;
use std::sync::Arc;

/// Whether a [`Connection`](crate::Connection), a [`Publisher`](crate::Publisher) or a
/// `Consumer` is ready for work, and if not, why: [`Connection::health`](crate::Connection::health),
/// [`Publisher::health`](crate::Publisher::health), `Consumer::health` (feature `dedup`).
///
/// Cheap enough to call on every probe of a health endpoint: it reads the connection's state,
/// the broker's `connection.blocked` flag, the publisher's buffer room, the consumer's last word
/// on its store (a few atomic loads and short, uncontended locks), and allocates only to
/// describe what is wrong.
///
/// ```no_run
/// # fn run(publisher: rabbit_once::Publisher) {
/// let health = publisher.health();
/// if health.is_ready() {
///     // 200
/// } else {
///     eprintln!("not ready: {health}"); // 503, e.g. "the broker blocks publishing: low on memory"
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Health {
    /// What stands in the way, the connection's troubles first; empty when ready.
    pub not_ready: Vec<NotReady>,
}

/// One reason a connection, publisher or consumer is not ready.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NotReady {
    /// No session with the broker: connecting, disconnected (reconnecting), failed for good or
    /// closed. The state says which, and why.
    NotConnected(ConnectionState),
    /// The broker blocks publishing on this connection (`connection.blocked`: a memory or disk
    /// alarm). Messages are accepted into a publisher's buffer but not sent until it lifts.
    Blocked {
        /// The broker's reason, e.g. "low on memory".
        reason: String,
    },
    /// The publisher's buffer has no room: `publish` waits (back-pressure), `try_publish` fails
    /// with [`Error::BufferFull`].
    BufferFull {
        /// Messages in the buffer (accepted, no verdict yet).
        buffered: usize,
        /// The buffer's message limit ([`PublisherConfig::max_buffered`](crate::PublisherConfig::max_buffered)).
        max_buffered: usize,
        /// Body bytes in the buffer.
        buffered_bytes: usize,
        /// The buffer's byte limit ([`PublisherConfig::max_buffered_bytes`](crate::PublisherConfig::max_buffered_bytes)).
        max_buffered_bytes: usize,
    },
    /// The publisher was closed, or stopped because its connection gave up (the error).
    PublisherClosed(Option<Error>),
    /// The consumer stopped on its own (the error: the connection gave up, the work queue does
    /// not exist, …).
    ConsumerStopped(Option<Error>),
    /// The consumer's dedup store was unreachable at its last transaction: it holds its
    /// messages unacked and takes no new work until the store answers.
    StoreUnavailable {
        /// Why, as the database said.
        reason: String,
    },
}

impl Health {
    /// Whether nothing stands in the way.
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    /// Whether a session is up (there may be other reasons not to be ready).
    pub fn is_connected(&self) -> bool {
        !self
            .not_ready
            .iter()
            .any(|n| matches!(n, NotReady::NotConnected(_)))
    }

    /// The broker's reason while it blocks publishing.
    pub fn blocked(&self) -> Option<&str> {
        self.not_ready.iter().find_map(|n| match n {
            NotReady::Blocked { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    /// Why not ready, in words (the reasons joined with "; "); `None` when ready.
    pub fn reason(&self) -> Option<String> {
        (!self.is_ready()).then(|| self.to_string())
    }
}

impl fmt::Display for Health {
    /// "ready", or the reasons joined with "; ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.not_ready.is_empty() {
            return f.write_str("ready");
        }
        for (i, n) in self.not_ready.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NotConnected(state) => match state {
                ConnectionState::Connecting { attempt, endpoint } if *attempt > 1 => write!(
                    f,
                    "not connected: cannot reach {endpoint} (attempt {attempt})"
                ),
                ConnectionState::Connecting { endpoint, .. } => {
                    write!(f, "not connected: connecting to {endpoint}")
                }
                ConnectionState::Disconnected { reason, .. } => {
                    write!(f, "not connected: connection lost ({reason}); reconnecting")
                }
                ConnectionState::Failed(e) => write!(f, "not connected: gave up ({e})"),
                ConnectionState::Closed => f.write_str("not connected: the connection is closed"),
                // The session died a moment ago; the supervisor has not said so yet.
                ConnectionState::Connected { endpoint, .. } => {
                    write!(
                        f,
                        "not connected: connection to {endpoint} lost; reconnecting"
                    )
                }
            },
            NotReady::Blocked { reason } => write!(f, "the broker blocks publishing: {reason}"),
            NotReady::BufferFull {
                buffered,
                max_buffered,
                buffered_bytes,
                max_buffered_bytes,
            } => write!(
                f,
                "the publish buffer is full ({buffered}/{max_buffered} messages, \
                 {buffered_bytes}/{max_buffered_bytes} bytes)"
            ),
            NotReady::PublisherClosed(None) => f.write_str("the publisher is closed"),
            NotReady::PublisherClosed(Some(e)) => write!(f, "the publisher stopped: {e}"),
            NotReady::ConsumerStopped(None) => f.write_str("the consumer stopped"),
            NotReady::ConsumerStopped(Some(e)) => write!(f, "the consumer stopped: {e}"),
            NotReady::StoreUnavailable { reason } => {
                write!(f, "the dedup store is unreachable: {reason}")
            }
        }
    }
}

/// The connection's part of a [`Health`], readable without keeping the connection open: a
/// publisher holds one (it must not keep the supervisor alive the way a `Connection` does).
#[derive(Clone)]
pub(crate) struct ConnectionProbe(pub(crate) Arc<Inner>);

impl fmt::Debug for ConnectionProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionProbe")
    }
}

impl ConnectionProbe {
    /// Adds what keeps the connection from being ready to `out`: no live session, or a
    /// session the broker blocks.
    ///
    /// The session decides, not the state: the supervisor hands a new session out a moment
    /// before it says `Connected` (so `Connection::connect` may return in between), and a
    /// session may die a moment before it says `Disconnected`.
    pub(crate) fn check(&self, out: &mut Vec<NotReady>) {
        {
            let session = self.0.session.borrow();
            let live = session.as_ref().filter(|s| !s.link.is_closed());
            if let Some(s) = live
                && !matches!(
                    *self.0.state.borrow(),
                    ConnectionState::Failed(_) | ConnectionState::Closed
                )
            {
                if let Some(reason) = s.link.blocked().borrow().as_ref() {
                    out.push(NotReady::Blocked {
                        reason: reason.clone(),
                    });
                }
                return;
            }
        }
        out.push(NotReady::NotConnected(self.0.state.borrow().clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_words() {
        let ready = Health::default();
        assert!(ready.is_ready() && ready.is_connected());
        assert_eq!(ready.to_string(), "ready");
        assert_eq!(ready.reason(), None);
        let h = Health {
            not_ready: vec![
                NotReady::NotConnected(ConnectionState::Connecting {
                    attempt: 3,
                    endpoint: "amqp://guest@127.0.0.1:5672/%2f".into(),
                }),
                NotReady::BufferFull {
                    buffered: 10,
                    max_buffered: 10,
                    buffered_bytes: 100,
                    max_buffered_bytes: 1000,
                },
            ],
        };
        assert!(!h.is_ready() && !h.is_connected());
        assert_eq!(
            h.reason().unwrap(),
            "not connected: cannot reach amqp://guest@127.0.0.1:5672/%2f (attempt 3); \
             the publish buffer is full (10/10 messages, 100/1000 bytes)"
        );
        let blocked = Health {
            not_ready: vec![NotReady::Blocked {
                reason: "low on memory".into(),
            }],
        };
        assert!(blocked.is_connected());
        assert_eq!(blocked.blocked(), Some("low on memory"));
        assert_eq!(
            blocked.to_string(),
            "the broker blocks publishing: low on memory"
        );
        let consumer = Health {
            not_ready: vec![
                NotReady::NotConnected(ConnectionState::Closed),
                NotReady::ConsumerStopped(Some(Error::Closed)),
                NotReady::StoreUnavailable {
                    reason: "connection refused".into(),
                },
            ],
        };
        let text = consumer.to_string();
        assert!(
            text.starts_with("not connected: the connection is closed; the consumer stopped: ")
                && text.ends_with("; the dedup store is unreachable: connection refused"),
            "{text}"
        );
    }
}
