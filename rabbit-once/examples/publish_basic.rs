//! Publishes a few messages to a queue and waits for every confirm.
//!
//! `cargo run --example publish_basic -- amqp://guest:guest@127.0.0.1:5672/%2f`
use rabbit_once::{
    Connection, ConnectionConfig, Message, Publisher, PublisherConfig, Queue, Topology,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = format!("rabbit-once-example-{}", std::process::id());
    let config = ConnectionConfig::new(&uri)?
        .name("publish_basic example")
        .topology(Topology::new().queue(Queue::new(&queue).auto_delete(true)));
    let conn = Connection::connect(config).await?;
    let publisher = Publisher::new(&conn, PublisherConfig::default())?;
    let mut confirmations = Vec::new();
    for i in 0..10 {
        confirmations.push(
            publisher
                .publish(Message::to_queue(&queue, format!("hello {i}")))
                .await?,
        );
    }
    for c in confirmations {
        let confirmed = c.await?;
        println!(
            "confirmed #{} id {}",
            confirmed.sequence, confirmed.message_id
        );
    }
    let info = conn.queue_info(&queue).await?;
    println!("queue {queue} holds {} messages", info.messages);
    conn.delete_queue(&queue).await?;
    publisher.close(std::time::Duration::from_secs(5)).await;
    conn.close().await;
    Ok(())
}
