//! `rabbit-once demo`: the whole path against a local broker — publish with connections cut on
//! purpose, consume idempotently into SQLite while connections are cut, then print the ledger.
//! Its queues and temporary files are removed at the end, also after an error or Ctrl-C.

use crate::applied::{Applied, Db};
use crate::common::{Conn, connect, seq_body, stop_signal};
use rabbit_once::Endpoint;
use rabbit_once::{
    Connection, Consumer, ConsumerConfig, ConsumerStats, Message, Publisher, PublisherConfig,
    PublisherStats, Queue, SqliteStore, Topology,
};
use rabbit_once_testkit::FaultProxy;
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The flags of `rabbit-once demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Broker URIs and heartbeat.
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

/// Runs the demo and prints its ledger; success only if everything was applied exactly once.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    // 1. A fault proxy in front of the broker; a queue and a SQLite file of the demo's own.
    let target = Endpoint::parse(&a.conn.uris[0])?;
    let proxy = Arc::new(FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?);
    let via = target.clone().with_address("127.0.0.1", proxy.port());
    let queue = rabbit_once_testkit::unique("rabbit-once-demo");
    let temp_db = a.db.is_none();
    let db_path =
        a.db.clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("{queue}.db")));
    print_intro(&a, &target, &queue, proxy.port(), &db_path);
    let outcome = tokio::select! {
        r = demo(&a, via, &queue, &proxy, &db_path) => Some(r),
        _ = stop_signal() => None,
    };
    // The demo's queues and (unless --db was given) its database go, whatever happened.
    clean_up(&a, &queue, temp_db.then_some(db_path.as_path())).await;
    match outcome {
        Some(r) => r,
        None => {
            println!("\n  interrupted: the demo's queues and temporary files are removed");
            Ok(crate::exit::Status::Incomplete.into())
        }
    }
}

/// How long clean-up waits for the broker: after a demo that found no broker, not the whole
/// `--connect-wait` again.
const CLEAN_UP_WAIT: u64 = 5;

/// Deletes the demo's queue with its retry and dead-letter queues (over a connection of its
/// own, straight to the broker, waiting at most [`CLEAN_UP_WAIT`] seconds for it, or until
/// Ctrl-C or SIGTERM) and the temporary database with its side files.
async fn clean_up(a: &Args, queue: &str, temp_db: Option<&Path>) {
    let flags = Conn {
        connect_wait: CLEAN_UP_WAIT,
        ..a.conn.clone()
    };
    let connected = async {
        let config = flags.config("rabbit-once demo clean-up").ok()?;
        connect(&flags, config).await.ok()
    };
    let connected = tokio::select! {
        c = connected => c,
        _ = stop_signal() => None,
    };
    if let Some(conn) = connected {
        for q in consumer_config(queue).queues() {
            let _ = conn.delete_queue(&q).await;
        }
        conn.close().await;
    }
    if let Some(path) = temp_db {
        for ext in ["", "-wal", "-shm", "-relay.lock"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}

/// The consumer's configuration: the queues it declares follow from it.
fn consumer_config(queue: &str) -> ConsumerConfig {
    ConsumerConfig::new(queue).retry(crate::consume::retry_policy(5))
}

/// Steps 2 to 8: the run, its ledger printed; success if it balances.
async fn demo(
    a: &Args,
    via: Endpoint,
    queue: &str,
    proxy: &Arc<FaultProxy>,
    db_path: &Path,
) -> anyhow::Result<ExitCode> {
    // 2. A publisher and an idempotent consumer, each on its own connection through the proxy.
    let parts = Parts::start(a, via, queue, db_path).await?;
    let Parts {
        pub_conn,
        con_conn,
        db,
        consumer,
        publisher,
    } = parts;

    // 3. A cutter cuts every connection each time count/(cuts+1) more are confirmed.
    let started = Instant::now();
    let cutter = spawn_cutter(&publisher, &pub_conn, proxy, a.count, a.cuts);

    // 4. Publish everything, then await every confirm.
    let (confirmed_ids, failed) = publish_all(&publisher, queue, a.count, a.size).await?;
    let cuts = cutter.await?;
    let pstats = publisher.stats();
    publisher.close(Duration::from_secs(10)).await;

    // 5. Let the consumer finish: everything applied or skipped, the queue empty.
    wait_for_consumer(&consumer, &con_conn, queue, confirmed_ids.len() as u64).await;
    let cstats = consumer.close(Duration::from_secs(10)).await;
    let secs = started.elapsed().as_secs_f64();

    // 6. The ledger, from the database.
    let (once, twice, lost) = count_applied(&db, &confirmed_ids).await?;

    // 7. Close the connections (the caller removes the queues and a temporary database).
    let (pub_reconnects, con_reconnects) = (pub_conn.reconnects(), con_conn.reconnects());
    pub_conn.close().await;
    con_conn.close().await;

    // 8. Print the ledger and the verdict.
    let ledger = Ledger {
        pstats,
        cstats,
        confirmed: confirmed_ids.len() as u64,
        failed,
        once,
        twice,
        lost,
        cuts,
        pub_reconnects,
        con_reconnects,
        secs,
    };
    ledger.print();
    let ok = ledger.balances(a.count);
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

fn print_intro(a: &Args, target: &Endpoint, queue: &str, proxy_port: u16, db_path: &Path) {
    println!(
        "rabbit-once demo: {} messages, {target}, queue {queue}",
        a.count
    );
    println!(
        "  publisher and consumer both connect through a fault proxy (127.0.0.1:{proxy_port})"
    );
    println!(
        "  consumer applies each message in SQLite {} (dedup record + `applied` row, one transaction)\n",
        db_path.display()
    );
}

/// The demo's moving parts.
struct Parts {
    pub_conn: Connection,
    con_conn: Connection,
    db: Db,
    consumer: Consumer,
    publisher: Publisher,
}

impl Parts {
    async fn start(a: &Args, via: Endpoint, queue: &str, db_path: &Path) -> anyhow::Result<Parts> {
        let topology = Topology::new().queue(Queue::new(queue));
        let pub_conn = connect(
            &a.conn,
            a.conn
                .config("rabbit-once demo publisher")?
                .endpoints(vec![via.clone()])
                .topology(topology.clone()),
        )
        .await?;
        let con_conn = connect(
            &a.conn,
            a.conn
                .config("rabbit-once demo consumer")?
                .endpoints(vec![via])
                .topology(topology),
        )
        .await?;
        let store = SqliteStore::open(db_path).await?;
        let db = Db::Sqlite(store.clone());
        db.prepare().await?;
        let consumer =
            Consumer::start(&con_conn, store, Applied::new(), consumer_config(queue)).await?;
        let publisher = Publisher::new(&pub_conn, PublisherConfig::default())?;
        Ok(Parts {
            pub_conn,
            con_conn,
            db,
            consumer,
            publisher,
        })
    }
}

/// A task that cuts every connection through the proxy each time another `count / (cuts + 1)`
/// messages are confirmed, waiting for the publisher's reconnect after each cut; it returns how
/// many cuts it made (fewer when publishing ends first).
fn spawn_cutter(
    publisher: &Publisher,
    pub_conn: &Connection,
    proxy: &Arc<FaultProxy>,
    count: u64,
    cuts: u64,
) -> tokio::task::JoinHandle<u64> {
    let every = (count / (cuts + 1)).max(1);
    let (publisher, pub_conn, proxy) = (publisher.clone(), pub_conn.clone(), proxy.clone());
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
}

/// Publishes `count` sequence-numbered messages, then awaits each confirm: the confirmed
/// message ids and the number that failed.
async fn publish_all(
    publisher: &Publisher,
    queue: &str,
    count: u64,
    size: usize,
) -> anyhow::Result<(HashSet<String>, u64)> {
    let mut pending = Vec::with_capacity(count as usize);
    for seq in 0..count {
        pending.push(
            publisher
                .publish(Message::to_queue(queue, seq_body(seq, size)))
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
    Ok((confirmed_ids, failed))
}

/// Waits (at most 120 s) until the consumer has applied `confirmed` messages and the queue has
/// stayed empty for 300 ms.
async fn wait_for_consumer(
    consumer: &Consumer,
    con_conn: &Connection,
    queue: &str,
    confirmed: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = consumer.stats();
        let ready = con_conn
            .queue_info(queue)
            .await
            .map(|i| i.messages)
            .unwrap_or(1);
        if s.applied >= confirmed && ready == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await; // let stragglers (redeliveries) land
            if con_conn
                .queue_info(queue)
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
}

/// From the `applied` table: messages applied once, rows beyond the first of those applied more
/// than once, and confirmed messages never applied.
async fn count_applied(
    db: &Db,
    confirmed_ids: &HashSet<String>,
) -> anyhow::Result<(u64, u64, u64)> {
    let counts = db.id_counts().await?;
    let applied_ids: HashSet<&str> = counts.iter().map(|(id, _)| id.as_str()).collect();
    let twice = counts.iter().filter(|(_, n)| *n > 1).count() as u64;
    let lost = confirmed_ids
        .iter()
        .filter(|id| !applied_ids.contains(id.as_str()))
        .count() as u64;
    let once = counts.iter().filter(|(_, n)| *n == 1).count() as u64;
    Ok((once, twice, lost))
}

/// What the demo found.
struct Ledger {
    pstats: PublisherStats,
    cstats: ConsumerStats,
    confirmed: u64,
    failed: u64,
    once: u64,
    twice: u64,
    lost: u64,
    cuts: u64,
    pub_reconnects: u64,
    con_reconnects: u64,
    secs: f64,
}

impl Ledger {
    /// Nothing failed, lost or applied twice, and all `count` messages confirmed and applied once.
    fn balances(&self, count: u64) -> bool {
        self.failed == 0
            && self.lost == 0
            && self.twice == 0
            && self.once == count
            && self.confirmed == count
    }

    fn print(&self) {
        let Ledger {
            pstats,
            cstats,
            confirmed,
            failed,
            once,
            twice,
            lost,
            cuts,
            pub_reconnects,
            con_reconnects,
            secs,
        } = self;
        println!();
        println!("  published           {:>7}", pstats.accepted);
        println!("  confirmed           {confirmed:>7}");
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
    }
}
