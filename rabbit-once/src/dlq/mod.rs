//! Dead letters you can act on: list a consumer's dead-letter queue without consuming it,
//! replay chosen messages to the work queue, purge them.
//!
//! - [`info`]: what a dead letter says about itself ([`DeadLetterInfo`]), and the copy a
//!   replay publishes (failure bookkeeping stripped);
//! - [`pass`]: one pass over the queue — the messages it held when the pass began, held
//!   unacknowledged on a channel of our own, then acked (removed) or given back in order;
//! - [`replay`]: the replay — a copy published with confirms, its dead letter acked only once
//!   the copy is confirmed.
//!
//! Every operation runs on one session of the [`Connection`] and never reconnects in the
//! middle: a lost connection ends it, and the broker puts back every message not acked. That is
//! what makes a crash safe — and why a replay is not resumed on the next session by itself: a
//! message replayed and dead-lettered again could not be told from one whose removal was lost.

mod info;
mod pass;
mod replay;

pub use info::DeadLetterInfo;
pub use replay::{ReplayFailure, ReplayReport};

use crate::connection::Connection;
use crate::consumer::ConsumerConfig;
use crate::consumer::retry::DeadLetter;
use crate::error::Error;
use pass::{Next, Pass};
use std::collections::{BTreeSet, HashSet};

/// Copies published and not yet confirmed, and messages read but not yet removed, at most (a
/// replay or purge of everything reads with this prefetch).
const WINDOW: u16 = 1000;

/// Which dead letters an operation acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSelection {
    /// Every message the dead-letter queue held when the operation began (messages
    /// dead-lettered meanwhile are left for the next time).
    All,
    /// The messages with these `message_id`s (each copy, if one id was dead-lettered twice).
    Ids(BTreeSet<String>),
}

impl DeadLetterSelection {
    /// The messages with these ids.
    pub fn ids<I: Into<String>>(ids: impl IntoIterator<Item = I>) -> Self {
        DeadLetterSelection::Ids(ids.into_iter().map(Into::into).collect())
    }

    fn matches(&self, id: Option<&str>) -> bool {
        match self {
            DeadLetterSelection::All => true,
            DeadLetterSelection::Ids(ids) => id.is_some_and(|id| ids.contains(id)),
        }
    }

    /// The ids asked for that are not in `found`, in order.
    fn missing(&self, found: &HashSet<String>) -> Vec<String> {
        match self {
            DeadLetterSelection::All => Vec::new(),
            DeadLetterSelection::Ids(ids) => ids
                .iter()
                .filter(|id| !found.contains(*id))
                .cloned()
                .collect(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        match self {
            DeadLetterSelection::Ids(ids) if ids.is_empty() => Err(Error::Config(
                "no message ids given: name at least one, or select all".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The prefetch of a pass that removes what this selects: a limit for everything (each
    /// message read is removed, so the window moves on), none for chosen ids (the others are
    /// held to the end: a limit would stall the pass once that many are held).
    fn prefetch(&self) -> Option<u16> {
        matches!(self, DeadLetterSelection::All).then_some(WINDOW)
    }
}

/// What [`DeadLetters::preview`] found: the messages an operation would act on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeadLetterPreview {
    /// The messages selected, in queue order.
    pub selected: Vec<DeadLetterInfo>,
    /// Ids asked for that the dead-letter queue does not hold.
    pub not_found: Vec<String>,
}

/// What [`DeadLetters::purge`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PurgeReport {
    /// The messages removed, in queue order.
    pub removed: Vec<DeadLetterInfo>,
    /// Ids asked for that the dead-letter queue does not hold.
    pub not_found: Vec<String>,
    /// Why the purge stopped early (the connection was lost …). The broker may then not have
    /// processed the last removals: those messages are still in the queue.
    pub interrupted: Option<Error>,
}

/// The dead-letter queue of one work queue, to list, replay and purge.
///
/// ```no_run
/// use rabbit_once::{Connection, ConnectionConfig, DeadLetterSelection, DeadLetters};
///
/// # async fn run() -> Result<(), rabbit_once::Error> {
/// let conn = Connection::connect(ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?).await?;
/// let dead = DeadLetters::new(&conn, "orders"); // reads `orders.dead`
/// for d in dead.list().await? {
///     println!("{:?}: {:?} after {:?} attempts", d.message_id, d.reason, d.attempts);
/// }
/// // After fixing the bug: everything back to `orders`, same message ids.
/// let report = dead.replay(&DeadLetterSelection::All).await?;
/// assert!(report.is_complete());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    conn: Connection,
    work_queue: String,
    dead_queue: String,
}

impl DeadLetters {
    /// The dead-letter queue a consumer of `work_queue` uses by default
    /// ([`ConsumerConfig::new`]: `<work_queue>.dead`); replays go to `work_queue`.
    pub fn new(conn: &Connection, work_queue: impl Into<String>) -> Self {
        let work_queue = work_queue.into();
        let dead_queue = match ConsumerConfig::new(&work_queue).dead_letter {
            DeadLetter::Queue(q) => q,
            DeadLetter::Exchange { .. } => {
                unreachable!("the default dead-letter target is a queue")
            }
        };
        DeadLetters {
            conn: conn.clone(),
            work_queue,
            dead_queue,
        }
    }

    /// The dead-letter queue of the consumer `config` describes. [`Error::Config`] if its dead
    /// letters go to an exchange: name the queue bound there with
    /// [`dead_queue`](Self::dead_queue).
    pub fn for_consumer(conn: &Connection, config: &ConsumerConfig) -> Result<Self, Error> {
        match &config.dead_letter {
            DeadLetter::Queue(q) => Ok(DeadLetters::new(conn, config.queue()).dead_queue(q)),
            DeadLetter::Exchange { exchange, .. } => Err(Error::Config(format!(
                "the consumer of {:?} dead-letters to the exchange {exchange:?}: name the \
                 queue bound there",
                config.queue()
            ))),
        }
    }

    /// Reads this queue instead of the default one.
    pub fn dead_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_queue = queue.into();
        self
    }

    /// The work queue replays go to.
    pub fn work_queue(&self) -> &str {
        &self.work_queue
    }

    /// The dead-letter queue read.
    pub fn dead_queue_name(&self) -> &str {
        &self.dead_queue
    }

    /// Every message in the dead-letter queue, in queue order, leaving the queue as it was.
    ///
    /// The messages are read with manual acks and all given back at the end, each to its
    /// place (the broker counts them as redelivered, and a quorum queue adds one to each
    /// one's delivery count). A message taken meanwhile by another consumer of the
    /// dead-letter queue is not listed. The whole queue passes through memory once (bodies are
    /// dropped as they come).
    pub async fn list(&self) -> Result<Vec<DeadLetterInfo>, Error> {
        Ok(self.preview(&DeadLetterSelection::All).await?.selected)
    }

    /// The messages `selection` names (what [`replay`](Self::replay) or
    /// [`purge`](Self::purge) would act on), and the ids asked for that are not there; the
    /// queue is left as it was, like [`list`](Self::list).
    pub async fn preview(
        &self,
        selection: &DeadLetterSelection,
    ) -> Result<DeadLetterPreview, Error> {
        selection.validate()?;
        let (selected, not_found, stopped) = self.sweep(selection, Act::Look).await?;
        match stopped {
            Some(e) => Err(e),
            None => Ok(DeadLetterPreview {
                selected,
                not_found,
            }),
        }
    }

    /// Removes the messages `selection` names from the dead-letter queue, for good (each is
    /// acked). The others stay where they were. `Err` only if the purge could not start.
    pub async fn purge(&self, selection: &DeadLetterSelection) -> Result<PurgeReport, Error> {
        selection.validate()?;
        let (removed, not_found, interrupted) = self.sweep(selection, Act::Remove).await?;
        Ok(PurgeReport {
            removed,
            not_found,
            interrupted,
        })
    }

    /// Moves the messages `selection` names back to the work queue: each copy is published to
    /// it through the default exchange (the work queue by name, not the original exchange, so
    /// no other queue bound there gets a second copy), with the same `message_id`, body,
    /// properties and headers — but the failure bookkeeping (the attempt number, the reason,
    /// `x-death`), so the consumer starts afresh — as a `mandatory` message with publisher
    /// confirms. A dead letter is removed only once the broker confirmed its copy.
    ///
    /// A crash (or a lost connection) in the middle loses nothing: a dead letter not removed
    /// yet goes back to its queue. At most the copies in flight at that moment
    /// ([`ReplayReport::in_flight`], at most 1,000) end up both in the work queue and still in
    /// the dead-letter queue; replaying them again is safe, since the idempotent consumer
    /// skips a `message_id` it has applied — as it skips a replayed message that had in fact
    /// been applied before it was dead-lettered.
    ///
    /// `Err` only if the replay could not start (no such queue, no session); a replay that
    /// stops midway says why in [`ReplayReport::interrupted`].
    pub async fn replay(&self, selection: &DeadLetterSelection) -> Result<ReplayReport, Error> {
        selection.validate()?;
        replay::run(self, selection).await
    }

    /// Starts a pass over the dead-letter queue on the current session.
    async fn start_pass(
        &self,
        prefetch: Option<u16>,
    ) -> Result<(Pass, crate::connection::Session), Error> {
        let expected = self.conn.queue_info(&self.dead_queue).await?.messages;
        let session = self.conn.next_session(0).await?;
        let pass = Pass::start(&session, &self.dead_queue, u64::from(expected), prefetch).await?;
        Ok((pass, session))
    }

    /// One pass that collects the messages `selection` names and, for [`Act::Remove`], acks
    /// them. Returns them, the ids not found, and the error that stopped the pass midway, if
    /// one did.
    async fn sweep(
        &self,
        selection: &DeadLetterSelection,
        act: Act,
    ) -> Result<(Vec<DeadLetterInfo>, Vec<String>, Option<Error>), Error> {
        let prefetch = match act {
            Act::Look => None,
            Act::Remove => selection.prefetch(),
        };
        let (mut pass, _session) = self.start_pass(prefetch).await?;
        let mut selected = Vec::new();
        let mut found = HashSet::new();
        let read = async {
            loop {
                match pass.next().await? {
                    Next::Message(position, d) => {
                        let id = d.properties.message_id.as_deref();
                        if !selection.matches(id) {
                            continue;
                        }
                        if let Some(id) = id {
                            found.insert(id.to_string());
                        }
                        if act == Act::Remove {
                            pass.ack(d.delivery_tag)?;
                        }
                        selected.push(info::DeadLetterInfo::of(position, &d));
                    }
                    Next::Silent => pass.check().await?,
                    Next::Drained => return Ok::<(), Error>(()),
                }
            }
        };
        let stopped = match read.await {
            Ok(()) => pass.finish().await.err(),
            Err(e) => {
                // Give back what is held if the channel still stands (a lost connection
                // gives it back anyway).
                let _ = pass.finish().await;
                Some(e)
            }
        };
        Ok((selected, selection.missing(&found), stopped))
    }
}

/// Whether a pass only looks or removes what it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Look,
    Remove,
}
