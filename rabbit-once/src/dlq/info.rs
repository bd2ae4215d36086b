//! What a dead letter says about itself ([`DeadLetterInfo`]), read from our
//! `x-rabbit-once-*` headers and the broker's `x-death`, and the copy a replay publishes.

use crate::consumer::ATTEMPT_HEADER;
use crate::consumer::retry::{
    ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, GROUP_HEADER, LAST_ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, QUEUE_HEADER, REASON_HEADER,
};
use crate::transport::{FieldTable, FieldValue, Properties, RawDelivery};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The headers a replayed copy goes without: the failure bookkeeping that would make the
/// consumer take it for a message that already failed (the attempt number above all), ours and
/// the broker's. The original exchange and routing key stay, so a copy that fails again still
/// says where it first came from.
pub(crate) const STRIPPED_ON_REPLAY: &[&str] = &[
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    REASON_HEADER,
    LAST_ERROR_HEADER,
    GROUP_HEADER,
    QUEUE_HEADER,
    DEAD_LETTERED_AT_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

/// One message in a dead-letter queue, as [`DeadLetters::list`](crate::DeadLetters::list)
/// shows it. Every field but the position and size is read from the message's headers: those
/// the idempotent consumer writes when it dead-letters (`x-rabbit-once-*`, see
/// [`headers`](crate::headers)) and, for a message the broker dead-lettered (a quorum work
/// queue past its delivery limit, an expired or rejected message), the broker's `x-death`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// Its place in the dead-letter queue when read, from 0 at the head.
    pub position: u64,
    /// The `message_id` (a replayed copy keeps it), if it has one.
    pub message_id: Option<String>,
    /// Why it was dead-lettered: the consumer's reason, else the broker's (`rejected`,
    /// `expired`, `maxlen`, `delivery_limit`).
    pub reason: Option<String>,
    /// Attempts the consumer made (its `x-rabbit-once-attempts`), if it says.
    pub attempts: Option<u32>,
    /// How many times the broker dead-lettered it (the sum of the `count`s in `x-death`; 0 for
    /// a message only the consumer dead-lettered).
    pub deaths: u64,
    /// The earliest failure time recorded on it (`x-death` times, the consumer's
    /// dead-lettered-at). The consumer records when it dead-lettered, not when the first attempt
    /// failed: for its dead letters this equals `last_failure`.
    pub first_failure: Option<SystemTime>,
    /// The latest failure time recorded on it.
    pub last_failure: Option<SystemTime>,
    /// The exchange it was first published to (`""`: the default exchange).
    pub original_exchange: Option<String>,
    /// The routing key it was first published with.
    pub original_routing_key: Option<String>,
    /// The work queue it failed in.
    pub queue: Option<String>,
    /// The consumer group that dead-lettered it.
    pub group: Option<String>,
    /// Body size in bytes.
    pub body_size: usize,
    /// Why it could not be read in full, if it could not (properties that do not parse, a
    /// body over the connection's `max_body_size`): such a message is listed but never
    /// replayed, since its copy would not be the same message.
    pub malformed: Option<String>,
}

impl DeadLetterInfo {
    /// What the delivery at `position` says about itself.
    pub(crate) fn of(position: u64, d: &RawDelivery) -> Self {
        Self::read(position, &d.properties, d.body.len(), d.malformed.clone())
    }

    /// Reads what `properties` say about the dead letter at `position`.
    pub(crate) fn read(
        position: u64,
        properties: &Properties,
        body_size: usize,
        malformed: Option<String>,
    ) -> Self {
        let text = |k: &str| properties.header(k).and_then(text_of);
        let deaths = x_death(properties);
        let latest = deaths.first();
        let oldest = deaths.last();
        let dead_at = match properties.header(DEAD_LETTERED_AT_HEADER) {
            Some(FieldValue::Timestamp(s)) => Some(at(*s)),
            _ => None,
        };
        let times: Vec<SystemTime> = deaths
            .iter()
            .filter_map(|d| d.time)
            .chain(dead_at)
            .collect();
        DeadLetterInfo {
            position,
            message_id: properties.message_id.clone(),
            reason: text(REASON_HEADER)
                .or_else(|| latest.and_then(|d| d.reason.clone()))
                .or_else(|| text("x-last-death-reason")),
            attempts: properties
                .header(ATTEMPTS_HEADER)
                .and_then(FieldValue::as_i64)
                .map(|a| a.clamp(0, u32::MAX as i64) as u32),
            deaths: deaths.iter().map(|d| d.count).sum(),
            first_failure: times.iter().min().copied(),
            last_failure: times.iter().max().copied(),
            original_exchange: text(ORIGINAL_EXCHANGE_HEADER)
                .or_else(|| oldest.and_then(|d| d.exchange.clone()))
                .or_else(|| text("x-first-death-exchange")),
            original_routing_key: text(ORIGINAL_ROUTING_KEY_HEADER)
                .or_else(|| oldest.and_then(|d| d.routing_key.clone())),
            queue: text(QUEUE_HEADER)
                .or_else(|| latest.and_then(|d| d.queue.clone()))
                .or_else(|| text("x-last-death-queue")),
            group: text(GROUP_HEADER),
            body_size,
            malformed,
        }
    }
}

/// The properties a replayed copy is published with: all of the dead letter's — the same
/// `message_id`, content type, headers… — but the failure bookkeeping
/// ([`STRIPPED_ON_REPLAY`]).
pub(crate) fn replay_properties(dead: &Properties) -> Properties {
    let mut p = dead.clone();
    // The broker checks `user_id` against the publishing connection's user: a dead letter of
    // another user's message would be refused (406) at every replay.
    p.user_id = None;
    if let Some(h) = &mut p.headers {
        for k in STRIPPED_ON_REPLAY {
            h.remove(k);
        }
        if h.is_empty() {
            p.headers = None;
        }
    }
    p
}

/// One entry of the broker's `x-death` (newest first on the wire).
#[derive(Debug, Default)]
struct Death {
    count: u64,
    reason: Option<String>,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    time: Option<SystemTime>,
}

fn x_death(p: &Properties) -> Vec<Death> {
    let Some(FieldValue::Array(entries)) = p.header("x-death") else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            FieldValue::Table(t) => Some(death(t)),
            _ => None,
        })
        .collect()
}

fn death(t: &FieldTable) -> Death {
    let text = |k: &str| t.get(k).and_then(text_of);
    Death {
        count: t
            .get("count")
            .and_then(FieldValue::as_i64)
            .map_or(1, |c| c.max(0) as u64),
        reason: text("reason"),
        queue: text("queue"),
        exchange: text("exchange"),
        routing_key: match t.get("routing-keys") {
            Some(FieldValue::Array(keys)) => keys.first().and_then(text_of),
            _ => None,
        },
        time: match t.get("time") {
            Some(FieldValue::Timestamp(s)) => Some(at(*s)),
            _ => None,
        },
    }
}

fn text_of(v: &FieldValue) -> Option<String> {
    match v {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Properties {
        Properties {
            message_id: Some("order-7".into()),
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            ..Default::default()
        }
        .with_header("tenant", "acme")
        .with_header(ATTEMPT_HEADER, FieldValue::I64(3))
        .with_header(LAST_ERROR_HEADER, "timeout")
        .with_header(ORIGINAL_EXCHANGE_HEADER, "orders")
        .with_header(ORIGINAL_ROUTING_KEY_HEADER, "orders.created")
        .with_header(REASON_HEADER, "gave up after 3 attempts: timeout")
        .with_header(ATTEMPTS_HEADER, FieldValue::I64(3))
        .with_header(GROUP_HEADER, "billing")
        .with_header(QUEUE_HEADER, "orders-work")
        .with_header(
            DEAD_LETTERED_AT_HEADER,
            FieldValue::Timestamp(1_700_000_000),
        )
    }

    #[test]
    fn the_consumers_headers_say_why_how_often_when_and_from_where() {
        let i = DeadLetterInfo::read(4, &ours(), 12, None);
        assert_eq!(i.position, 4);
        assert_eq!(i.message_id.as_deref(), Some("order-7"));
        assert_eq!(
            i.reason.as_deref(),
            Some("gave up after 3 attempts: timeout")
        );
        assert_eq!(i.attempts, Some(3));
        assert_eq!(i.deaths, 0);
        assert_eq!(i.first_failure, Some(at(1_700_000_000)));
        assert_eq!(i.last_failure, i.first_failure);
        assert_eq!(i.original_exchange.as_deref(), Some("orders"));
        assert_eq!(i.original_routing_key.as_deref(), Some("orders.created"));
        assert_eq!(i.queue.as_deref(), Some("orders-work"));
        assert_eq!(i.group.as_deref(), Some("billing"));
        assert_eq!(i.body_size, 12);
    }

    fn death_entry(queue: &str, reason: &str, count: i64, time: u64) -> FieldValue {
        FieldValue::Table(
            FieldTable::new()
                .with("count", FieldValue::I64(count))
                .with("reason", reason)
                .with("queue", queue)
                .with("exchange", "orders")
                .with(
                    "routing-keys",
                    FieldValue::Array(vec![FieldValue::from("orders.created")]),
                )
                .with("time", FieldValue::Timestamp(time)),
        )
    }

    #[test]
    fn a_message_the_broker_dead_lettered_is_read_from_x_death() {
        let p = Properties {
            message_id: Some("m".into()),
            ..Default::default()
        }
        .with_header(
            "x-death",
            FieldValue::Array(vec![
                death_entry("work", "delivery_limit", 1, 200),
                death_entry("work.retry.100", "expired", 2, 100),
            ]),
        )
        .with_header("x-delivery-count", FieldValue::I64(1004));
        let i = DeadLetterInfo::read(0, &p, 0, None);
        assert_eq!(i.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(i.queue.as_deref(), Some("work"));
        assert_eq!(i.deaths, 3);
        assert_eq!(i.attempts, None);
        assert_eq!(
            (i.first_failure, i.last_failure),
            (Some(at(100)), Some(at(200)))
        );
        assert_eq!(i.original_exchange.as_deref(), Some("orders"));
        assert_eq!(i.original_routing_key.as_deref(), Some("orders.created"));
    }

    #[test]
    fn a_replayed_copy_keeps_everything_but_the_failure_bookkeeping_and_user_id() {
        let dead = ours()
            .with_header(
                "x-death",
                FieldValue::Array(vec![death_entry("w", "rejected", 1, 1)]),
            )
            .with_header("x-first-death-reason", "rejected")
            .with_header("x-delivery-count", FieldValue::I64(2));
        let dead = Properties {
            user_id: Some("billing-svc".into()),
            ..dead
        };
        let p = replay_properties(&dead);
        assert_eq!(p.message_id.as_deref(), Some("order-7"));
        assert_eq!(p.user_id, None, "the broker would refuse another user's");
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(
            p.header("tenant").and_then(FieldValue::as_str),
            Some("acme")
        );
        assert_eq!(
            p.header(ORIGINAL_EXCHANGE_HEADER)
                .and_then(FieldValue::as_str),
            Some("orders")
        );
        for k in STRIPPED_ON_REPLAY {
            assert!(p.header(k).is_none(), "{k} is stripped");
        }
        let names: Vec<&str> = p.headers.as_ref().unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(
            names.len(),
            3,
            "tenant and the original exchange and key: {names:?}"
        );
        // Nothing but bookkeeping: no header table at all.
        let bare = Properties::default().with_header(ATTEMPT_HEADER, FieldValue::I64(2));
        assert_eq!(replay_properties(&bare).headers, None);
    }
}
