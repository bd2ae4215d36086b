//! `rabbit-once demo`: the whole path against a local broker — publish with connections cut on
//! purpose, consume idempotently into SQLite while connections are cut, then print the ledger.

use crate::applied::{Applied, Db};
use crate::common::{Conn, seq_body};
use rabbit_once::uri::Endpoint;
use rabbit_once::{
    Connection, Consumer, ConsumerConfig, Message, Publisher, PublisherConfig, Queue, SqliteStore,
    Topology,
};
use rabbit_once_testkit::FaultProxy;
use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// Messages to publish.
    #[arg(long, default_value_t = 5000)]
    pub count: u64,
    /// Connection cuts (each cuts the publisher's and the consumer's connection).
    #[arg(long, default_value_t = 6)]
    pub cuts: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// SQLite file for the dedup records and the `applied` table (default: a temporary file,
    /// removed at the end).
    #[arg(long)]
    pub db: Option<std::path::PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let target = Endpoint::parse(&a.conn.uris[0])?;
    let proxy = Arc::new(FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?);
    let via = target.clone().with_address("127.0.0.1", proxy.port());
    let queue = rabbit_once_testkit::unique("rabbit-once-demo");
    let temp_db = a.db.is_none();
    let db_path =
        a.db.clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("{queue}.db")));
    println!(
        "rabbit-once demo: {} messages, {target}, queue {queue}",
        a.count
    );
    println!(
        "  publisher and consumer both connect through a fault proxy (127.0.0.1:{})",
        proxy.port()
    );
    println!(
        "  consumer applies each message in SQLite {} (dedup record + `applied` row, one transaction)\n",
        db_path.display()
    );

    let topology = Topology::new().queue(Queue::new(&queue));
    let pub_conn = Connection::connect(
        a.conn
            .config("rabbit-once demo publisher")?
            .endpoints(vec![via.clone()])
            .topology(topology.clone()),
    )
    .await?;
    let con_conn = Connection::connect(
        a.conn
            .config("rabbit-once demo consumer")?
            .endpoints(vec![via])
            .topology(topology),
    )
    .await?;
    let store = SqliteStore::open(&db_path).await?;
    let db = Db::Sqlite(store.clone());
    db.prepare().await?;
    let consumer_config = ConsumerConfig::new(&queue).retry(crate::consume::retry_policy(5));
    let queues = consumer_config.queues();
    let consumer = Consumer::start(&con_conn, store, Applied::new(), consumer_config).await?;
    let publisher = Publisher::new(&pub_conn, PublisherConfig::default())?;

    // --- a cutter: cuts every connection each time count/(cuts+1) more are confirmed --------
    let started = Instant::now();
    let every = (a.count / (a.cuts + 1)).max(1);
    let cutter = {
        let (publisher, pub_conn, proxy, cuts) =
            (publisher.clone(), pub_conn.clone(), proxy.clone(), a.cuts);
        tokio::spawn(async move {
            let mut done = 0;
            for k in 1..=cuts {
                while publisher.stats().confirmed < k * every {
                    if publisher.stats().confirmed + publisher.stats().failed
                        >= publisher.stats().accepted
                        && publisher.stats().accepted > 0
                        && publisher.stats().buffered == 0
                    {
                        return done;
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                let s = publisher.stats();
                let before = pub_conn.reconnects();
                proxy.cut_all();
                done += 1;
                println!(
                    "  cut #{k}: {:>6} confirmed, {:>5} unconfirmed kept in the buffer, re-published first",
                    s.confirmed, s.buffered
                );
                let deadline = Instant::now() + Duration::from_secs(30);
                while pub_conn.reconnects() == before && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            done
        })
    };

    // --- publish -----------------------------------------------------------------------------
    let mut pending = Vec::with_capacity(a.count as usize);
    for seq in 0..a.count {
        pending.push(
            publisher
                .publish(Message::to_queue(&queue, seq_body(seq, a.size)))
                .await?,
        );
    }
    let mut confirmed_ids = HashSet::with_capacity(pending.len());
    let mut failed = 0u64;
    for (seq, c) in pending.into_iter().enumerate() {
        match c.await {
            Ok(ok) => {
                confirmed_ids.insert(ok.message_id);
            }
            Err(e) => {
                failed += 1;
                eprintln!("  message {seq} failed: {}", e.error);
            }
        }
    }
    let cuts = cutter.await?;
    let pstats = publisher.stats();
    publisher.close(Duration::from_secs(10)).await;

    // --- let the consumer finish: everything applied or skipped, the queue empty ---------------
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = consumer.stats();
        let ready = con_conn
            .queue_info(&queue)
            .await
            .map(|i| i.messages)
            .unwrap_or(1);
        if s.applied >= confirmed_ids.len() as u64 && ready == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await; // let stragglers (redeliveries) land
            if con_conn
                .queue_info(&queue)
                .await
                .map(|i| i.messages)
                .unwrap_or(1)
                == 0
            {
                break;
            }
        }
        if Instant::now() > deadline {
            eprintln!("  gave up waiting for the consumer: {s:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cstats = consumer.shutdown(Duration::from_secs(10)).await;
    let secs = started.elapsed().as_secs_f64();

    // --- the ledger, from the database ---------------------------------------------------------
    let counts = db.id_counts().await?;
    let applied_ids: HashSet<&str> = counts.iter().map(|(id, _)| id.as_str()).collect();
    let twice = counts.iter().filter(|(_, n)| *n > 1).count() as u64;
    let lost = confirmed_ids
        .iter()
        .filter(|id| !applied_ids.contains(id.as_str()))
        .count() as u64;
    let once = counts.iter().filter(|(_, n)| *n == 1).count() as u64;
    for q in &queues {
        let _ = con_conn.delete_queue(q).await;
    }
    let (pub_reconnects, con_reconnects) = (pub_conn.reconnects(), con_conn.reconnects());
    pub_conn.close().await;
    con_conn.close().await;
    if temp_db {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db_path.display()));
        }
    }

    println!();
    println!("  published           {:>7}", pstats.accepted);
    println!("  confirmed           {:>7}", confirmed_ids.len());
    println!("  failed              {failed:>7}");
    println!(
        "  re-published        {:>7}   unconfirmed at a cut, sent again with the same message_id",
        pstats.republished
    );
    println!(
        "  delivered           {:>7}   copies on the queue, and redeliveries after cuts",
        cstats.delivered
    );
    println!("  applied once        {once:>7}");
    println!(
        "  duplicates skipped  {:>7}   acked without running the handler",
        cstats.duplicates
    );
    println!("  lost                {lost:>7}   confirmed but never applied");
    println!("  applied twice       {twice:>7}");
    println!("  dead-lettered       {:>7}", cstats.dead_lettered);
    println!(
        "  cuts {cuts}, reconnects: publisher {pub_reconnects}, consumer {con_reconnects}; {secs:.1}s"
    );
    let ok = failed == 0
        && lost == 0
        && twice == 0
        && once == a.count
        && confirmed_ids.len() as u64 == a.count;
    println!(
        "\n  {}",
        if ok {
            "OK: published = confirmed = applied once; lost 0; applied twice 0"
        } else {
            "FAILED: the ledger does not balance"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
