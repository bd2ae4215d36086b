//! `rabbit-once chaos`: P publisher and C consumer *processes* (this binary's `publish` and
//! `consume`) through a fault proxy, while a fault schedule cuts connections, black-holes the
//! network, restarts or kills the broker, and SIGKILLs consumers and publishers. At the end the
//! ledger is reconciled from the publishers' reports and the `applied` table.
//!
//! With `--cluster N` the run starts a private N-node cluster (a fault proxy per node), the
//! queues are quorum queues, every child is given every node's endpoint (each in an order of its
//! own, so they spread over the nodes), the consumers share one PostgreSQL store, and the faults
//! include `kill -9` of the work queue's leader node (then its restart) and `stop_app`/`start_app`
//! of a follower; cuts and black holes hit one node's proxy at a time. `--outbox` and
//! `--pipeline` run there too: the relay processes are given every endpoint like the other
//! children and declare the queues they publish to as the consumers do (quorum queues).
//!
//! With `--outbox` the publishers commit through a transactional outbox (`publish --outbox
//! --resume`), relay processes share a PostgreSQL outbox and are SIGKILLed too, and the ledger
//! owes what was committed (the `sent` tables) instead of what was confirmed.
//!
//! - `run.rs`: the run, step by step — start with it.
//! - `args.rs`: the command's flags.
//! - `setup.rs`: the broker (a private node or cluster, or the one given), the fault proxies,
//!   the store, the work directory, and their clean-up.
//! - `plan.rs`: the fault plan — which faults, in what order, how far apart, at what rate.
//! - `pool.rs`: the process pool — spawning, watching, killing and restarting the children
//!   (publishers, consumers, relays).
//! - `inject.rs`: the fault loop, and the record of which faults fired when.
//! - `ledger.rs`: the ledger — the children's reports and the `applied` table, counted into
//!   lost, applied twice and missing.
//! - `timeline.rs`: what happened when — faults, process restarts, a sample a second of the
//!   queue's depth and the consumers' reconnects — and throughput and lag counted at the end.
//! - `committed.rs`: with `--outbox`, the messages committed so far (the `sent` rows).
//! - `report/`: `--report FILE.html`, the run as one self-contained page (inline SVG).

mod args;
mod committed;
mod inject;
mod ledger;
mod plan;
mod pool;
mod report;
mod run;
mod setup;
mod timeline;

pub use args::Args;
pub use run::run;
