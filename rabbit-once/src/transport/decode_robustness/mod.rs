//! The decoders against hostile bytes: random inputs and mutated real frames, with a fixed
//! seed so a failure reproduces. Whatever the bytes, every decoder returns `Ok` or `Err` —
//! a panic fails the test — and the checks of [`super::fuzzing`] hold: a frame is split off
//! whole or not at all, no table nests beyond [`MAX_DEPTH`](super::table::MAX_DEPTH), and
//! nothing decoded holds more heap than a small multiple of the input (a length prefix
//! claiming 4 GiB allocates nothing).
//!
//! The coverage-guided counterpart is the cargo-fuzz target in `fuzz/` (docs/fuzzing.md);
//! `seeds::write_fuzz_seeds` writes its seed corpus from the same real frames.
//!
//! - [`seeds`]: real frames from our own encoders; they decode cleanly;
//! - [`mutate`]: those frames mutated;  [`random`]: random inputs of several shapes;
//! - [`limits`]: nesting and 4 GiB length prefixes, case by case.

mod limits;
mod mutate;
mod random;
mod seeds;

use super::fuzzing::{self, DecodeTally};

const SEED: u64 = 0x5EED_AB1E_0009_0001;

/// Every decoder on `data`: the stream checks of `decode_all`, and the method and content
/// header decoders on the bytes themselves and on what follows a frame header.
fn feed(data: &[u8]) -> DecodeTally {
    let mut out = fuzzing::decode_all(data);
    for payload in [data, data.get(7..).unwrap_or_default()] {
        fuzzing::decode_method(payload, &mut out);
        fuzzing::decode_header(payload, &mut out);
    }
    out
}
