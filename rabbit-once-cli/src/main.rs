//! `rabbit-once`: demo, publish, consume, chaos and bench, built on the rabbit-once library.

mod applied;
mod bench;
mod bench_outbox;
mod chaos;
mod common;
mod consume;
mod demo;
mod outbox;
mod publish;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rabbit-once",
    version,
    about = "RabbitMQ messaging that loses nothing and applies nothing twice"
)]
struct Cli {
    /// Runtime threads (1: everything on the main thread).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole path against a local broker, with connections cut on purpose; prints the ledger.
    Demo(demo::Args),
    /// Publish N sequence-numbered messages with confirms; exit 1 if any ended unconfirmed.
    Publish(publish::Args),
    /// Consume idempotently into SQLite or PostgreSQL with the built-in `applied` handler.
    Consume(consume::Args),
    /// Publisher and consumer processes under a fault schedule; reconciles the ledger.
    Chaos(chaos::Args),
    /// Publish a transactional outbox's committed rows (until Ctrl-C, or --until-empty).
    Relay(outbox::relay::Args),
    /// Look at a transactional outbox.
    #[command(subcommand)]
    Outbox(outbox::status::Command),
    /// The peers' benchmark workloads (../shared/peers), printing the same JSON lines.
    Bench(bench::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // One thread by default: the work is I/O-bound, and on a runtime of one thread a message
    // crosses no thread on its way from a task to the socket (measured: 40% less CPU per
    // message, same or better throughput; docs/benchmarks.md).
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Demo(a) => demo::run(a).await,
            Command::Publish(a) => publish::run(a).await,
            Command::Consume(a) => consume::run(a).await,
            Command::Chaos(a) => chaos::run(a).await,
            Command::Relay(a) => outbox::relay::run(a).await,
            Command::Outbox(c) => outbox::status::run(c).await,
            Command::Bench(a) => bench::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
