//! Connection settings: endpoints, name, heartbeat, timeouts, backoff, attempts, topology.

use crate::backoff::Backoff;
use crate::error::Error;
use crate::topology::Topology;
use crate::uri::Endpoint;
use std::fmt;
use std::time::Duration;

/// How to reach the broker and how hard to try. Built from one or more URIs.
///
/// ```
/// # use rabbit_once::ConnectionConfig;
/// # use std::time::Duration;
/// let config = ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?
///     .endpoint("amqp://guest:guest@127.0.0.1:5673/%2f")?
///     .name("orders-service")
///     .heartbeat(Duration::from_secs(10));
/// # Ok::<(), rabbit_once::Error>(())
/// ```
#[derive(Clone)]
pub struct ConnectionConfig {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) name: String,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) max_body_size: u64,
    pub(crate) topology: Topology,
}

/// RabbitMQ's hard upper bound for `max_message_size` (512 MiB): no broker delivers a larger
/// body, so the default cap never refuses a message a broker accepted.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 512 << 20;

impl ConnectionConfig {
    /// A config for one endpoint; add more with [`endpoint`](Self::endpoint).
    pub fn new(uri: &str) -> Result<Self, Error> {
        Ok(Self::with_endpoints(vec![Endpoint::parse(uri)?]))
    }

    /// A config for several endpoints, tried in turn.
    pub fn from_uris<I, S>(uris: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints = uris
            .into_iter()
            .map(|u| Endpoint::parse(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint is needed".into()));
        }
        Ok(Self::with_endpoints(endpoints))
    }

    fn with_endpoints(endpoints: Vec<Endpoint>) -> Self {
        ConnectionConfig {
            endpoints,
            name: "rabbit-once".into(),
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_attempts: None,
            frame_max: 131_072,
            channel_max: 2047,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            topology: Topology::default(),
        }
    }

    /// Adds an endpoint, tried after the ones before it.
    pub fn endpoint(mut self, uri: &str) -> Result<Self, Error> {
        self.endpoints.push(Endpoint::parse(uri)?);
        Ok(self)
    }

    /// Replaces the endpoints (for example to route through a proxy).
    pub fn endpoints(mut self, endpoints: Vec<Endpoint>) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// The connection name shown in the broker's management UI and logs, and the `connection`
    /// label of its metrics (docs/metrics.md): keep it stable across restarts (no pid), or each
    /// restart starts new time series.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Heartbeat interval asked of the broker (0 disables; default 10 s). A peer silent for two
    /// intervals is considered gone. AMQP counts it in whole seconds: a value under one second
    /// (other than zero) is refused by `Connection::start`, and fractions are rounded down.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// Limit for TCP connect + AMQP handshake of one attempt (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Delay between connection attempts (default 100 ms doubling to 10 s, jitter 0.5).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Attempts before giving up after a loss (default `None`: forever).
    pub fn max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// Largest frame to ask for (default 128 KiB).
    pub fn frame_max(mut self, n: u32) -> Self {
        self.frame_max = n;
        self
    }

    /// The largest message body a delivery may announce (default [`DEFAULT_MAX_BODY_SIZE`],
    /// 512 MiB, RabbitMQ's own maximum). A larger one is not assembled: it is handed up as a
    /// malformed delivery without its body (the idempotent consumer dead-letters it with the
    /// reason), so a peer cannot make the client buffer without bound.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Topology declared on every new session, before anything is published or consumed.
    pub fn topology(mut self, t: Topology) -> Self {
        self.topology = t;
        self
    }

    /// The endpoints, in the order they are tried (`get_`: [`endpoints`](Self::endpoints) sets them).
    pub fn get_endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint is needed".into()));
        }
        self.backoff.validate().map_err(Error::Config)?;
        if self.max_attempts == Some(0) {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config(
                "connect_timeout must be more than zero".into(),
            ));
        }
        if !self.heartbeat.is_zero() && self.heartbeat < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "heartbeat of {:?}: AMQP counts heartbeats in whole seconds; use 0 to turn them \
                 off or at least 1 s",
                self.heartbeat
            )));
        }
        for e in &self.endpoints {
            crate::transport::check_short("vhost", &e.vhost)
                .map_err(|m| Error::Config(format!("endpoint {e}: {m}")))?;
        }
        self.topology.validate().map_err(Error::Config)?;
        Ok(())
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("endpoints", &self.endpoints)
            .field("name", &self.name)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("frame_max", &self.frame_max)
            .field("max_body_size", &self.max_body_size)
            .field("topology", &self.topology)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        #[cfg(feature = "tls")]
        let c = ConnectionConfig::from_uris(["amqp://u:hunter2@a", "amqps://v:swordfish@b/x"]);
        #[cfg(not(feature = "tls"))]
        let c = ConnectionConfig::from_uris(["amqp://u:hunter2@a", "amqp://v:swordfish@b/x"]);
        let shown = format!("{:?}", c.unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert!(shown.contains("amqp://u@a:5672/%2f"), "{shown}");
    }

    #[test]
    fn validation() {
        let c = ConnectionConfig::new("amqp://h").unwrap();
        assert!(c.clone().validate().is_ok());
        assert!(c.clone().max_attempts(Some(0)).validate().is_err());
        assert!(
            c.backoff(Backoff::new(
                Duration::from_secs(2),
                Duration::from_secs(1),
                0.0
            ))
            .validate()
            .is_err()
        );
        assert!(ConnectionConfig::from_uris(Vec::<&str>::new()).is_err());
    }
}
