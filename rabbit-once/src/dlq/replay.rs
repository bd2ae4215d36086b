//! The replay: each selected dead letter is copied to the work queue with publisher confirms,
//! and removed only once its copy is confirmed.

use super::info::{DeadLetterInfo, replay_properties};
use super::pass::Next;
use super::{DeadLetterSelection, DeadLetters, WINDOW};
use crate::error::Error;
use crate::transport::{Channel, ChannelEvent, publish_frames};
use std::collections::{BTreeMap, HashSet};

/// A dead letter that was not replayed, and why. It is still in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayFailure {
    /// The dead letter.
    pub info: DeadLetterInfo,
    /// Why: the broker refused (nacked) or returned its copy, or the message could not be read
    /// in full.
    pub reason: String,
}

/// What [`DeadLetters::replay`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The dead letters whose copies the broker confirmed in the work queue, in queue order;
    /// each was then removed from the dead-letter queue.
    pub replayed: Vec<DeadLetterInfo>,
    /// Dead letters selected but not replayed (left where they were), with why.
    pub failed: Vec<ReplayFailure>,
    /// Ids asked for that the dead-letter queue does not hold.
    pub not_found: Vec<String>,
    /// Why the replay stopped before the end (the connection was lost …). Every dead letter
    /// not in `replayed` is still in the dead-letter queue (the removal of the last ones in
    /// `replayed` may not have reached the broker either: replay those again, the consumer
    /// skips them as duplicates).
    pub interrupted: Option<Error>,
    /// Copies published but not confirmed when the replay stopped: each may or may not be in
    /// the work queue, and its dead letter is still in the dead-letter queue.
    pub in_flight: usize,
}

impl ReplayReport {
    /// Whether every selected message was replayed: nothing failed, none missing, no
    /// interruption.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.not_found.is_empty() && self.interrupted.is_none()
    }
}

/// A copy published and not yet confirmed.
struct InFlight {
    dead_tag: u64,
    info: DeadLetterInfo,
    /// Set when the broker returned the copy (`basic.return` comes before its confirm).
    returned: Option<String>,
}

pub(super) async fn run(
    dl: &DeadLetters,
    selection: &DeadLetterSelection,
) -> Result<ReplayReport, Error> {
    // A missing work queue would make every copy unroutable: say so before touching anything.
    dl.conn.queue_info(&dl.work_queue).await?;
    let (mut pass, session) = dl.start_pass(selection.prefetch()).await?;
    let mut out = session.link.open_channel().await?;
    out.confirm_select().await?;

    let mut report = ReplayReport::default();
    let mut found = HashSet::new();
    let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let mut next_seq = 1u64;

    let work = async {
        loop {
            if pass.is_drained() && in_flight.is_empty() {
                return Ok::<(), Error>(());
            }
            tokio::select! {
                biased;
                ev = out.recv(), if !in_flight.is_empty() => match ev {
                    Some(ChannelEvent::Ack { tag, multiple }) => {
                        for (_, c) in settled(&mut in_flight, tag, multiple) {
                            match c.returned {
                                Some(reason) => report.failed.push(ReplayFailure { info: c.info, reason }),
                                None => {
                                    pass.ack(c.dead_tag)?;
                                    report.replayed.push(c.info);
                                }
                            }
                        }
                    }
                    Some(ChannelEvent::Nack { tag, multiple }) => {
                        for (_, c) in settled(&mut in_flight, tag, multiple) {
                            report.failed.push(ReplayFailure {
                                info: c.info,
                                reason: "the broker refused (nacked) the copy".into(),
                            });
                        }
                    }
                    Some(ChannelEvent::Return(r)) => {
                        let id = r.properties.message_id.as_deref();
                        if let Some(c) = in_flight
                            .values_mut()
                            .find(|c| c.returned.is_none() && c.info.message_id.as_deref() == id)
                        {
                            c.returned = Some(format!(
                                "the broker returned the copy: {} {}",
                                r.reply_code, r.reply_text
                            ));
                        }
                    }
                    Some(ChannelEvent::Closed(e)) => return Err(e),
                    None => return Err(Error::ConnectionLost("the channel is gone".into())),
                    Some(_) => {}
                },
                next = pass.next(), if !pass.is_drained() && in_flight.len() < WINDOW as usize => {
                    match next? {
                        Next::Message(position, d) => {
                            let id = d.properties.message_id.as_deref();
                            if !selection.matches(id) {
                                continue;
                            }
                            if let Some(id) = id {
                                found.insert(id.to_string());
                            }
                            let info = DeadLetterInfo::of(position, &d);
                            if let Some(why) = &d.malformed {
                                report.failed.push(ReplayFailure {
                                    reason: format!("it could not be read in full ({why}): its copy would not be the same message"),
                                    info,
                                });
                                continue;
                            }
                            let properties = replay_properties(&d.properties);
                            let ((), full) = out.write(|w| {
                                w.publish(publish_frames("", &dl.work_queue, true, &properties, &d.body))
                            })?;
                            in_flight.insert(next_seq, InFlight { dead_tag: d.delivery_tag, info, returned: None });
                            next_seq += 1;
                            if full {
                                session.link.writable().await;
                            }
                        }
                        Next::Silent => pass.check().await?,
                        Next::Drained => {}
                    }
                }
            }
        }
    };
    let stopped = work.await.err();
    let stopped = match stopped {
        None => pass.finish().await.err(),
        Some(e) => {
            // Give back what is held if the channel still stands (a lost connection gives it
            // back anyway).
            let _ = pass.finish().await;
            Some(e)
        }
    };
    report.in_flight = in_flight.len();
    report.interrupted = stopped;
    report.not_found = selection.missing(&found);
    close(out).await;
    Ok(report)
}

/// Takes the copies a confirm of `tag` settles out of `in_flight`.
fn settled(
    in_flight: &mut BTreeMap<u64, InFlight>,
    tag: u64,
    multiple: bool,
) -> Vec<(u64, InFlight)> {
    if multiple {
        let rest = in_flight.split_off(&(tag + 1));
        std::mem::replace(in_flight, rest).into_iter().collect()
    } else {
        in_flight
            .remove(&tag)
            .map(|c| (tag, c))
            .into_iter()
            .collect()
    }
}

async fn close(mut ch: Channel) {
    let _ = ch.close().await;
}
