//! Running a work list of batches to the end: a failed batch is split around the message that
//! failed, or bisected, until every verdict comes from a run of one message alone.

use super::key::Item;
use super::stats::ConsumerCounters;
use super::transaction::RunFailure;
use super::worker::Worker;
use crate::consumer::handler::Handler;
use crate::dedup::Store;

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    /// Runs a work list of batches to the end. A failed batch is split — around the message
    /// that failed if that is known, in halves if not, into single messages after a timeout —
    /// so one bad message neither blocks nor duplicates the others, and every verdict on a
    /// message comes from a run of that message alone.
    pub(super) async fn run_work(&self, mut work: Vec<Vec<Item>>) {
        let mut split = false;
        while let Some(mut batch) = work.pop() {
            let Some((failure, culprit)) = self.commit_or_fail(&mut batch).await else {
                continue;
            };
            if batch.len() == 1 {
                let item = batch.pop().expect("one item");
                self.settle_failure(item, failure).await;
                continue;
            }
            if !split {
                split = true;
                ConsumerCounters::add(&self.counters.split_batches, 1);
            }
            // A batch that timed out is run one message at a time: bisecting would wait out
            // the timeout once per halving.
            if matches!(failure, RunFailure::Timeout(_)) {
                work.extend(batch.into_iter().rev().map(|item| vec![item]));
                continue;
            }
            match culprit {
                Some(i) => {
                    let tail = batch.split_off(i + 1);
                    let bad = batch.pop().expect("the culprit");
                    if !tail.is_empty() {
                        work.push(tail);
                    }
                    work.push(vec![bad]);
                    if !batch.is_empty() {
                        work.push(batch);
                    }
                }
                None => {
                    let tail = batch.split_off(batch.len() / 2);
                    work.push(tail);
                    work.push(batch);
                }
            }
        }
    }
}
