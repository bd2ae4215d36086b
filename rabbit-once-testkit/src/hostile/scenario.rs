//! What the hostile broker does to every connection: one [`Scenario`] of misbehaviour per
//! broker.

use crate::wire::RawDelivery;

/// The channel [`Scenario::FrameOnUnopenedChannel`] sends on (the client never opens it).
pub const UNOPENED_CHANNEL: u16 = 999;

/// What the broker does to every connection once the client got far enough.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// No misbehaviour: a well-behaved broker with an empty queue (a baseline for the others).
    Polite,
    /// Sends `connection.start`, reads `start-ok`, then closes the socket cleanly: a node
    /// shutting down, or a load balancer that lost its backend, mid-handshake.
    EofAfterStartOk,
    /// Answers `start-ok` with `connection.close(code, text)` instead of `tune` (403
    /// ACCESS_REFUSED is what RabbitMQ sends for bad credentials).
    CloseAfterStartOk(u16, String),
    /// Once the consumer subscribed, sends these deliveries (method, content header, body
    /// frames each), then behaves.
    Deliver(Vec<RawDelivery>),
    /// Once the consumer subscribed, writes these bytes raw, then keeps answering.
    Garbage(Vec<u8>),
    /// Once the consumer subscribed, sends a whole delivery on [`UNOPENED_CHANNEL`].
    FrameOnUnopenedChannel,
    /// Once the consumer subscribed, sends a frame whose size field promises more bytes than
    /// follow, then closes the socket (clean EOF mid-frame).
    TruncatedFrame,
    /// Once the consumer subscribed, sends a frame that ends in 0xAB instead of 0xCE, then
    /// keeps answering.
    BadFrameEnd,
    /// Behaves like [`Polite`](Self::Polite) — publishes on a channel in confirm mode are acked
    /// once their content header arrives, delivery tags counting from 1 per channel — except
    /// that a publish whose content header carries this `message_id` makes the broker close
    /// the whole connection with `code` and `text` (RabbitMQ does that with 501 FRAME_ERROR,
    /// 502 SYNTAX_ERROR or 505 UNEXPECTED_FRAME over a frame it could not take). It waits for
    /// `close-ok` (for at most a second), then drops the connection.
    CloseOnPublish {
        /// The `message_id` (raw bytes) that makes the broker close the connection.
        message_id: Vec<u8>,
        /// The reply code of its `connection.close`.
        code: u16,
        /// The reply text of its `connection.close`.
        text: String,
    },
}
