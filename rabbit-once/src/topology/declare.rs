//! Declaring a topology on a fresh channel: exchanges, queues, exchange bindings, queue bindings.

use super::{Destination, Topology};
use crate::error::Error;
use crate::transport::{Channel, ExchangeFlags, Link, QueueFlags};

/// When a topology is declared: on the first session a refusal is most likely a mistake to
/// report; on a later one the same topology was accepted before, so a 404 is another service
/// that has not declared its exchange (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    First,
    Again,
}

/// Declares everything in `t` on its own channel of `link`.
///
/// A broker refusal becomes [`Error::TopologyNotYet`] if it clears by itself (405
/// RESOURCE_LOCKED always; 404 NOT_FOUND on a queue — a durable queue whose node is down or
/// unreachable, in a cluster; 404 on a binding when declaring `Again`) and
/// [`Error::Topology`] otherwise (406 PRECONDITION_FAILED for a queue that exists with other
/// arguments, 403 ACCESS_REFUSED, …), which is not worth retrying; a lost connection stays
/// what it is.
pub(crate) async fn declare(link: &Link, t: &Topology, when: When) -> Result<(), Error> {
    if t.is_empty() {
        return Ok(());
    }
    let mut ch = link.open_channel().await?;
    let r = declare_on(&mut ch, t).await;
    match r {
        Ok(()) => {
            let _ = ch.close().await;
            Ok(())
        }
        Err((what, Error::ChannelClosed { code, text })) => Err(classify(what, code, text, when)),
        Err((_, e)) => Err(e),
    }
}

async fn declare_on(ch: &mut Channel, t: &Topology) -> Result<(), (String, Error)> {
    for e in &t.exchanges {
        let flags = ExchangeFlags {
            passive: false,
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
        };
        ch.exchange_declare(&e.name, e.kind.as_str(), flags, e.arguments.clone())
            .await
            .map_err(|err| (format!("exchange {:?}", e.name), err))?;
    }
    for q in &t.queues {
        let flags = QueueFlags {
            passive: false,
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
        };
        ch.queue_declare(&q.name, flags, q.arguments.clone())
            .await
            .map_err(|err| (format!("queue {:?}", q.name), err))?;
    }
    for b in t
        .bindings
        .iter()
        .filter(|b| matches!(b.destination, Destination::Exchange(_)))
    {
        let Destination::Exchange(dest) = &b.destination else {
            unreachable!()
        };
        ch.exchange_bind(dest, &b.source, &b.routing_key, b.arguments.clone())
            .await
            .map_err(|err| {
                (
                    format!("binding of exchange {dest:?} to {:?}", b.source),
                    err,
                )
            })?;
    }
    for b in &t.bindings {
        if let Destination::Queue(q) = &b.destination {
            ch.queue_bind(q, &b.source, &b.routing_key, b.arguments.clone())
                .await
                .map_err(|err| (format!("binding of queue {q:?} to {:?}", b.source), err))?;
        }
    }
    Ok(())
}

fn classify(what: String, code: u16, text: String, when: When) -> Error {
    let binding = what.starts_with("binding");
    // `queue.declare` (not passive) answers 404 only for a durable queue that exists on a node
    // that is down or unreachable ("home node … is down or inaccessible"): a classic queue of
    // a cluster node that died. It is back when the node is.
    let queue = what.starts_with("queue");
    if code == 405 || (code == 404 && (queue || (binding && when == When::Again))) {
        Error::TopologyNotYet { what, code, text }
    } else {
        Error::Topology(format!("{what}: {code} {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_clear_by_themselves_are_transient() {
        let c = |what: &str, code, when| classify(what.into(), code, "t".into(), when);
        assert!(matches!(
            c("queue \"q\"", 405, When::First),
            Error::TopologyNotYet { code: 405, .. }
        ));
        assert!(matches!(
            c("binding of queue \"q\" to \"x\"", 404, When::Again),
            Error::TopologyNotYet { code: 404, .. }
        ));
        assert!(matches!(
            c("binding of queue \"q\" to \"x\"", 404, When::First),
            Error::Topology(_)
        ));
        assert!(matches!(
            c("queue \"q\"", 404, When::First),
            Error::TopologyNotYet { code: 404, .. }
        ));
        assert!(matches!(
            c("exchange \"x\"", 404, When::Again),
            Error::Topology(_)
        ));
        assert!(matches!(
            c("queue \"q\"", 406, When::Again),
            Error::Topology(_)
        ));
        assert!(matches!(
            c("exchange \"x\"", 403, When::Again),
            Error::Topology(_)
        ));
        assert!(c("queue \"q\"", 405, When::First).is_recoverable());
        assert!(!c("queue \"q\"", 406, When::First).is_recoverable());
    }
}
