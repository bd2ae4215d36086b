//! Closing: drain and finish, or hand unconfirmed messages back when the close deadline
//! passes, or fail everything when the connection gives up.

use super::session::Task;
use crate::error::Error;
use crate::message::Message;
use crate::publisher::confirmation::PublishError;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The close deadline passed: every unconfirmed message went back to the caller and the task
/// is done.
pub(super) struct HandedBack;

/// Sleeps until `at`, or forever if there is no `at`.
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A close in progress: the earliest deadline asked for, and every caller of `close` waiting
/// for the messages handed back (the first gets them, later ones an empty list).
pub(super) struct Closing {
    pub(super) deadline: Instant,
    pub(super) replies: Vec<oneshot::Sender<Vec<Message>>>,
}

impl Task {
    /// Awaits `work`, unless the close deadline passes first: then every unconfirmed message
    /// goes back to the caller ([`hand_back`](Self::hand_back)) and this gives `HandedBack`.
    /// `work` is polled first, so it wins when both are ready.
    pub(super) async fn unless_close_deadline<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Self) -> T,
    ) -> Result<T, HandedBack> {
        let deadline = self.closing.as_ref().map(|c| c.deadline);
        let done = {
            let work = work(self);
            tokio::select! {
                biased;
                v = work => Ok(v),
                _ = sleep_until_some(deadline) => Err(HandedBack),
            }
        };
        if done.is_err() {
            self.hand_back();
        }
        done
    }

    /// Closing (or abandoned by every handle) and nothing left to confirm: refuses anything
    /// new, takes in what was accepted meanwhile, and finishes if that is nothing.
    pub(super) fn try_finish(&mut self) -> bool {
        if !self.buf.is_empty() || (self.closing.is_none() && self.rx_open) {
            return false;
        }
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_cmd(Some(cmd));
        }
        if !self.buf.is_empty() {
            return false;
        }
        self.finish_close();
        true
    }

    fn finish_close(&mut self) {
        self.shared.close();
        if let Some(c) = self.closing.take() {
            for r in c.replies {
                let _ = r.send(Vec::new());
            }
        }
    }

    /// The close timeout passed: every unconfirmed message goes back to the caller.
    pub(super) fn hand_back(&mut self) {
        self.shared.close();
        // Accept what was already let in, so it is handed back too; refuse the rest.
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_cmd(Some(cmd));
        }
        let left = self.buf.drain_unresolved();
        let mut msgs = Vec::with_capacity(left.len());
        let (count, bytes) = (left.len(), left.iter().map(|e| e.size).sum::<usize>());
        for mut e in left {
            let msg = e.take_msg();
            msgs.push((*msg).clone());
            if let Some(reply) = e.take_reply() {
                let _ = reply.send(Err(PublishError {
                    error: Error::HandedBack,
                    message: Some(msg),
                }));
            }
        }
        tracing::info!(
            handed_back = msgs.len(),
            "publisher closed with unconfirmed messages"
        );
        self.shared.release(count, bytes);
        self.shared.counters.fail("handed_back", count as u64);
        self.gauges();
        if let Some(c) = self.closing.take() {
            let mut replies = c.replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(msgs);
            }
            for r in replies {
                let _ = r.send(Vec::new());
            }
        }
    }

    /// The connection gave up for good: every message fails with that reason, and so does
    /// every later one.
    pub(super) async fn fail_everything(mut self, fatal: Error) {
        tracing::error!(error = %fatal, "publisher stopping: the connection gave up");
        self.shared.fail(fatal.clone());
        loop {
            let left = self.buf.drain_unresolved();
            let count = left.len();
            let bytes = left.iter().map(|e| e.size).sum::<usize>();
            for mut e in left {
                let msg = e.take_msg();
                if let Some(reply) = e.take_reply() {
                    let _ = reply.send(Err(PublishError {
                        error: fatal.clone(),
                        message: Some(msg),
                    }));
                }
            }
            self.shared
                .counters
                .fail(crate::metrics::reason(&fatal), count as u64);
            self.shared.release(count, bytes);
            self.gauges();
            if let Some(c) = self.closing.take() {
                for r in c.replies {
                    let _ = r.send(Vec::new());
                }
            }
            if !self.rx_open {
                return;
            }
            let cmd = self.rx.recv().await;
            self.on_cmd(cmd);
        }
    }
}
