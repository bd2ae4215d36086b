//! `rabbit-once chaos`: P publisher and C consumer *processes* (this binary's `publish` and
//! `consume`) through a fault proxy, while a fault schedule cuts connections, black-holes the
//! network, restarts or kills the broker, and SIGKILLs consumers and publishers. At the end the
//! ledger is reconciled from the publishers' reports and the `applied` table.
//!
//! - `args.rs`: the command's flags.
//! - `plan.rs`: the fault plan — which faults, in what order, how far apart.
//! - `pool.rs`: the child processes — spawning, killing and restarting publishers and consumers.
//! - `ledger.rs`: the ledger — the children's reports and the database, counted.
//! - `run.rs`: the run itself.

mod args;
mod ledger;
mod plan;
mod pool;
mod run;

pub use args::Args;
pub use run::run;
