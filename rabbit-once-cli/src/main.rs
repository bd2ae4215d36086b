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
mod status;

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
    /// The connection, a consumer's queues (work, retry, dead-letter: messages ready and
    /// consumers), its dedup rows and an outbox, at a glance (`--json` for machines). Exit 3 if
    /// no broker answers, 4 if a store cannot be read, 1 if the work queue is missing.
    Status(status::Args),
    /// The peers' benchmark workloads (../shared/peers), printing the same JSON lines.
    Bench(bench::Args),
    /// Print a completion script for a shell to stdout, e.g.
    /// `rabbit-once completions bash > /etc/bash_completion.d/rabbit-once`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The command line as clap sees it: [`Cli`] with the defaults that differ between commands,
/// every flag also read from the environment ([`with_env`]).
fn command() -> clap::Command {
    // Services wait for the broker for ever by default; one-shot commands give up after 60 s.
    let services = ["consume", "relay"];
    let cmd = services.into_iter().fold(Cli::command(), |cmd, name| {
        cmd.mut_subcommand(name, |c| {
            c.mut_arg("connect_wait", |a| a.default_value("0"))
        })
    });
    // `status` is asked by a person or a probe: it says "no broker" after 10 s.
    let cmd = cmd.mut_subcommand("status", |c| {
        c.mut_arg("connect_wait", |a| a.default_value("10"))
    });
    with_env(cmd, &[])
}

/// Flags that mean the same on every command that has them, read as `RABBIT_ONCE_<FLAG>`: the
/// broker, its heartbeat, the connect wait, a database and its schema, the runtime's threads.
const SHARED: &[&str] = &[
    "uri",
    "heartbeat",
    "connect-wait",
    "store",
    "outbox",
    "schema",
    "threads",
];

/// Flags named in [`SHARED`] that are their command's own all the same: `publish --outbox`
/// changes what `publish` does (it commits instead of publishing), so a `RABBIT_ONCE_OUTBOX`
/// meant for `relay` must not turn it on; `chaos --store` and `--schema` receive test data.
const OWN: &[(&str, &str)] = &[
    ("publish", "outbox"),
    ("chaos", "store"),
    ("chaos", "schema"),
];

/// The environment variable of flag `--long` of the command at `path` (its subcommand names
/// from the top), if it has one. A flag of [`SHARED`] that takes a value is read as
/// `RABBIT_ONCE_<FLAG>`; every other flag as `RABBIT_ONCE_<COMMAND>_<FLAG>`
/// (`publish --rate`: `RABBIT_ONCE_PUBLISH_RATE`; `outbox status --json`:
/// `RABBIT_ONCE_OUTBOX_STATUS_JSON`), so a name never means two things. A switch is never
/// shared (`chaos --outbox` is a switch: `RABBIT_ONCE_CHAOS_OUTBOX`), nor are the flags of
/// [`OWN`]; `bench` takes nothing from the environment (its harness gives it a command line),
/// and neither does `--yes`.
fn env_name(path: &[&str], long: &str, switch: bool) -> Option<String> {
    let upper = |s: &str| s.replace('-', "_").to_uppercase();
    let command = path.first().copied().unwrap_or_default();
    // `--yes` confirms a destructive act, and `dlq`'s `--all` / `--id` choose what it acts on:
    // only ever typed, never inherited.
    if command == "bench" || long == "yes" || (command == "dlq" && matches!(long, "all" | "id")) {
        return None;
    }
    let own = OWN.contains(&(command, long));
    if SHARED.contains(&long) && !switch && !own {
        return Some(format!("RABBIT_ONCE_{}", upper(long)));
    }
    let scope: Vec<String> = path.iter().map(|c| upper(c)).collect();
    Some(format!("RABBIT_ONCE_{}_{}", scope.join("_"), upper(long)))
}

/// Every long flag of `cmd` (at `path`) and of its subcommands also comes from the environment
/// variable [`env_name`] gives it; a switch takes true/false, yes/no, on/off, 1/0 there. The
/// values are never shown in `--help` (a URI holds a password).
fn with_env(cmd: clap::Command, path: &[&str]) -> clap::Command {
    let cmd = cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg; // positional: only on the command line
        };
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let Some(name) = env_name(path, long, switch) else {
            return arg;
        };
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
    subcommands.iter().fold(cmd, |cmd, name| {
        let mut below = path.to_vec();
        below.push(name);
        cmd.mut_subcommand(name, |c| with_env(c, &below))
    })
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
            Command::Status(a) => status::run(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    // Without waiting for a read of stdin that never ends (`publish --from -` stopped by Ctrl-C).
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::classify(&e).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment variable of `--long` on the command at `path`, as `--help` names it.
    fn env_of(path: &[&str], long: &str) -> Option<String> {
        let mut cmd = command();
        for name in path {
            cmd = cmd.find_subcommand(name).expect("subcommand").clone();
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .expect("flag");
        arg.get_env().map(|e| e.to_string_lossy().into_owned())
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn shared_flags_have_one_name_and_the_others_are_scoped() {
        let shared = [
            (&["publish"][..], "uri", "RABBIT_ONCE_URI"),
            (&["consume"], "connect-wait", "RABBIT_ONCE_CONNECT_WAIT"),
            (&["consume"], "store", "RABBIT_ONCE_STORE"),
            (&["publish"], "schema", "RABBIT_ONCE_SCHEMA"),
            (&["relay"], "outbox", "RABBIT_ONCE_OUTBOX"),
            (&["outbox", "status"], "outbox", "RABBIT_ONCE_OUTBOX"),
            (&["relay"], "schema", "RABBIT_ONCE_SCHEMA"),
            (&["chaos"], "heartbeat", "RABBIT_ONCE_HEARTBEAT"),
            (&["status"], "store", "RABBIT_ONCE_STORE"),
            (&["status"], "outbox", "RABBIT_ONCE_OUTBOX"),
        ];
        let scoped = [
            (&["chaos"][..], "outbox", "RABBIT_ONCE_CHAOS_OUTBOX"),
            (&["chaos"], "rate", "RABBIT_ONCE_CHAOS_RATE"),
            (&["chaos"], "store", "RABBIT_ONCE_CHAOS_STORE"),
            (&["chaos"], "schema", "RABBIT_ONCE_CHAOS_SCHEMA"),
            (&["publish"], "rate", "RABBIT_ONCE_PUBLISH_RATE"),
            (&["publish"], "outbox", "RABBIT_ONCE_PUBLISH_OUTBOX"),
            (&["publish"], "resume", "RABBIT_ONCE_PUBLISH_RESUME"),
            (&["publish"], "queue", "RABBIT_ONCE_PUBLISH_QUEUE"),
            (&["consume"], "batch", "RABBIT_ONCE_CONSUME_BATCH"),
            (&["relay"], "batch", "RABBIT_ONCE_RELAY_BATCH"),
            (&["status"], "queue", "RABBIT_ONCE_STATUS_QUEUE"),
            (&["status"], "json", "RABBIT_ONCE_STATUS_JSON"),
            (
                &["outbox", "status"],
                "json",
                "RABBIT_ONCE_OUTBOX_STATUS_JSON",
            ),
        ];
        for (path, long, name) in shared.into_iter().chain(scoped) {
            assert_eq!(
                env_of(path, long).as_deref(),
                Some(name),
                "{path:?} --{long}"
            );
        }
        for long in ["uri", "batch", "rate"] {
            assert_eq!(env_of(&["bench"], long), None, "bench --{long}");
        }
        assert_eq!(
            env_of(&["dlq", "purge"], "yes"),
            None,
            "typed, never inherited"
        );
    }

    #[test]
    fn services_wait_for_the_broker_for_ever_by_default() {
        let wait = |name: &str| {
            let m = command().get_matches_from(match name {
                "consume" => vec!["rabbit-once", "consume", "--queue", "q", "--store", "x"],
                "relay" => vec!["rabbit-once", "relay", "--outbox", "x"],
                "status" => vec!["rabbit-once", "status"],
                _ => vec!["rabbit-once", "publish", "--queue", "q"],
            });
            let (_, sub) = m.subcommand().expect("subcommand");
            *sub.get_one::<u64>("connect_wait").expect("default")
        };
        assert_eq!(wait("consume"), 0);
        assert_eq!(wait("relay"), 0);
        assert_eq!(wait("publish"), 60);
        assert_eq!(wait("status"), 10, "a person or a probe is waiting");
    }
}
