//! The process pool: the publisher and consumer child processes, spawned, killed and restarted.

use super::ledger::read_pub_report;
use std::collections::HashSet;
use std::path::PathBuf;
use tokio::process::Child;

pub(super) struct PublisherSlot {
    pub(super) lo: u64,
    pub(super) hi: u64,
    pub(super) child: Option<Child>,
    pub(super) report: PathBuf,
    pub(super) generation: u32,
    pub(super) done: bool,
    pub(super) reports: Vec<PathBuf>,
}

pub(super) struct ConsumerSlot {
    pub(super) child: Option<Child>,
    pub(super) report: PathBuf,
    pub(super) generation: u32,
    pub(super) reports: Vec<PathBuf>,
}

pub(super) fn kill9(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

pub(super) fn term(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Publishers that exited: done if they succeeded, else started again from their first message
/// not yet confirmed.
pub(super) fn reap_publishers(
    publishers: &mut [PublisherSlot],
    spawn: &dyn Fn(&mut PublisherSlot, u64) -> anyhow::Result<()>,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    for slot in publishers.iter_mut().filter(|s| !s.done) {
        if let Some(status) = slot
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            slot.child = None;
            if status.success() {
                slot.done = true;
            } else {
                let from = first_unconfirmed(slot);
                say(format!(
                    "  publisher for {}..{} exited with {status}; restarting from {from}",
                    slot.lo, slot.hi
                ));
                spawn(slot, from)?;
            }
        }
    }
    Ok(())
}

/// The first seq of the slot's range that no process of this slot has had confirmed.
pub(super) fn first_unconfirmed(slot: &PublisherSlot) -> u64 {
    let mut confirmed = HashSet::new();
    for p in &slot.reports {
        confirmed.extend(read_pub_report(p).confirmed.into_keys());
    }
    (slot.lo..slot.hi)
        .find(|s| !confirmed.contains(s))
        .unwrap_or(slot.hi.saturating_sub(1))
}
