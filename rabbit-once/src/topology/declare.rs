//! Declaring a topology on a fresh channel: exchanges, queues, exchange bindings, queue bindings.

use super::{Destination, Topology};
use crate::error::Error;
use crate::transport::{Channel, Connection};

/// Declares everything in `t` on its own channel of `conn`.
///
/// A broker refusal (406 PRECONDITION_FAILED for a queue that exists with other arguments,
/// 403 ACCESS_REFUSED, 404 NOT_FOUND for a binding to a missing exchange) becomes
/// [`Error::Topology`], which is not worth retrying; a lost connection stays what it is.
pub(crate) async fn declare(conn: &Connection, t: &Topology) -> Result<(), Error> {
    if t.is_empty() {
        return Ok(());
    }
    let mut ch = conn.open_channel().await?;
    let r = declare_on(&mut ch, t).await;
    match r {
        Ok(()) => {
            let _ = ch.close().await;
            Ok(())
        }
        Err((what, Error::ChannelClosed { code, text })) => {
            Err(Error::Topology(format!("{what}: {code} {text}")))
        }
        Err((_, e)) => Err(e),
    }
}

async fn declare_on(ch: &mut Channel, t: &Topology) -> Result<(), (String, Error)> {
    for e in &t.exchanges {
        ch.exchange_declare(
            &e.name,
            e.kind.as_str(),
            false,
            e.durable,
            e.auto_delete,
            e.internal,
            e.arguments.clone(),
        )
        .await
        .map_err(|err| (format!("exchange {:?}", e.name), err))?;
    }
    for q in &t.queues {
        ch.queue_declare(
            &q.name,
            false,
            q.durable,
            q.exclusive,
            q.auto_delete,
            q.arguments.clone(),
        )
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
