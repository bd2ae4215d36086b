//! [`PublisherConfig`]: the publisher's options, their defaults and their checks.

use crate::backoff::Backoff;
use crate::error::Error;
use std::time::Duration;

/// Publisher options. The defaults suit most services.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub(crate) max_buffered: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) window: usize,
    pub(crate) max_message_size: usize,
    pub(crate) nack_retries: u32,
    pub(crate) nack_backoff: Backoff,
    pub(crate) name: String,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            max_buffered: 10_000,
            max_buffered_bytes: 64 << 20,
            window: 1_000,
            max_message_size: 128 << 20,
            nack_retries: 5,
            nack_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5),
            name: "default".into(),
        }
    }
}

impl PublisherConfig {
    /// Most messages the buffer holds (accepted, not yet confirmed). Default 10,000.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n;
        self
    }

    /// Most body bytes the buffer holds. Default 64 MiB.
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.max_buffered_bytes = n;
        self
    }

    /// Most messages in flight (sent, unconfirmed) on the channel. Default 1,000.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// Largest body accepted; larger ones are refused before they reach the wire.
    /// Default 128 MiB (RabbitMQ's default `max_message_size`).
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = n;
        self
    }

    /// How many times a nacked message is published again before it fails. Default 5.
    pub fn nack_retries(mut self, n: u32) -> Self {
        self.nack_retries = n;
        self
    }

    /// Wait before publishing a nacked message again: the first retry after about `min`,
    /// doubling up to `max`, with jitter. Default 100 ms doubling to 5 s, jitter 0.5.
    pub fn nack_backoff(mut self, b: Backoff) -> Self {
        self.nack_backoff = b;
        self
    }

    /// The `publisher` label of this publisher's metrics (`docs/metrics.md`), so several
    /// publishers on one connection can be told apart. Keep it to a fixed word per role (never
    /// anything per message). Default `default`; a consumer's publisher of retry and
    /// dead-letter copies is `copies`, an outbox relay's `outbox`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Refuses options the publisher cannot run with (a zero limit, a byte limit over 4 GiB,
    /// an invalid backoff).
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.max_buffered == 0 || self.window == 0 {
            return Err(Error::Config(
                "max_buffered and window must be at least 1".into(),
            ));
        }
        if self.max_buffered_bytes == 0 || self.max_buffered_bytes > u32::MAX as usize {
            return Err(Error::Config(
                "max_buffered_bytes must be between 1 and 4 GiB".into(),
            ));
        }
        self.nack_backoff.validate().map_err(Error::Config)
    }
}
