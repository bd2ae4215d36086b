//! `rabbit-once chaos`: P publisher and C consumer *processes* (this binary's `publish` and
//! `consume`) through a fault proxy, while a fault schedule cuts connections, black-holes the
//! network, restarts or kills the broker, and SIGKILLs consumers and publishers. At the end the
//! ledger is reconciled from the publishers' reports and the `applied` table.
//!
//! With `--outbox` the publishers commit through a transactional outbox (`publish --outbox
//! --resume`), relay processes share a PostgreSQL outbox and are SIGKILLed too, and the ledger
//! owes what was committed (the `sent` tables) instead of what was confirmed.
//!
//! - `run.rs`: the run, step by step — start with it.
//! - `args.rs`: the command's flags.
//! - `setup.rs`: the broker (a private node or the one given), the fault proxy, the store,
//!   the work directory, and their clean-up.
//! - `plan.rs`: the fault plan — which faults, in what order, how far apart, at what rate.
//! - `pool.rs`: the process pool — spawning, watching, killing and restarting the children
//!   (publishers, consumers, relays).
//! - `inject.rs`: the fault loop, and the record of which faults fired when.
//! - `ledger.rs`: the ledger — the children's reports and the `applied` table, counted into
//!   lost, applied twice and missing.

mod args;
mod inject;
mod ledger;
mod plan;
mod pool;
mod run;
mod setup;

pub use args::Args;
pub use run::run;
