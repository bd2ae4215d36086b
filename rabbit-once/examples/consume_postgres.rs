//! An idempotent consumer on PostgreSQL, the store to use when several consumer processes
//! share one queue: run this example twice and each order is still applied once. The handler
//! is a closure ([`handler_fn`]). Run `--example publish` first.
//!
//! ```sh
//! RABBIT_ONCE_PG=postgres://postgres@127.0.0.1:5432/test cargo run -p rabbit-once --example consume_postgres
//! ```

use rabbit_once::sqlx::{self, Postgres, Transaction};
use rabbit_once::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Outcome, PostgresStore, Queue,
    Topology, handler_fn,
};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("RABBIT_ONCE_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let pg = std::env::var("RABBIT_ONCE_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    let store = PostgresStore::connect(&pg).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_orders (message_id TEXT PRIMARY KEY, body BYTEA)",
    )
    .execute(store.pool())
    .await?;

    let handler = handler_fn(|msg, tx: &mut Transaction<'static, Postgres>| {
        Box::pin(async move {
            sqlx::query("INSERT INTO example_orders (message_id, body) VALUES ($1, $2)")
                .bind(msg.message_id().unwrap_or_default())
                .bind(msg.body().as_ref())
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::Done)
        })
    });

    let config = ConnectionConfig::new(&uri)?
        .name("orders-consumer-pg")
        .topology(Topology::new().queue(Queue::new("example-orders")));
    let conn = Connection::start(config)?;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        handler,
        ConsumerConfig::new("example-orders").group("orders"),
    )
    .await?;

    let mut last = u64::MAX;
    while consumer.stats().applied != last {
        last = consumer.stats().applied;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let stats = consumer.close(Duration::from_secs(5)).await;
    println!(
        "applied {}, duplicates skipped {}",
        stats.applied, stats.duplicates
    );
    conn.close().await;
    Ok(())
}
