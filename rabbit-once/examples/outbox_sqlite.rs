//! The transactional outbox on SQLite: an order row and its "order created" message commit in
//! one transaction (or neither does), and the relay publishes the message once the transaction
//! committed — even if this process had died in between, the next start would publish it.
//!
//! ```sh
//! cargo run -p rabbit-once --example outbox_sqlite
//! ```

use rabbit_once::sqlx;
use rabbit_once::{
    Connection, ConnectionConfig, Message, Queue, Relay, RelayConfig, SqliteOutbox, SqliteStore,
    Store, Topology,
};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("RABBIT_ONCE_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let path = std::env::temp_dir().join("rabbit-once-example-outbox.db");

    let store = SqliteStore::open(&path).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)")
        .execute(store.pool())
        .await?;
    let outbox = SqliteOutbox::new(store.pool().clone());
    outbox.migrate().await?;

    let conn = Connection::start(
        ConnectionConfig::new(&uri)?
            .name("orders-outbox")
            .topology(Topology::new().queue(Queue::new("example-order-events"))),
    )?;
    let relay = Relay::start(&conn, outbox.clone(), RelayConfig::default())?;

    for id in 1..=5i64 {
        let mut tx = store.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO orders (id, total) VALUES (?, ?)")
            .bind(id)
            .bind(id * 250)
            .execute(&mut *tx)
            .await?;
        let event = Message::to_queue("example-order-events", format!(r#"{{"order":{id}}}"#))
            .with_content_type("application/json");
        // Rows of one key go out in the order they were written.
        let message_id = outbox
            .enqueue_keyed(&mut tx, event, &format!("order-{id}"))
            .await?;
        tx.commit().await?; // the order and its message, together
        println!("order {id} committed; its message {message_id} goes out now");
    }

    // Give the relay a moment, then stop it: what it has not confirmed stays in the table.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    println!("relayed {} messages", stats.relayed);
    conn.close().await;
    Ok(())
}
