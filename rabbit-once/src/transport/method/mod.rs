//! The AMQP 0-9-1 methods rabbit-once speaks, with their class/method ids and arguments.
//!
//! - [`methods`]: the [`Method`] enum, its ids, and which methods carry content;
//! - [`close`]: [`Close`], the arguments `connection.close` and `channel.close` share;
//! - [`encode`]: methods to bytes, and the `basic.publish` fast path;
//! - [`decode`]: bytes to methods.

mod close;
mod decode;
mod encode;
mod methods;
#[cfg(test)]
mod tests;

pub(crate) use close::Close;
pub(crate) use encode::put_basic_publish;
pub(crate) use methods::Method;
