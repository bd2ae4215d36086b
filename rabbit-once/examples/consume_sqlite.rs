//! An idempotent consumer on SQLite (the embedded default): each order is written to an
//! `orders` table in the same transaction as its dedup record, so a redelivered or duplicated
//! message is acked without being applied twice. Run `--example publish` first.
//!
//! ```sh
//! cargo run -p rabbit-once --example consume_sqlite     # stops after 5 s without messages
//! ```

use rabbit_once::sqlx::{self, Sqlite, Transaction};
use rabbit_once::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Delivery, Handler, HandlerError,
    Outcome, Queue, SqliteStore, Topology,
};
use std::time::Duration;

/// Applies one order: inserts it into `orders`, inside the consumer's transaction.
struct SaveOrder;

impl Handler<Sqlite> for SaveOrder {
    async fn handle<'a>(
        &'a self,
        msg: &'a Delivery,
        tx: &'a mut Transaction<'static, Sqlite>,
    ) -> Result<Outcome, HandlerError> {
        let Ok(body) = std::str::from_utf8(msg.body()) else {
            // Never valid: dead-letter it now, with the reason.
            return Ok(Outcome::reject("the body is not UTF-8"));
        };
        sqlx::query("INSERT INTO orders (message_id, body) VALUES (?, ?)")
            .bind(msg.message_id().unwrap_or_default())
            .bind(body)
            .execute(&mut **tx)
            .await?; // an error rolls back; the message is retried, then dead-lettered
        Ok(Outcome::Done)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("RABBIT_ONCE_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let path = std::env::temp_dir().join("rabbit-once-example-orders.db");

    // The store holds the dedup records; the handler's own table lives in the same database.
    let store = SqliteStore::open(&path).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (message_id TEXT PRIMARY KEY, body TEXT)")
        .execute(store.pool())
        .await?;

    let config = ConnectionConfig::new(&uri)?
        .name("orders-consumer")
        .topology(Topology::new().queue(Queue::new("example-orders")));
    let conn = Connection::start(config)?;
    // The consumer group defaults to the queue name: it names the dedup records, so keep it
    // when renaming the queue (`.group("orders")`).
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        SaveOrder,
        ConsumerConfig::new("example-orders"),
    )
    .await?;

    // Stop once nothing new has been applied for 5 seconds.
    let mut last = u64::MAX;
    while consumer.stats().applied != last {
        last = consumer.stats().applied;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let stats = consumer.close(Duration::from_secs(5)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(store.pool())
        .await?;
    println!(
        "applied {} (duplicates skipped {}), {rows} orders in {}",
        stats.applied,
        stats.duplicates,
        path.display()
    );
    conn.close().await;
    Ok(())
}
