//! The publisher's buffer: every accepted message, in acceptance order, until the broker's
//! verdict. It belongs to the publisher, not to a channel, so a lost channel or connection
//! loses nothing: [`Buffer::channel_lost`] turns every in-flight message back into unsent, and
//! sending restarts from the oldest — so they go out first, in their original order.
//!
//! Confirms are matched by our own bookkeeping: on each channel, delivery tags count from 1 in
//! publish order, and `tag_seqs[i]` is the sequence number published with tag `first_tag + i`.
//! Pure logic: no I/O, tested with plain values.
//!
//! - [`pending`]: the [`Buffer`] — acceptance order, the send cursor, a lost channel, retries,
//!   the drain;
//! - [`confirms`]: how acks, nacks, returns and our own failures settle its messages;
//! - [`entry`]: one buffered message and where it stands, and a settled one ([`Resolved`]);
//! - `tests`: unit tests; `model`: a model-based (proptest) test against a simulated broker.

mod confirms;
mod entry;
#[cfg(test)]
mod model;
mod pending;
#[cfg(test)]
mod tests;

pub(crate) use entry::Resolved;
pub(crate) use pending::Buffer;
