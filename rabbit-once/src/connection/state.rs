//! Connection state as the supervisor publishes it, and the live session components watch for.

use crate::error::Error;
use crate::transport;

/// Where the connection stands. Published on a watch channel by the supervisor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Trying to connect.
    Connecting {
        /// Consecutive failures + 1.
        attempt: u32,
        /// The endpoint being tried (without its password).
        endpoint: String,
    },
    /// A session is up.
    Connected {
        /// Counts sessions, from 1.
        epoch: u64,
        /// The endpoint connected to (without its password).
        endpoint: String,
    },
    /// A session was lost; a new attempt follows.
    Disconnected {
        /// The session that was lost.
        epoch: u64,
        /// Why it was lost.
        reason: Error,
    },
    /// The supervisor stopped: a fatal error (bad credentials, refused vhost, topology conflict)
    /// or the maximum number of attempts.
    Failed(Error),
    /// Closed by the application.
    Closed,
}

impl ConnectionState {
    /// Whether a session is up.
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
    pub link: transport::Link,
    /// The virtual host of the endpoint it is connected to.
    pub vhost: String,
}
