//! Connection state as the supervisor publishes it, and the live session components watch for.

use crate::error::Error;
use crate::transport;

/// Where the connection stands. Published on a watch channel by the supervisor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Trying to connect (`attempt` counts consecutive failures + 1).
    Connecting { attempt: u32, endpoint: String },
    /// A session is up. `epoch` counts sessions, from 1.
    Connected { epoch: u64, endpoint: String },
    /// The session `epoch` was lost; a new attempt follows.
    Disconnected { epoch: u64, reason: Error },
    /// The supervisor stopped: a fatal error (bad credentials, refused vhost, topology conflict)
    /// or the maximum number of attempts.
    Failed(Error),
    /// Closed by the application.
    Closed,
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// The error that ended the connection for good, if it has ended.
    pub fn terminal_error(&self) -> Option<Error> {
        match self {
            ConnectionState::Failed(e) => Some(e.clone()),
            ConnectionState::Closed => Some(Error::Closed),
            _ => None,
        }
    }
}

/// One live AMQP connection and the epoch it belongs to. Components open their channels on it
/// and wait for a newer epoch when it dies.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub epoch: u64,
    pub conn: transport::Link,
}
