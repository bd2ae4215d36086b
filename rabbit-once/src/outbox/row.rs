//! A message as an outbox row, and back.

use crate::error::Error;
use crate::message::Message;
use crate::transport::Properties;
use bytes::Bytes;

/// The frame size a message is checked against when it is enqueued (the default `frame_max`;
/// the publisher checks again against the one each session negotiated).
const ENQUEUE_FRAME_MAX: u32 = 131_072;

/// A message ready to be inserted: its id is assigned and it passed every check `publish` makes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutboxRow {
    pub message_id: String,
    pub ordering_key: Option<String>,
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub properties: Vec<u8>,
    pub body: Bytes,
}

impl OutboxRow {
    /// Gives `message` an id unless it has one and checks it (size against `max_size`, the
    /// property syntax and header size the broker would refuse) — so a message that can never
    /// be published is refused in the caller's transaction, not found later by the relay.
    pub(crate) fn new(
        mut message: Message,
        ordering_key: Option<&str>,
        max_size: usize,
    ) -> Result<Self, Error> {
        message.prepare(max_size, ENQUEUE_FRAME_MAX)?;
        if let Some(key) = ordering_key {
            crate::transport::check_short("ordering key", key).map_err(Error::InvalidMessage)?;
        }
        // Feature `opentelemetry`: the caller's trace context goes into the row, so the
        // consumer continues this trace, not the relay's. Without it: nothing.
        crate::trace::on_enqueue(&mut message, ENQUEUE_FRAME_MAX);
        Ok(OutboxRow {
            message_id: message.message_id().unwrap_or_default().to_owned(),
            ordering_key: ordering_key.map(str::to_owned),
            properties: message.properties.to_bytes(),
            exchange: message.exchange,
            routing_key: message.routing_key,
            mandatory: message.mandatory,
            body: message.body,
        })
    }
}

/// A committed row read back by the relay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingRow {
    /// Insert order (not commit order).
    pub id: i64,
    pub ordering_key: Option<String>,
    pub message: Message,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl PendingRow {
    /// Rebuilds the message a row holds.
    pub(crate) fn message(
        exchange: String,
        routing_key: String,
        mandatory: bool,
        properties: &[u8],
        body: Vec<u8>,
    ) -> Result<Message, Error> {
        Ok(Message {
            exchange,
            routing_key,
            body: Bytes::from(body),
            properties: Properties::from_bytes(properties)?,
            mandatory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_every_property_and_gives_the_message_back() {
        let m = Message::new("ex", "rk", "body")
            .with_message_id("m-1")
            .with_correlation_id("c")
            .with_header("tenant", "t1")
            .with_priority(3)
            .with_mandatory(false);
        let row = OutboxRow::new(m.clone(), Some("order-7"), 1 << 20).unwrap();
        assert_eq!(row.message_id, "m-1");
        assert_eq!(row.ordering_key.as_deref(), Some("order-7"));
        let back = PendingRow::message(
            row.exchange,
            row.routing_key,
            row.mandatory,
            &row.properties,
            row.body.to_vec(),
        )
        .unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn a_row_gets_an_id_and_refuses_what_the_broker_would() {
        let row = OutboxRow::new(Message::to_queue("q", "x"), None, 10).unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(&row.message_id)
                .unwrap()
                .get_version_num(),
            7
        );
        assert!(matches!(
            OutboxRow::new(Message::to_queue("q", vec![0u8; 11]), None, 10),
            Err(Error::MessageTooLarge { .. })
        ));
        assert!(matches!(
            OutboxRow::new(Message::to_queue("q", "x"), Some(&"k".repeat(300)), 10),
            Err(Error::InvalidMessage(_))
        ));
        assert!(
            PendingRow::message(String::new(), String::new(), true, &[0, 0, 1], vec![]).is_err()
        );
    }
}
