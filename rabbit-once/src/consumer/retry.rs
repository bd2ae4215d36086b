//! Retrying and dead-lettering: the policy, the queues it needs, and the messages it publishes.
//!
//! A failed message is published again to a retry queue `<queue>.retry.<ms>` whose TTL is the
//! delay and whose dead-letter target is the work queue, then the original is acked: a failing
//! message waits out of the way instead of blocking the others. One retry queue per delay, so a
//! long delay never holds up a short one (RabbitMQ expires messages only at a queue's head).
//! After the last attempt it is published to the dead-letter target with headers that say why.

use super::delivery::{ATTEMPT_HEADER, Delivery};
use crate::message::Message;
use crate::topology::{Overflow, Queue, QueueType, Topology};
use crate::transport::FieldValue;
use std::time::{Duration, SystemTime};

/// On a dead-letter copy: why it was dead-lettered (text, cut to 1,000 bytes).
pub const REASON_HEADER: &str = "x-rabbit-once-reason";
/// On a dead-letter copy: how many attempts were made (an integer).
pub const ATTEMPTS_HEADER: &str = "x-rabbit-once-attempts";
/// On a dead-letter copy: the consumer group that dead-lettered it.
pub const GROUP_HEADER: &str = "x-rabbit-once-consumer-group";
/// On a dead-letter copy: the work queue it was consumed from.
pub const QUEUE_HEADER: &str = "x-rabbit-once-queue";
/// On a retry copy: why the last attempt failed (text, cut to 1,000 bytes).
pub const LAST_ERROR_HEADER: &str = "x-rabbit-once-last-error";
/// On retry and dead-letter copies: the exchange the original was published to (set on the
/// first copy, kept on later ones).
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-rabbit-once-original-exchange";
/// On retry and dead-letter copies: the routing key the original was published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-rabbit-once-original-routing-key";
/// On a dead-letter copy: when it was dead-lettered (an AMQP timestamp, seconds since the
/// Unix epoch).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-rabbit-once-dead-lettered-at";

/// How often and how long to wait before giving up on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included. After the last, the message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before attempt 2, 3, …; the last one repeats.
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(300),
            ],
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts in all; `delays[i]` before attempt `i + 2`, the last repeating.
    pub fn new(max_attempts: u32, delays: Vec<Duration>) -> Self {
        RetryPolicy {
            max_attempts,
            delays,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry max_attempts must be at least 1".into());
        }
        if self.max_attempts > 1 && self.delays.is_empty() {
            return Err("retry delays must not be empty".into());
        }
        if self.delays.iter().any(|d| d.is_zero()) {
            return Err("retry delays must be more than zero".into());
        }
        Ok(())
    }

    /// The delay after failed attempt `attempt` (1-based).
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.delays.len() - 1);
        self.delays[i]
    }

    /// The retry tier to use for a delay the handler asked for: the smallest ≥ it, else the
    /// largest.
    pub(crate) fn tier_for(&self, wanted: Duration) -> Duration {
        let mut tiers = self.delays.clone();
        tiers.sort();
        tiers
            .iter()
            .copied()
            .find(|t| *t >= wanted)
            .or_else(|| tiers.last().copied())
            .unwrap_or(wanted)
    }
}

/// Where messages go after the last attempt (or a `Reject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetter {
    /// A queue (declared durable by the consumer). Default: `<queue>.dead`.
    Queue(String),
    /// An exchange and routing key (declared by the application).
    Exchange {
        /// The exchange's name.
        exchange: String,
        /// The routing key every dead letter is published with.
        routing_key: String,
    },
}

/// What to do with a message that has no `message_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingId {
    /// Dead-letter it at once with the reason "missing message_id" (the default).
    #[default]
    DeadLetter,
    /// Deduplicate on a SHA-256 of the routing key and the body instead. Two different messages
    /// with the same body and key are then one message.
    HashBody,
}

/// The retry queue of `queue` for `delay`: `<queue>.retry.<ms>`.
pub(crate) fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}", delay.as_millis())
}

/// Returns of one message to a quorum work queue that the crash-loop bound does not count: a
/// message that only waited in a prefetch buffer when its channel died, or was handed back by
/// a consumer that stopped, never started a run. The broker counts every return, so its
/// delivery limit is set this far above `max_attempts` (see [`delivery_limit`]).
pub(crate) const UNCOUNTED_RETURNS: u32 = 1_000;

/// The delivery limit of a dead-letter queue the consumer declares as a quorum queue: far out
/// of reach of anyone reading and requeueing its messages (RabbitMQ 4.0 would otherwise apply
/// its default of 20 and, the dead-letter queue having no dead-letter target itself, drop a
/// dead letter returned 21 times). `-1`, "no limit" on 4.0, drops a message at its first
/// return on 3.10.
pub(crate) const DEAD_QUEUE_DELIVERY_LIMIT: u32 = i32::MAX as u32;

/// The `x-delivery-limit` of a quorum work queue consumed with `max_attempts` attempts: our
/// crash-loop bound dead-letters a message after `max_attempts` counted runs, each of which
/// follows one return; the broker acts only after more than `limit` returns. The gap leaves
/// room for the returns we do not count ([`UNCOUNTED_RETURNS`]), so the broker's limit never
/// acts before our own policy; and if it ever does, the work queue's dead-letter target is
/// ours: nothing is dropped.
pub(crate) fn delivery_limit(max_attempts: u32) -> u32 {
    max_attempts.saturating_add(UNCOUNTED_RETURNS)
}

/// The queues a consumer of `queue` declares: its retry queues and the dead-letter queue, and,
/// for a quorum work queue, the work queue itself.
///
/// For [`QueueType::Quorum`] every one of them is a quorum queue (a classic queue lives on one
/// node: a message parked in it is unavailable while that node is down, and lost with its
/// disk), and each queue that dead-letters does so `at-least-once` (the message leaves the
/// source only once the target confirmed it; RabbitMQ 3.10+, and it requires
/// `x-overflow: reject-publish`, so a full queue refuses — nacks — a publish instead of
/// dropping its oldest message): the retry queues into the work queue, and the work queue —
/// past its `x-delivery-limit`, see [`delivery_limit`] — into the dead-letter target.
pub(crate) fn topology(
    queue: &str,
    policy: &RetryPolicy,
    dead: &DeadLetter,
    queue_type: QueueType,
) -> Topology {
    let quorum = queue_type == QueueType::Quorum;
    let at_least_once = |q: Queue| {
        q.queue_type(QueueType::Quorum)
            .argument("x-dead-letter-strategy", "at-least-once")
            .overflow(Overflow::RejectPublish)
    };
    let mut t = Topology::new();
    let mut delays = policy.delays.clone();
    delays.sort();
    delays.dedup();
    if policy.max_attempts > 1 {
        for d in delays {
            let q = Queue::new(retry_queue(queue, d))
                .message_ttl(d)
                .dead_letter_exchange("")
                .dead_letter_routing_key(queue);
            t = t.queue(if quorum { at_least_once(q) } else { q });
        }
    }
    if let DeadLetter::Queue(q) = dead {
        let q = Queue::new(q);
        t = t.queue(if quorum {
            q.queue_type(QueueType::Quorum)
                .delivery_limit(DEAD_QUEUE_DELIVERY_LIMIT)
        } else {
            q
        });
    }
    if quorum {
        let work = Queue::new(queue).delivery_limit(delivery_limit(policy.max_attempts));
        let work = match dead {
            DeadLetter::Queue(q) => work.dead_letter_exchange("").dead_letter_routing_key(q),
            DeadLetter::Exchange {
                exchange,
                routing_key,
            } => work
                .dead_letter_exchange(exchange)
                .dead_letter_routing_key(routing_key),
        };
        t = t.queue(at_least_once(work));
    }
    t
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The properties of `d` with the original exchange and key kept, and `key` as the message id
/// (so a hash-keyed message keeps its key when it comes back through a retry queue).
fn carried(d: &Delivery, key: &str) -> crate::transport::Properties {
    let mut p = d.properties().clone();
    if p.message_id.as_deref().is_none_or(str::is_empty) {
        p.message_id = Some(key.to_string());
    }
    // The original is acked once the copy is confirmed: the copy must survive a broker restart,
    // and must not expire on its own.
    p.delivery_mode = Some(2);
    p.expiration = None;
    if p.header(ORIGINAL_EXCHANGE_HEADER).is_none() {
        p = p
            .with_header(ORIGINAL_EXCHANGE_HEADER, d.exchange())
            .with_header(ORIGINAL_ROUTING_KEY_HEADER, d.routing_key());
    }
    p
}

/// The copy of `d` that goes to the retry queue for `delay`, as attempt `next_attempt`.
pub(crate) fn retry_message(
    d: &Delivery,
    key: &str,
    queue: &str,
    delay: Duration,
    next_attempt: u32,
    reason: &str,
) -> Message {
    let p = carried(d, key)
        .with_header(ATTEMPT_HEADER, FieldValue::I64(next_attempt as i64))
        .with_header(LAST_ERROR_HEADER, truncate(reason, 1000));
    Message::to_queue(retry_queue(queue, delay), d.body().clone()).with_properties(p)
}

/// The copy of `d` that goes to the dead-letter target.
pub(crate) fn dead_message(
    d: &Delivery,
    key: &str,
    target: &DeadLetter,
    queue: &str,
    group: &str,
    attempts: u32,
    reason: &str,
) -> Message {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let p = carried(d, key)
        .with_header(REASON_HEADER, truncate(reason, 1000))
        .with_header(ATTEMPTS_HEADER, FieldValue::I64(attempts as i64))
        .with_header(GROUP_HEADER, group)
        .with_header(QUEUE_HEADER, queue)
        .with_header(DEAD_LETTERED_AT_HEADER, FieldValue::Timestamp(now));
    let m = match target {
        DeadLetter::Queue(q) => Message::to_queue(q, d.body().clone()),
        DeadLetter::Exchange {
            exchange,
            routing_key,
        } => Message::new(exchange, routing_key, d.body().clone()),
    };
    m.with_properties(p)
}

/// `full` (a dead-letter copy) cut down to the body, the message id and our own
/// `x-rabbit-once-*` headers: for when the full copy is refused (the original's properties and
/// headers, with ours added, no longer fit in a frame, or carry something the broker will not
/// take from us, such as another user's `user_id`).
pub(crate) fn bare(full: Message) -> Message {
    let mut p = crate::transport::Properties {
        message_id: full.properties.message_id.clone(),
        message_id_octets: full.properties.message_id_octets,
        delivery_mode: Some(2),
        ..Default::default()
    };
    if let Some(h) = &full.properties.headers {
        for (k, v) in h.iter() {
            if k.starts_with("x-rabbit-once-") {
                p = p.with_header(k, v.clone());
            }
        }
    }
    Message {
        properties: p,
        ..full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_by_attempt_and_tiers() {
        let p = RetryPolicy::new(5, vec![ms(100), ms(1000), ms(5000)]);
        assert_eq!(p.delay_after(1), ms(100));
        assert_eq!(p.delay_after(2), ms(1000));
        assert_eq!(p.delay_after(3), ms(5000));
        assert_eq!(p.delay_after(9), ms(5000));
        assert_eq!(p.tier_for(ms(500)), ms(1000));
        assert_eq!(p.tier_for(ms(1)), ms(100));
        assert_eq!(p.tier_for(ms(60_000)), ms(5000));
    }

    #[test]
    fn topology_has_one_retry_queue_per_delay_and_the_dead_queue() {
        let p = RetryPolicy::new(3, vec![ms(200), ms(100), ms(200)]);
        let t = topology(
            "work",
            &p,
            &DeadLetter::Queue("work.dead".into()),
            QueueType::Classic,
        );
        let names: Vec<_> = t.queues.iter().map(|q| q.name().to_string()).collect();
        assert_eq!(names, ["work.retry.100", "work.retry.200", "work.dead"]);
        let r = &t.queues[0];
        assert_eq!(
            r.arguments.get("x-message-ttl").unwrap().as_i64(),
            Some(100)
        );
        assert_eq!(
            r.arguments
                .get("x-dead-letter-routing-key")
                .unwrap()
                .as_str(),
            Some("work")
        );
        assert_eq!(
            r.arguments.get("x-dead-letter-exchange").unwrap().as_str(),
            Some("")
        );
    }

    #[test]
    fn a_classic_consumer_declares_classic_queues_and_leaves_the_work_queue_alone() {
        let p = RetryPolicy::new(3, vec![ms(100)]);
        let t = topology(
            "work",
            &p,
            &DeadLetter::Queue("work.dead".into()),
            QueueType::Classic,
        );
        for q in &t.queues {
            for k in [
                "x-queue-type",
                "x-delivery-limit",
                "x-dead-letter-strategy",
                "x-overflow",
            ] {
                assert!(q.arguments.get(k).is_none(), "{} has {k}", q.name());
            }
        }
        assert!(t.queues.iter().all(|q| q.name() != "work"));
    }

    #[test]
    fn a_quorum_consumer_declares_quorum_queues_that_dead_letter_at_least_once() {
        let str_arg = |q: &Queue, k: &str| {
            q.arguments
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let int_arg = |q: &Queue, k: &str| q.arguments.get(k).and_then(|v| v.as_i64());
        let p = RetryPolicy::new(4, vec![ms(200), ms(100)]);
        let t = topology(
            "work",
            &p,
            &DeadLetter::Queue("work.dead".into()),
            QueueType::Quorum,
        );
        let names: Vec<_> = t.queues.iter().map(|q| q.name().to_string()).collect();
        assert_eq!(
            names,
            ["work.retry.100", "work.retry.200", "work.dead", "work"]
        );
        for q in &t.queues {
            assert_eq!(
                str_arg(q, "x-queue-type").as_deref(),
                Some("quorum"),
                "{}",
                q.name()
            );
            assert!(q.durable, "a quorum queue is durable");
        }
        for (q, ttl) in [(&t.queues[0], 100), (&t.queues[1], 200)] {
            assert_eq!(int_arg(q, "x-message-ttl"), Some(ttl));
            assert_eq!(str_arg(q, "x-dead-letter-exchange").as_deref(), Some(""));
            assert_eq!(
                str_arg(q, "x-dead-letter-routing-key").as_deref(),
                Some("work")
            );
            assert_eq!(
                str_arg(q, "x-dead-letter-strategy").as_deref(),
                Some("at-least-once")
            );
            assert_eq!(str_arg(q, "x-overflow").as_deref(), Some("reject-publish"));
        }
        let dead = &t.queues[2];
        assert_eq!(int_arg(dead, "x-delivery-limit"), Some(i64::from(i32::MAX)));
        assert!(dead.arguments.get("x-dead-letter-exchange").is_none());
        let work = &t.queues[3];
        assert_eq!(int_arg(work, "x-delivery-limit"), Some(4 + 1000));
        assert_eq!(str_arg(work, "x-dead-letter-exchange").as_deref(), Some(""));
        assert_eq!(
            str_arg(work, "x-dead-letter-routing-key").as_deref(),
            Some("work.dead")
        );
        assert_eq!(
            str_arg(work, "x-dead-letter-strategy").as_deref(),
            Some("at-least-once")
        );
        assert_eq!(
            str_arg(work, "x-overflow").as_deref(),
            Some("reject-publish")
        );
        assert!(t.validate().is_ok());

        // Dead letters to an exchange: the work queue's limit dead-letters there too, and no
        // dead-letter queue is declared.
        let t = topology(
            "work",
            &RetryPolicy::new(1, vec![]),
            &DeadLetter::Exchange {
                exchange: "dlx".into(),
                routing_key: "k".into(),
            },
            QueueType::Quorum,
        );
        assert_eq!(t.queues.len(), 1, "no retry queues for a single attempt");
        let work = &t.queues[0];
        assert_eq!(int_arg(work, "x-delivery-limit"), Some(1 + 1000));
        assert_eq!(
            str_arg(work, "x-dead-letter-exchange").as_deref(),
            Some("dlx")
        );
        assert_eq!(
            str_arg(work, "x-dead-letter-routing-key").as_deref(),
            Some("k")
        );
    }

    #[test]
    fn the_brokers_delivery_limit_is_above_the_crash_loop_bound() {
        // The bound dead-letters after `max_attempts` counted returns; the broker only after
        // more than `delivery_limit` returns, counted or not.
        for max in [1, 3, 5, 100, u32::MAX] {
            assert!(delivery_limit(max) >= max);
        }
        assert_eq!(delivery_limit(5), 1005);
    }

    #[test]
    fn validation() {
        assert!(RetryPolicy::new(0, vec![ms(1)]).validate().is_err());
        assert!(RetryPolicy::new(2, vec![]).validate().is_err());
        assert!(RetryPolicy::new(1, vec![]).validate().is_ok());
        assert!(
            RetryPolicy::new(2, vec![Duration::ZERO])
                .validate()
                .is_err()
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1001);
        assert!(t.len() <= 1001 + "…".len());
        assert!(t.ends_with('…'));
    }
}
