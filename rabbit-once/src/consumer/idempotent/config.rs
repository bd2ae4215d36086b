//! [`ConsumerConfig`]: the options of an idempotent consumer, their defaults, and the checks
//! made before it starts.

use crate::backoff::Backoff;
use crate::consumer::retry::{self, DeadLetter, MissingId, RetryPolicy};
use crate::consumer::subscription::SubscriptionConfig;
use crate::error::Error;
use crate::topology::{QueueType, Topology};
use std::time::Duration;

/// Options of an idempotent consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) group: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) missing_id: MissingId,
    pub(crate) retention: Duration,
    pub(crate) retention_interval: Duration,
    pub(crate) store_backoff: Backoff,
    pub(crate) handler_timeout: Duration,
    pub(crate) wait_for_queue: bool,
}

impl ConsumerConfig {
    /// Consume `queue` in consumer group `queue`, prefetch 500, one handler at a time, group
    /// commit of up to 200 messages (waiting at most 1 ms), the default [`RetryPolicy`] (5
    /// attempts), dead letters to `<queue>.dead`, id-less messages dead-lettered.
    ///
    /// The consumer group defaults to the queue's name, and the dedup records are kept per
    /// group: renaming the queue without setting [`group`](Self::group) to the old name starts
    /// deduplication afresh (messages already applied would be applied again if redelivered).
    pub fn new(queue: impl Into<String>) -> Self {
        let queue = queue.into();
        ConsumerConfig {
            group: queue.clone(),
            dead_letter: DeadLetter::Queue(format!("{queue}.dead")),
            queue,
            queue_type: QueueType::Classic,
            prefetch: 500,
            concurrency: 1,
            batch_size: 200,
            batch_wait: Duration::from_millis(1),
            retry: RetryPolicy::default(),
            missing_id: MissingId::DeadLetter,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(3600),
            store_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5),
            handler_timeout: Duration::from_secs(300),
            wait_for_queue: false,
        }
    }

    /// The type of the work queue (default [`QueueType::Classic`]: the consumer declares its
    /// retry and dead-letter queues as classic queues and leaves the work queue to the
    /// application).
    ///
    /// With [`QueueType::Quorum`] the consumer declares, on every session, the work queue and
    /// everything around it as quorum queues, replicated like the work queue, so a message
    /// waiting out a retry delay or dead-lettered survives the loss of a node:
    /// - the work queue: `x-queue-type: quorum`, `x-delivery-limit: max_attempts + 1000` (the
    ///   broker's poison-message limit, set far enough above our own crash-loop bound that it
    ///   never acts first — RabbitMQ 4.0 would otherwise apply its default of 20), and past
    ///   that limit dead-letters to this consumer's dead-letter target (`x-dead-letter-exchange`
    ///   and `x-dead-letter-routing-key`), never dropping;
    /// - each retry queue `<queue>.retry.<ms>`: quorum, its TTL, dead-lettering back to the
    ///   work queue;
    /// - the dead-letter queue (if it is one): quorum, a delivery limit out of reach;
    /// - every queue that dead-letters does so `x-dead-letter-strategy: at-least-once` with
    ///   `x-overflow: reject-publish` (RabbitMQ 3.10 or later): a message moves only once its
    ///   target confirmed it.
    ///
    /// A work queue that already exists with other arguments (declared by hand, or classic)
    /// makes the declaration fail (406 PRECONDITION_FAILED) and the consumer stop with an
    /// error: declare it with [`topology`](Self::topology) wherever else it is declared (with
    /// its bindings, in [`ConnectionConfig::topology`](crate::ConnectionConfig::topology)).
    pub fn queue_type(mut self, t: QueueType) -> Self {
        self.queue_type = t;
        self
    }

    /// How long one run of the handler over a batch may take (default 5 minutes, well under
    /// RabbitMQ's 30-minute `consumer_timeout`, past which the broker would close the
    /// channel). A run that takes longer is cancelled and rolled back; the batch is run again
    /// one message at a time, and the message that hangs fails that attempt (retried, then
    /// dead-lettered like any failure).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// Whether a work queue that does not exist is waited for (default `false`).
    ///
    /// By default a consumer whose work queue the broker does not have — and that nothing
    /// this process declares — fails with [`Error::QueueNotFound`]: from
    /// [`Consumer::start`](crate::Consumer::start) if a session is up (or comes up on the
    /// connection attempt in progress), else, on the first session, the consumer stops with
    /// that error ([`Consumer::error`](crate::Consumer::error)). With `true` it subscribes
    /// anyway and keeps trying (a `warn` each time, with backoff) until the queue exists —
    /// for a queue another service declares.
    ///
    /// Only the first subscription is checked: a queue that goes away later (deleted, or its
    /// node down in a cluster) is subscribed to again once it is back, whatever this says.
    pub fn wait_for_queue(mut self, yes: bool) -> Self {
        self.wait_for_queue = yes;
        self
    }

    /// The consumer group: consumers of one group apply each message once between them
    /// (default: the queue's name). Dedup records are kept per group, so changing it starts
    /// deduplication afresh.
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = g.into();
        self
    }

    /// Most unacknowledged deliveries at a time (default 500; at least the batch size, and at
    /// least 1).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// Batches handled at once. 1 (the default) keeps strict queue order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Group commit: up to `size` deliveries per transaction, waiting at most `wait` for the
    /// batch to fill. `size` 1 turns it off (one transaction per message).
    pub fn group_commit(mut self, size: usize, wait: Duration) -> Self {
        self.batch_size = size;
        self.batch_wait = wait;
        self
    }

    /// How often a failing message is tried and how long it waits in between (default
    /// [`RetryPolicy::default`]: 5 attempts, after 1 s, 10 s, 60 s, 300 s).
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    /// Where messages go after the last attempt or a `Reject` (default: the queue
    /// `<queue>.dead`, declared by the consumer).
    pub fn dead_letter(mut self, d: DeadLetter) -> Self {
        self.dead_letter = d;
        self
    }

    /// What to do with a message without a `message_id` (default:
    /// [`MissingId::DeadLetter`]).
    pub fn missing_id(mut self, m: MissingId) -> Self {
        self.missing_id = m;
        self
    }

    /// Dedup records older than this are deleted (default 7 days), every `interval`, in
    /// batches of 1,000. A duplicate arriving later than that is applied again.
    pub fn retention(mut self, keep: Duration, interval: Duration) -> Self {
        self.retention = keep;
        self.retention_interval = interval;
        self
    }

    /// Delay between attempts while the database is unreachable (default 100 ms doubling to
    /// 5 s, up to half of each delay taken off at random).
    pub fn store_backoff(mut self, b: Backoff) -> Self {
        self.store_backoff = b;
        self
    }

    /// The work queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Every queue this consumer uses: the work queue, its retry queues and (if it is a queue)
    /// the dead-letter target — for tools that clean up after themselves.
    pub fn queues(&self) -> Vec<String> {
        std::iter::once(self.queue.clone())
            .chain(
                self.topology()
                    .queues
                    .iter()
                    .map(|q| q.name().to_string())
                    .filter(|q| *q != self.queue),
            )
            .collect()
    }

    /// What the consumer declares on every session: its retry queues and (if it is a queue)
    /// the dead-letter target, and for a [quorum](Self::queue_type) work queue the work queue
    /// itself. Merge it into the connection's topology to bind the work queue to an exchange
    /// there (a binding needs its queue declared first).
    pub fn topology(&self) -> Topology {
        retry::topology(&self.queue, &self.retry, &self.dead_letter, self.queue_type)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        crate::transport::check_short("queue name", &self.queue).map_err(Error::Config)?;
        if self.group.is_empty() {
            return Err(Error::Config("the consumer group needs a name".into()));
        }
        if self.concurrency == 0 || self.batch_size == 0 {
            return Err(Error::Config(
                "concurrency and batch size must be at least 1".into(),
            ));
        }
        // Everything the worker would otherwise only find out after `start` returned.
        SubscriptionConfig::new(&self.queue)
            .prefetch(self.prefetch)
            .validate()?;
        self.topology()
            .validate()
            .map_err(|e| Error::Config(format!("retry and dead-letter queues: {e}")))?;
        if (self.prefetch as usize) < self.batch_size {
            return Err(Error::Config(format!(
                "prefetch {} is smaller than the group-commit batch size {}",
                self.prefetch, self.batch_size
            )));
        }
        if self.handler_timeout.is_zero() {
            return Err(Error::Config(
                "handler timeout must be more than zero".into(),
            ));
        }
        if self.retention_interval.is_zero() {
            return Err(Error::Config(
                "retention interval must be more than zero".into(),
            ));
        }
        self.retry.validate().map_err(Error::Config)?;
        self.store_backoff.validate().map_err(Error::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_the_work_queue_its_retry_queues_and_the_dead_letter_queue() {
        let c = ConsumerConfig::new("work").retry(RetryPolicy::new(
            3,
            vec![Duration::from_millis(200), Duration::from_secs(1)],
        ));
        assert_eq!(
            c.queues(),
            ["work", "work.retry.200", "work.retry.1000", "work.dead"]
        );
        let c = c.dead_letter(DeadLetter::Exchange {
            exchange: "dlx".into(),
            routing_key: "k".into(),
        });
        assert_eq!(c.queues(), ["work", "work.retry.200", "work.retry.1000"]);
    }

    #[test]
    fn a_quorum_consumer_declares_its_work_queue_and_lists_it_once() {
        let c = ConsumerConfig::new("work")
            .retry(RetryPolicy::new(3, vec![Duration::from_millis(200)]));
        assert!(c.topology().queues.iter().all(|q| q.name() != "work"));
        let c = c.queue_type(QueueType::Quorum);
        assert_eq!(c.queues(), ["work", "work.retry.200", "work.dead"]);
        let t = c.topology();
        let work = t.queues.iter().find(|q| q.name() == "work").unwrap();
        assert_eq!(
            work.arguments.get("x-delivery-limit").unwrap().as_i64(),
            Some(1003)
        );
        assert!(c.validate().is_ok());
    }
}
