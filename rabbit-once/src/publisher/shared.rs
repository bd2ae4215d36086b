//! What every handle and the task share: the buffer's room (two semaphores), the closed flag,
//! the reason the publisher failed, and the counters.

use super::config::PublisherConfig;
use super::stats::PublisherCounters;
use crate::error::Error;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// What every [`Publisher`](super::Publisher) handle and the task share, behind one `Arc`.
#[derive(Debug)]
pub(crate) struct PublisherShared {
    pub(super) count: Semaphore,
    pub(super) bytes: Semaphore,
    pub(super) config: PublisherConfig,
    /// The frame size the connection asks for: a content header must fit in one frame (the
    /// broker may negotiate less; the task checks that per session).
    pub(super) frame_max: u32,
    pub(super) closed: AtomicBool,
    /// Why the publisher stopped for good, if the connection gave up.
    pub(super) failure: OnceLock<Error>,
    pub(super) counters: PublisherCounters,
}

impl PublisherShared {
    /// Frees the buffer room that `messages` messages of `bytes` body bytes in all held (resolved,
    /// handed back, or never handed to the task).
    pub(super) fn release(&self, messages: usize, bytes: usize) {
        self.count.add_permits(messages);
        self.bytes.add_permits(bytes);
    }

    /// The connection gave up: refuse everything from now on with this reason.
    pub(super) fn fail(&self, e: Error) {
        let _ = self.failure.set(e);
        self.close();
    }

    /// Refuses new messages and wakes everyone waiting for room.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.count.close();
        self.bytes.close();
    }
}
