//! The task that owns the publishing channel.
//!
//! Per session: (1) open a channel, (2) `confirm.select`, (3) re-publish every unconfirmed
//! message, oldest first, (4) then newer ones — all through one path, since the buffer keeps
//! acceptance order and a lost channel turns in-flight messages back into unsent ones.
//! Confirms, nacks and returns settle messages; a channel that nacked is retired once nothing is
//! in flight on it, and nacked messages go out again on a fresh one; a channel closed by the
//! broker over a message
//! we cannot name makes the in-flight messages suspects, re-sent one at a time until the one
//! the broker refuses is found and failed alone.
//!
//! - [`session`]: the task itself and its loop — wait for a session, open a channel, pump;
//! - [`send`]: writing what the window allows, checking unknown exchanges first;
//! - [`events`]: the channel's confirms, nacks, returns and closes;
//! - [`handles`]: the handles' commands in, verdicts and counters out;
//! - [`close`]: draining, handing back at the close deadline, failing for good.

mod close;
mod events;
mod handles;
mod send;
mod session;
#[cfg(all(test, feature = "metrics"))]
mod tests;

pub(super) use session::run;
