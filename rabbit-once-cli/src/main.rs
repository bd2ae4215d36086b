//! `rabbit-once`: demo, publish, consume, chaos and bench, built on the rabbit-once library.

mod applied;
mod bench;
mod bench_outbox;
mod chaos;
mod common;
mod consume;
mod demo;
mod dlq;
mod exit;
mod outbox;
mod publish;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;

#[derive(Parser, Debug)]
#[command(
    name = "rabbit-once",
    version,
    about = "RabbitMQ messaging that loses nothing and applies nothing twice",
    after_help = exit::HELP
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
    /// A consumer's dead-letter queue: list it, replay messages to the work queue, purge.
    #[command(subcommand)]
    Dlq(dlq::Command),
    /// The peers' benchmark workloads (../shared/peers), printing the same JSON lines.
    Bench(bench::Args),
    /// Print a completion script for a shell to stdout, e.g.
    /// `rabbit-once completions bash > /etc/bash_completion.d/rabbit-once`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The command line as clap sees it: [`Cli`] with every flag also read from the environment.
fn command() -> clap::Command {
    with_env(Cli::command())
}

/// Every long flag of `cmd` and of its subcommands also comes from `RABBIT_ONCE_<FLAG>`
/// (`--connect-wait`: `RABBIT_ONCE_CONNECT_WAIT`); a switch takes true/false, yes/no, on/off,
/// 1/0 there. The values are never shown in `--help` (a URI holds a password).
fn with_env(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg; // positional: only on the command line
        };
        let name = format!("RABBIT_ONCE_{}", long.replace('-', "_").to_uppercase());
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let arg = arg.env(name).hide_env_values(true);
        if switch {
            arg.value_parser(BoolishValueParser::new())
        } else {
            arg
        }
    });
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    subcommands
        .iter()
        .fold(cmd, |cmd, name| cmd.mut_subcommand(name, with_env))
}

/// Colour only to a terminal, and never when `NO_COLOR` is set (and not empty).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .init();
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut command(), "rabbit-once", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
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
            Command::Dlq(c) => dlq::run(c).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::classify(&e).into()
        }
    }
}
