//! Model-based test of the pending buffer: random operation sequences drive a [`Buffer`] the way
//! the publishing task does, against a simulated broker channel, and after every step the
//! buffer is compared with a small reference model.
//!
//! The simulated broker produces only event orders a real one can: it routes by destination
//! (bindings do not change during a case), returns an unroutable mandatory message when it
//! receives it (so returns are on the wire in publish order, each before its message's
//! confirm), acks unroutable messages, and confirms routed ones (ack or nack, single or
//! multiple) in any order. The client reads the wire in order; a lost connection loses what was
//! not read yet, a channel closed by the broker is read to the end first.
//!
//! Left out on purpose: bindings that change while two copies of one id to one destination are
//! in flight (the older routed, the newer returned). `basic.return` carries no delivery tag, so
//! the buffer's rule (lowest unmarked matching tag) would mark the older copy; no matching by
//! what the broker echoes can tell them apart.
//!
//! - [`reference`]: the model and the simulated broker channel;
//! - [`cases`]: the random operation sequences and the tests that run them.

mod cases;
mod reference;
