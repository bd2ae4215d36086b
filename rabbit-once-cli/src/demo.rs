//! `rabbit-once demo`: the whole path against a local broker, with connections cut on purpose
//! through a fault proxy, then the ledger.

use crate::common::{Conn, seq_body, seq_of};
use rabbit_once::uri::Endpoint;
use rabbit_once::{
    Connection, Message, Publisher, PublisherConfig, Queue, Subscription, SubscriptionConfig,
    Topology,
};
use rabbit_once_testkit::FaultProxy;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// Messages to publish.
    #[arg(long, default_value_t = 5000)]
    pub count: u64,
    /// Connection cuts while publishing.
    #[arg(long, default_value_t = 6)]
    pub cuts: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let target = Endpoint::parse(&a.conn.uris[0])?;
    let proxy = std::sync::Arc::new(
        FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?,
    );
    let via = target.clone().with_address("127.0.0.1", proxy.port());
    let queue = rabbit_once_testkit::unique("rabbit-once-demo");
    println!(
        "rabbit-once demo: {} messages to {target}, queue {queue}",
        a.count
    );
    println!(
        "  through a fault proxy on 127.0.0.1:{} that will cut every connection {} times\n",
        proxy.port(),
        a.cuts
    );

    let topology = Topology::new().queue(Queue::new(&queue));
    let config = a
        .conn
        .config("rabbit-once demo")?
        .endpoints(vec![via])
        .topology(topology);
    let conn = Connection::connect(config).await?;
    let publisher = Publisher::new(&conn, PublisherConfig::default())?;

    // --- publish; a cutter cuts every connection each time count/(cuts+1) more are confirmed ---
    let started = Instant::now();
    let every = (a.count / (a.cuts + 1)).max(1);
    let cutter = {
        let (publisher, conn, cuts, proxy) =
            (publisher.clone(), conn.clone(), a.cuts, proxy.clone());
        tokio::spawn(async move {
            let mut done = 0;
            for k in 1..=cuts {
                while publisher.stats().confirmed < k * every {
                    if publisher.stats().buffered == 0 && publisher.stats().confirmed > 0 {
                        return done;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let s = publisher.stats();
                let before = conn.reconnects();
                proxy.cut_all();
                done += 1;
                println!(
                    "  cut #{k}: {:>6} confirmed, {:>5} in the buffer unconfirmed -> kept, re-published first",
                    s.confirmed, s.buffered
                );
                let deadline = Instant::now() + Duration::from_secs(30);
                while conn.reconnects() == before && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            done
        })
    };
    let mut pending = Vec::with_capacity(a.count as usize);
    for seq in 0..a.count {
        pending.push(
            publisher
                .publish(Message::to_queue(&queue, seq_body(seq, a.size)))
                .await?,
        );
    }
    let mut ids = HashMap::with_capacity(pending.len());
    let mut failed = 0u64;
    for (seq, c) in pending.into_iter().enumerate() {
        match c.await {
            Ok(ok) => {
                ids.insert(seq as u64, ok.message_id);
            }
            Err(e) => {
                failed += 1;
                eprintln!("  message {seq} failed: {}", e.error);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cuts = cutter.await?;
    let stats = publisher.stats();
    publisher.close(Duration::from_secs(10)).await;

    // --- read the queue back --------------------------------------------------------------
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&queue).prefetch(1000))?;
    let mut copies: HashMap<u64, u32> = HashMap::new();
    let mut wrong_id = 0u64;
    let mut on_queue = 0u64;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
        on_queue += 1;
        if let Some(seq) = seq_of(d.body()) {
            *copies.entry(seq).or_default() += 1;
            if ids.get(&seq).map(String::as_str) != d.message_id() {
                wrong_id += 1;
            }
        }
        d.ack();
    }
    sub.close(Duration::from_secs(5)).await;
    conn.delete_queue(&queue).await?;
    conn.close().await;

    let missing = (0..a.count).filter(|s| !copies.contains_key(s)).count() as u64;
    let duplicated = copies.values().filter(|n| **n > 1).count() as u64;
    println!();
    println!("  published        {:>8}", stats.accepted);
    println!(
        "  confirmed        {:>8}   ({:.0} msg/s with {} cuts)",
        ids.len(),
        ids.len() as f64 / secs,
        cuts
    );
    println!("  failed           {failed:>8}");
    println!(
        "  re-published     {:>8}   (unconfirmed at a cut, sent again with the same message_id)",
        stats.republished
    );
    println!("  reconnects       {:>8}", conn.reconnects());
    println!(
        "  on the queue     {on_queue:>8}   ({} distinct seq)",
        copies.len()
    );
    println!("  missing          {missing:>8}");
    println!(
        "  duplicated       {duplicated:>8}   (same message_id: the consumer's dedup skips these)"
    );
    println!("  id changed       {wrong_id:>8}");
    let ok = failed == 0 && missing == 0 && wrong_id == 0 && ids.len() as u64 == a.count;
    println!(
        "\n  {}",
        if ok {
            "OK: every message confirmed and on the queue; nothing lost"
        } else {
            "FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
