//! `amqp://` / `amqps://` URIs: parsing (errors name the bad part) and a display without the password.
//!
//! - `endpoint.rs`: [`Endpoint`], one broker endpoint; how it is shown (never with the password)
//!   and [`Endpoint::to_uri`], the URI back as text for another process (with the password).
//! - `parse.rs`: [`Endpoint::parse`] and the chain of small functions it calls, one per part of the URI.
//! - `tests.rs`: the parser's tests, above all that no error ever quotes a password.

mod endpoint;
mod parse;
#[cfg(test)]
mod tests;

pub(crate) use endpoint::AuthMechanism;
pub use endpoint::Endpoint;
#[cfg(feature = "tls")]
pub(crate) use endpoint::Verify;
