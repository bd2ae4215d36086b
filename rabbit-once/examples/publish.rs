//! Publishes a few orders and waits for the broker to confirm each one.
//!
//! ```sh
//! cargo run -p rabbit-once --example publish            # against amqp://guest:guest@127.0.0.1:5672
//! RABBIT_ONCE_URI=amqp://user:pass@host:5672/vhost cargo run -p rabbit-once --example publish
//! ```

use rabbit_once::{
    Connection, ConnectionConfig, Message, Publisher, PublisherConfig, Queue, Topology,
};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("RABBIT_ONCE_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let config = ConnectionConfig::new(&uri)?
        .name("orders-publisher")
        // Declared again on every session: a broker that lost its state gets it back.
        .topology(Topology::new().queue(Queue::new("example-orders")));
    let conn = Connection::start(config)?;
    let publisher = Publisher::new(&conn, PublisherConfig::default())?;

    // `publish` returns once the message is in the publisher's buffer (it waits while the
    // buffer is full); awaiting what it returns waits for the broker's verdict. Keeping the
    // confirmations and awaiting them afterwards lets many messages fly at once.
    let mut confirmations = Vec::new();
    for n in 1..=10 {
        let body = format!(r#"{{"order":{n},"amount_cents":{}}}"#, n * 250);
        let message = Message::to_queue("example-orders", body)
            .with_content_type("application/json")
            .with_correlation_id(format!("order-{n}"))
            .with_header("tenant", "acme");
        confirmations.push(publisher.publish(message).await?);
    }
    for confirmation in confirmations {
        let confirmed = confirmation.await?;
        println!("confirmed {}", confirmed.message_id); // a UUIDv7 that never changes on re-publish
    }

    // Anything still unconfirmed after the timeout is handed back rather than dropped.
    let unconfirmed = publisher.close(Duration::from_secs(5)).await;
    assert!(unconfirmed.is_empty());
    conn.close().await;
    Ok(())
}
