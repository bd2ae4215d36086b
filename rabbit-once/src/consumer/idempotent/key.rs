//! A delivery's dedup key: its message id; the octets of an id that is not UTF-8, in hex; or,
//! by policy, a hash of the routing key and body of a message without one.

use crate::consumer::delivery::Delivery;
use crate::consumer::retry::MissingId;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// One delivery with its dedup key.
pub(super) struct Item {
    pub(super) d: Delivery,
    pub(super) key: String,
    /// When the worker took the delivery's batch (one clock read per batch): the start of its
    /// ack lag.
    pub(super) received: Instant,
}

/// The dedup key: the message id, or (by policy) a hash of routing key and body.
pub(super) fn key_of(d: &Delivery, missing_id: MissingId) -> Result<String, &'static str> {
    if let Some(id) = d.message_id().filter(|id| !id.is_empty()) {
        if !d.message_id_is_utf8() {
            return Ok(octets_key(&d.message_id_bytes().unwrap_or_default()));
        }
        if id.contains('\0') {
            return Err("invalid message_id (contains a NUL byte)");
        }
        return Ok(id.to_string());
    }
    match missing_id {
        MissingId::DeadLetter => Err("missing message_id"),
        MissingId::HashBody => Ok(hash_key(d.routing_key(), d.body())),
    }
}

/// The dedup key of a message without an id (under [`MissingId::HashBody`]): `sha256:` and the
/// hex SHA-256 of the routing key, a NUL byte and the body.
fn hash_key(routing_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(routing_key.as_bytes());
    h.update([0u8]);
    h.update(body);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    push_hex(&mut s, &h.finalize());
    s
}

/// The dedup key of a message id that is not UTF-8: its octets in hex behind a prefix, padded
/// past 255 bytes. A UTF-8 id is a short string (at most 255 bytes) and is its own key, so the
/// two kinds can never share a key — not even a UTF-8 id that reads like the text view of
/// those octets.
fn octets_key(octets: &[u8]) -> String {
    let mut k = String::with_capacity(300);
    k.push_str("octets:");
    push_hex(&mut k, octets);
    k.push(':');
    while k.len() < 256 {
        k.push('.');
    }
    k
}

/// Appends `bytes` to `s` in lower-case hex, two digits a byte.
fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_key_is_the_sha256_of_routing_key_nul_body() {
        // Pinned: a different hash would apply every id-less message again after an upgrade.
        assert_eq!(
            hash_key("orders.created", br#"{"id":1}"#),
            "sha256:0c9ac41fb4ca42083faa52838cbc2adef932f769e3a7137be5e9a2e814dac288"
        );
    }

    #[test]
    fn an_octets_key_is_longer_than_any_utf8_id() {
        let k = octets_key(&[0x00, 0xff, 0x41]);
        assert!(k.starts_with("octets:00ff41:."));
        assert_eq!(k.len(), 256);
        let long = octets_key(&[0xab; 255]);
        assert_eq!(long.len(), "octets:".len() + 510 + 1);
    }
}
