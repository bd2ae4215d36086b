//! `rabbit-once publish`: N sequence-numbered messages, or the lines of a file (`--from`), with
//! confirms, across any faults. Ctrl-C or SIGTERM stops publishing, waits for what is in flight,
//! and prints the summary.
//!
//! Layout: `mod.rs` the flags and numbered messages, `from.rs` publishing the lines of a file,
//! `lines.rs` how a line becomes a message.

mod from;
mod lines;

use crate::common::{Conn, await_confirmations, bar, seq_body, stop_signal};
use rabbit_once::{ConnectionState, Message, Publisher, PublisherConfig, Queue, Topology};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The flags of `rabbit-once publish`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// The Prometheus endpoint.
    #[command(flatten)]
    pub metrics: crate::common::Metrics,
    /// Queue to publish to (declared durable). With --from: the default routing key, and
    /// optional when --exchange or --routing-key is given.
    #[arg(long, required_unless_present_any = ["from", "exchange", "routing_key"])]
    pub queue: Option<String>,
    /// Publish one message per line of FILE (`-`: stdin) instead of numbered messages. A
    /// malformed line stops the run before it (exit 2, naming the line); blank lines are
    /// skipped.
    #[arg(long, value_name = "FILE")]
    pub from: Option<String>,
    /// With --from: each line is the body (raw) or a JSON object with the optional fields id
    /// (the message_id), exchange, routing_key, headers (an object of strings, numbers and
    /// booleans) and body (a string, or any JSON value sent as its text).
    #[arg(long, value_enum, default_value_t = lines::Format::Raw, requires = "from")]
    pub format: lines::Format,
    /// With --from: the exchange a line goes to unless it names one (default: the default
    /// exchange, which routes to the queue named by the routing key).
    #[arg(long, requires = "from")]
    pub exchange: Option<String>,
    /// With --from: the routing key of a line that names none (default: --queue).
    #[arg(long, requires = "from")]
    pub routing_key: Option<String>,
    /// With --from: write every line that did not end confirmed — refused, unroutable, handed
    /// back, and after a malformed line, an interruption or an error the rest of FILE — to this
    /// file, verbatim, to retry with `--from`. Its directory must be writable (checked before
    /// anything is published); it is replaced at the end in one step (a temporary file renamed
    /// over it), so it may be FILE itself.
    #[arg(long, value_name = "FILE", requires = "from")]
    pub failed: Option<std::path::PathBuf>,
    /// How many messages.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Body size in bytes; the body starts with {"seq":i}.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Messages per second (default: as fast as confirms allow).
    #[arg(long)]
    pub rate: Option<u64>,
    /// First sequence number.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// message_id = <prefix>-<seq> (stable across runs) instead of a fresh UUIDv7.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// --queue is a quorum queue (RabbitMQ ≥ 3.10): declared exactly as `consume --quorum`
    /// declares it with its default `--max-attempts` (a work queue with other arguments would be
    /// refused by the broker), with its retry and dead-letter queues. Needs --queue.
    #[arg(long)]
    pub quorum: bool,
    /// Delivery mode 1 instead of persistent.
    #[arg(long)]
    pub transient: bool,
    /// Publish without `mandatory` (an unroutable message is then dropped by the broker
    /// instead of returned).
    #[arg(long)]
    pub no_mandatory: bool,
    /// Seconds to wait for outstanding confirms at the end.
    #[arg(long, default_value_t = 60)]
    pub close_timeout: u64,
    /// Most messages in flight (sent, unconfirmed).
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Append a line per event to this file, written at once (no buffering, so a SIGKILL loses
    /// nothing written): `a SEQ` accepted, `c SEQ MICROS` confirmed at that unix time, `f SEQ KIND`
    /// failed. Used by `chaos`.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Commit each message through the transactional outbox in this database (sqlite:PATH or
    /// postgres://…), with a row (seq, message_id) in its table `sent`, and relay it from this
    /// process; exit 0 once every committed row is confirmed.
    #[arg(long, value_name = "DB")]
    pub outbox: Option<String>,
    /// With --outbox on PostgreSQL: the schema of the outbox and `sent` (created if missing).
    /// Ignored without --outbox (so one RABBIT_ONCE_SCHEMA serves `consume` too).
    #[arg(long)]
    pub schema: Option<String>,
    /// With --outbox: messages per transaction (ignored without).
    #[arg(long, default_value_t = 1)]
    pub tx_size: u64,
    /// With --outbox: go on after the highest seq of --start..--start+--count committed in
    /// `sent` (after a crash or a kill).
    #[arg(long)]
    pub resume: bool,
    /// With --outbox: only commit; leave the publishing to `rabbit-once relay` processes.
    #[arg(long)]
    pub no_relay: bool,
}

/// An unbuffered line log: every line is one `write` system call.
struct Report(Option<std::fs::File>);

impl Report {
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Report(match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        }))
    }

    fn line(&mut self, s: std::fmt::Arguments<'_>) {
        if let Some(f) = &mut self.0 {
            use std::io::Write;
            let _ = f.write_all(format!("{s}\n").as_bytes());
        }
    }
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// What the publisher did, printed at the end.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Messages accepted by the publisher.
    pub published: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Messages that failed, by error kind.
    pub failed: BTreeMap<String, u64>,
    /// Messages sent again after a reconnect (unconfirmed when the connection was lost).
    pub republished: u64,
    /// Reconnects of the publisher's connection.
    pub reconnects: u64,
    /// Messages still unconfirmed when the close timeout passed, handed back.
    pub handed_back: u64,
    /// Seconds from the first publish to the end.
    pub seconds: f64,
    /// Stopped early by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    /// Messages (or lines) never published: after an interruption or a malformed line.
    pub not_published: u64,
}

/// Publishes the messages, waits for their confirms, and prints the summary; success only if
/// every message was confirmed. With `--metrics-addr`, serves the metrics meanwhile (and
/// `--metrics-linger` seconds after).
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let metrics = a.metrics.clone();
    metrics.start()?;
    let result = publish(a).await;
    metrics.linger().await;
    result
}

async fn publish(a: Args) -> anyhow::Result<ExitCode> {
    if a.queue.is_none() && a.from.is_none() {
        return Err(crate::exit::usage(
            "numbered messages go to --queue: give it (or --from FILE)",
        ));
    }
    if a.quorum && a.queue.is_none() {
        return Err(crate::exit::usage(
            "--quorum declares --queue as a quorum queue: give --queue",
        ));
    }
    // Checked here rather than by clap: a switch set to false in the environment is not given.
    for (given, flag) in [(a.resume, "--resume"), (a.no_relay, "--no-relay")] {
        if given && a.outbox.is_none() {
            return Err(crate::exit::usage(format!("{flag} needs --outbox")));
        }
    }
    if let Some(spec) = a.outbox.clone() {
        let schema = a.schema.clone();
        if a.from.is_some() {
            return Err(crate::exit::usage(
                "--from publishes directly: it does not go through --outbox",
            ));
        }
        return crate::outbox::publish::run(&a, crate::outbox::OutboxArgs { spec, schema }).await;
    }
    if let Some(from) = a.from.clone() {
        return from::run(&a, &from).await;
    }
    let config = a.conn.config("rabbit-once publish")?.topology(a.topology());
    let conn = crate::common::connect(&a.conn, config).await?;
    let publisher = Publisher::new(
        &conn,
        PublisherConfig::default()
            .window(a.window)
            .max_buffered(a.window.max(10_000)),
    )?;
    let pb = bar(a.count, "confirmed");
    let mut accepted_log = Report::open(a.report.as_deref())?;
    let mut confirmed_log = Report::open(a.report.as_deref())?;
    let (tx, collector) = {
        let pb = pb.clone();
        let counts: (u64, BTreeMap<String, u64>) = (0, BTreeMap::new());
        await_confirmations(counts, move |(confirmed, failed), seq: u64, outcome| {
            match outcome {
                Ok(_) => {
                    *confirmed += 1;
                    confirmed_log.line(format_args!("c {seq} {}", unix_micros()));
                }
                Err(e) => {
                    let k = kind(&e.error);
                    confirmed_log.line(format_args!("f {seq} {k}"));
                    *failed.entry(k).or_insert(0u64) += 1;
                }
            }
            pb.inc(1);
        })
    };
    let started = Instant::now();
    let mut stop = std::pin::pin!(stop_signal());
    let mut interrupted = false;
    for i in 0..a.count {
        let seq = a.start + i;
        let publish = async {
            if let Some(rate) = a.rate.filter(|r| *r > 0) {
                let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            publisher.publish(message(&a, seq)).await
        };
        let published = tokio::select! {
            p = publish => p,
            _ = &mut stop => {
                interrupted = true;
                break;
            }
        };
        match published {
            Ok(c) => {
                accepted_log.line(format_args!("a {seq}"));
                let _ = tx.send((seq, c));
            }
            Err(e) => {
                // The error itself, not its text: its kind decides the exit status (an
                // authentication refused on a reconnect exits 3).
                let what = match conn.state() {
                    ConnectionState::Failed(_) => "the connection gave up".to_string(),
                    _ => format!("message {seq} refused"),
                };
                pb.finish_and_clear();
                conn.close().await;
                return Err(anyhow::Error::from(e.error).context(what));
            }
        }
    }
    let Some(handed_back) = close(&publisher, a.close_timeout, interrupted).await else {
        // Stopped a second time: no time to wait for the confirms.
        pb.finish_and_clear();
        let stats = publisher.stats();
        eprintln!(
            "stopped: {} published, {} confirmed, {} failed, {} unconfirmed (not known to have \
             arrived)",
            stats.accepted,
            stats.confirmed,
            stats.failed,
            stats.accepted - stats.confirmed - stats.failed
        );
        return Ok(crate::exit::Status::Incomplete.into());
    };
    drop(tx);
    let (confirmed, failed) = collector.await?;
    pb.finish_and_clear();
    let stats = publisher.stats();
    let s = Summary {
        published: stats.accepted,
        confirmed,
        failed,
        republished: stats.republished,
        reconnects: conn.reconnects(),
        handed_back,
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
        not_published: a.count - stats.accepted,
    };
    let gave_up = match conn.state() {
        ConnectionState::Failed(e) => {
            Some(anyhow::Error::from(e).context("the connection gave up"))
        }
        _ => None,
    };
    conn.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        s.print();
    }
    if let Some(e) = gave_up {
        // Its kind decides the exit status (credentials refused on a reconnect: 3).
        return Err(e);
    }
    // Stopped on purpose, everything published so far is confirmed: success.
    let all = if interrupted { s.published } else { a.count };
    Ok(if s.confirmed == all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Closes `publisher`: waits at most `timeout_secs` for the outstanding confirms and hands
/// back the rest, returning how many. After an interruption (`interrupted`, or a Ctrl-C or
/// SIGTERM during this wait) it says what it waits for, and the next Ctrl-C or SIGTERM gives up
/// waiting (`None`).
pub async fn close(publisher: &Publisher, timeout_secs: u64, interrupted: bool) -> Option<u64> {
    let outstanding = || {
        let s = publisher.stats();
        s.accepted - s.confirmed - s.failed
    };
    let mut closing = std::pin::pin!(publisher.close(Duration::from_secs(timeout_secs)));
    if interrupted {
        eprintln!(
            "interrupted: publishing stopped; waiting up to {timeout_secs}s for {} outstanding \
             confirms (Ctrl-C again to stop at once)",
            outstanding()
        );
    } else {
        tokio::select! {
            handed_back = &mut closing => return Some(handed_back.len() as u64),
            _ = stop_signal() => eprintln!(
                "interrupted: still waiting (--close-timeout {timeout_secs}s) for {} outstanding \
                 confirms (Ctrl-C again to stop at once)",
                outstanding()
            ),
        }
    }
    tokio::select! {
        handed_back = &mut closing => Some(handed_back.len() as u64),
        _ = stop_signal() => None,
    }
}

impl Args {
    /// The queue, which numbered messages need.
    fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or_default()
    }

    /// What publishing declares: the queue, durable; with `--quorum`, what `consume --quorum`
    /// declares (the same arguments, or the second declare is refused).
    pub fn topology(&self) -> Topology {
        if self.quorum {
            crate::consume::consumer_config(self.queue(), crate::consume::MAX_ATTEMPTS, true)
                .topology()
        } else if let Some(q) = &self.queue {
            Topology::new().queue(Queue::new(q))
        } else {
            Topology::new()
        }
    }
}

/// Message `seq`: its body starts with `{"seq":seq}`; flags and id as the arguments say.
pub fn message(a: &Args, seq: u64) -> Message {
    let mut m = Message::to_queue(a.queue(), seq_body(seq, a.size));
    if a.transient {
        m = m.transient();
    }
    if a.no_mandatory {
        m = m.with_mandatory(false);
    }
    if let Some(p) = &a.id_prefix {
        m = m.with_message_id(format!("{p}-{seq}"));
    }
    m
}

impl Summary {
    /// One line of counts and throughput, then a line per kind of failure.
    fn print(&self) {
        println!(
            "published {}  confirmed {}  re-published {}  reconnects {}  handed back {}  in {:.2}s ({:.0} msg/s)",
            self.published,
            self.confirmed,
            self.republished,
            self.reconnects,
            self.handed_back,
            self.seconds,
            self.confirmed as f64 / self.seconds.max(1e-9)
        );
        for (k, n) in &self.failed {
            println!("failed: {n} {k}");
        }
        if self.interrupted {
            println!(
                "interrupted: {} not published, {} handed back unconfirmed",
                self.not_published, self.handed_back
            );
        }
    }
}

/// A short name for an error kind, for counting.
pub fn kind(e: &rabbit_once::Error) -> String {
    let s = format!("{e:?}");
    s.split([' ', '(', '{'])
        .next()
        .unwrap_or("Error")
        .to_string()
}
