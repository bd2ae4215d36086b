//! The flags of `rabbit-once chaos`.

use crate::common::Conn;

/// The flags of `rabbit-once chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Broker URIs and heartbeat.
    #[command(flatten)]
    pub conn: Conn,
    /// Start a private RabbitMQ node for the run (needed for broker restarts and kills).
    #[arg(long, conflicts_with = "cluster")]
    pub own_broker: bool,
    /// Start a private RabbitMQ cluster of N nodes (at least 3) for the run, each node behind a
    /// fault proxy of its own; the work queue (and its retry and dead-letter queues) are quorum
    /// queues. Every child is given every node's endpoint, in an order of its own. Faults:
    /// `kill -9` of the work queue's leader node and its restart (`--broker-kills`),
    /// `stop_app`/`start_app` of a follower node (`--restarts`), cuts and black holes on one
    /// node's proxy, and the process kills. The store defaults to PostgreSQL (the consumers share
    /// it; with --outbox the publishers and the relay processes share its outbox). The relays
    /// declare the queues they publish to as the consumers do.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(3..=7)
    )]
    pub cluster: Option<u64>,
    /// Messages in all (split between the publishers).
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Publisher processes.
    #[arg(long, default_value_t = 2)]
    pub publishers: u64,
    /// Consumer processes (default: 2; with --cluster, 3).
    #[arg(long)]
    pub consumers: Option<u64>,
    /// Dedup store: sqlite:PATH or postgres://… (default: a SQLite file in the work directory;
    /// with --cluster, the database at postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    pub store: Option<String>,
    /// PostgreSQL schema (default: a fresh one per run, dropped at the end).
    #[arg(long)]
    pub schema: Option<String>,
    /// The consumers seal the dedup table every this many records (`consume --segment-rows`;
    /// 0: never), so a run checks sealed segments under faults (several consumer processes
    /// sealing one SQLite file or one PostgreSQL schema).
    #[arg(long, default_value_t = 0)]
    pub segment_rows: u64,
    /// Messages per second, all publishers together (default: spread over the fault schedule).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connection cuts (every connection through the proxy reset at once).
    #[arg(long, default_value_t = 10)]
    pub cuts: u32,
    /// Black holes (nothing forwarded, nothing closed) longer than the heartbeat timeout.
    #[arg(long, default_value_t = 1)]
    pub blackholes: u32,
    /// Broker restarts with stop_app/start_app (--own-broker; with --cluster, of a node that
    /// does not lead the work queue).
    #[arg(long, default_value_t = 1)]
    pub restarts: u32,
    /// Broker kill -9 and start again (--own-broker; with --cluster, of the node that leads the
    /// work queue, started again once a new leader is elected, and awaited back in the cluster).
    #[arg(long, default_value_t = 1)]
    pub broker_kills: u32,
    /// Consumer processes killed with SIGKILL (and started again).
    #[arg(long, default_value_t = 2)]
    pub consumer_kills: u32,
    /// Publisher processes killed with SIGKILL (and started again from their first unconfirmed message).
    #[arg(long, default_value_t = 1)]
    pub publisher_kills: u32,
    /// Publishers commit each message through a transactional outbox, with a row in a `sent`
    /// table, and relay it from the same process; a killed publisher resumes after its last
    /// commit. The ledger counts committed messages: lost = committed − applied. The outbox is
    /// in the store's database (SQLite: a file per publisher; PostgreSQL: the run's schema).
    #[arg(long)]
    pub outbox: bool,
    /// With --outbox: messages per transaction.
    #[arg(long, default_value_t = 10)]
    pub tx_size: u64,
    /// With --outbox on PostgreSQL: relay processes besides the publishers' own relays (one
    /// relay publishes at a time; the others stand by).
    #[arg(long, default_value_t = 1)]
    pub relays: u64,
    /// With --outbox on PostgreSQL: relay processes killed with SIGKILL (and started again).
    #[arg(long, default_value_t = 2)]
    pub relay_kills: u32,
    /// A two-stage pipeline: the consumers emit a copy of each message to a second queue
    /// through the outbox, in the transaction that applies it; stage-2 consumers apply those into
    /// a store of their own. Consumer kills hit the first stage. The ledger counts the second
    /// stage too: each message applied in stage 1 must be applied exactly once in stage 2.
    #[arg(long)]
    pub pipeline: bool,
    /// With --pipeline: stage-2 consumer processes.
    #[arg(long, default_value_t = 1)]
    pub stage2_consumers: u64,
    /// Mean seconds between faults (each interval is jittered ±50%).
    #[arg(long, default_value_t = 1.5)]
    pub fault_interval: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print the ledger as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the run as one self-contained HTML page (inline SVG, no script, nothing fetched):
    /// throughput and consumer lag over time, each fault a marked line, process restarts and
    /// consumer reconnects, the ledger and the parameters. Written however the run ends — the
    /// ledger failing, an error, Ctrl-C. `scripts/render-report.sh FILE.html OUT.png` turns it
    /// into an image (headless Chromium).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<std::path::PathBuf>,
    /// The chaos process's own Prometheus metrics (faults, processes started and killed, the
    /// queue's depth, the ledger at the end; docs/metrics.md).
    #[command(flatten)]
    pub metrics: crate::common::Metrics,
    /// Keep the work directory (reports, SQLite file) for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// The store a `--cluster` run uses when `--store` is not given: the consumer processes share it.
pub(super) const CLUSTER_STORE: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Args {
    /// Consumer processes: `--consumers`, or 2 (3 with `--cluster`).
    pub(super) fn consumers(&self) -> u64 {
        self.consumers
            .unwrap_or(if self.cluster.is_some() { 3 } else { 2 })
    }
}
