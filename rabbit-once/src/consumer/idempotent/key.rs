//! A delivery's dedup key: its message id; the octets of an id that is not UTF-8, in hex; or,
//! by policy, a hash of the routing key and body of a message without one.

use super::worker::Worker;
use crate::consumer::delivery::Delivery;
use crate::consumer::handler::Handler;
use crate::consumer::retry::MissingId;
use crate::dedup::Store;
use sha2::{Digest, Sha256};

/// One delivery with its dedup key.
pub(super) struct Item {
    pub(super) d: Delivery,
    pub(super) key: String,
}

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    /// The dedup key: the message id, or (by policy) a hash of routing key and body.
    pub(super) fn key_of(&self, d: &Delivery) -> Result<String, &'static str> {
        if let Some(id) = d.message_id().filter(|id| !id.is_empty()) {
            if !d.message_id_is_utf8() {
                return Ok(octets_key(&d.message_id_bytes().unwrap_or_default()));
            }
            if id.contains('\0') {
                return Err("invalid message_id (contains a NUL byte)");
            }
            return Ok(id.to_string());
        }
        match self.config.missing_id {
            MissingId::DeadLetter => Err("missing message_id"),
            MissingId::HashBody => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut h = Sha256::new();
                h.update(d.routing_key().as_bytes());
                h.update([0u8]);
                h.update(d.body());
                let mut s = String::with_capacity(7 + 64);
                s.push_str("sha256:");
                for b in h.finalize() {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 15) as usize] as char);
                }
                Ok(s)
            }
        }
    }
}

/// The dedup key of a message id that is not UTF-8: its octets in hex behind a prefix, padded
/// past 255 bytes. A UTF-8 id is a short string (at most 255 bytes) and is its own key, so the
/// two kinds can never share a key — not even a UTF-8 id that reads like the text view of
/// those octets.
fn octets_key(octets: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = String::with_capacity(300);
    k.push_str("octets:");
    for b in octets {
        k.push(HEX[(b >> 4) as usize] as char);
        k.push(HEX[(b & 15) as usize] as char);
    }
    k.push(':');
    while k.len() < 256 {
        k.push('.');
    }
    k
}
