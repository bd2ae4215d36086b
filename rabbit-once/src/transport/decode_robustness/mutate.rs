//! Mutations of real frames: bit flips, truncations, length prefixes set to extremes, regions
//! duplicated or spliced from another frame — and the test that no decoder panics on them.

use super::seeds::{Seed, seeds};
use super::{SEED, feed};
use crate::transport::fuzzing::DecodeTally;
use std::time::Instant;

const MUTATED_INPUTS: usize = 70_000;

/// Offsets of 4-byte big-endian values that could be length prefixes: the frame's size, and
/// in the payload every non-zero value that fits in what follows it.
fn long_len_offsets(f: &[u8]) -> Vec<usize> {
    let mut at = if f.len() >= 7 { vec![3] } else { vec![] };
    for p in 7..f.len().saturating_sub(4) {
        let v = u32::from_be_bytes(f[p..p + 4].try_into().unwrap()) as usize;
        if v > 0 && v <= f.len() - p - 4 {
            at.push(p);
        }
    }
    at
}

/// Offsets of octets that look like short-string lengths: followed by that many printable
/// ASCII bytes.
fn short_len_offsets(f: &[u8]) -> Vec<usize> {
    (7..f.len())
        .filter(|&p| {
            let n = f[p] as usize;
            n > 0 && p + 1 + n <= f.len() && f[p + 1..p + 1 + n].iter().all(u8::is_ascii_graphic)
        })
        .collect()
}

pub(super) fn pick<T: Copy>(rng: &mut fastrand::Rng, xs: &[T]) -> Option<T> {
    (!xs.is_empty()).then(|| xs[rng.usize(..xs.len())])
}

/// One random mutation of `f`.
fn mutate_once(rng: &mut fastrand::Rng, f: &mut Vec<u8>) {
    let len = f.len();
    match rng.u8(..10) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.usize(..len);
            f[i] ^= 1 << rng.u8(..8);
        }
        // Replace a byte, with an interesting value or any.
        1 if len > 0 => {
            let i = rng.usize(..len);
            f[i] = pick(
                rng,
                &[0, 1, 0x7f, 0x80, 0xff, b'F', b'A', b'S', b'x', b'V', 0xce],
            )
            .filter(|_| rng.bool())
            .unwrap_or_else(|| rng.u8(..));
        }
        // Truncate.
        2 if len > 0 => f.truncate(rng.usize(..len)),
        // Insert random bytes.
        3 => {
            let i = rng.usize(..=len);
            let n = rng.usize(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            f.splice(i..i, bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(16));
            f.drain(i..i + n);
        }
        // Duplicate a length-prefixed region (the prefix and what it covers) in place.
        5 => {
            if let Some(p) = pick(rng, &long_len_offsets(f)).filter(|&p| p >= 7) {
                let v = u32::from_be_bytes(f[p..p + 4].try_into().unwrap()) as usize;
                let region = f[p..p + 4 + v].to_vec();
                f.splice(p..p, region);
            }
        }
        // Set a long length to an extreme, random or off-by-one value.
        6 | 7 => {
            if let Some(p) = pick(rng, &long_len_offsets(f)) {
                let v = u32::from_be_bytes(f[p..p + 4].try_into().unwrap());
                let n = match rng.u8(..7) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => v.wrapping_add(1),
                    3 => v.wrapping_sub(1),
                    4 => v.saturating_mul(2),
                    5 => 0x8000_0000,
                    _ => rng.u32(..),
                };
                f[p..p + 4].copy_from_slice(&n.to_be_bytes());
            }
        }
        // Set a short-string length to 0, 255, off by one or random.
        8 => {
            if let Some(p) = pick(rng, &short_len_offsets(f)) {
                f[p] = match rng.u8(..4) {
                    0 => 0,
                    1 => 255,
                    2 => f[p].wrapping_add(1),
                    _ => rng.u8(..),
                };
            }
        }
        // Overwrite a range with a copy of another part of the frame.
        _ if len > 1 => {
            let (a, b) = (rng.usize(..len), rng.usize(..len));
            let n = rng.usize(1..=(len - a.max(b)).min(32));
            let src = f[a..a + n].to_vec();
            f[b..b + n].copy_from_slice(&src);
        }
        _ => {}
    }
}

/// Sets the frame's size field and frame-end octet to match its (mutated) payload, so the
/// mutation reaches the payload decoder instead of stopping at `parse_frame`.
fn refit(f: &mut Vec<u8>) {
    if f.len() < 7 {
        return;
    }
    if f.len() < 8 {
        f.push(0xCE);
    }
    let size = (f.len() - 8) as u32;
    f[3..7].copy_from_slice(&size.to_be_bytes());
    *f.last_mut().unwrap() = 0xCE;
}

/// A seed's frames with one of them (or, sometimes, the whole stream) mutated 1-4 times.
fn mutated(rng: &mut fastrand::Rng, seed: &Seed, all: &[Seed]) -> Vec<u8> {
    let whole = rng.u8(..4) == 0;
    let mut frames = if whole {
        vec![seed.frames.concat()]
    } else {
        seed.frames.clone()
    };
    let i = rng.usize(..frames.len());
    let f = &mut frames[i];
    for _ in 0..rng.usize(1..=4) {
        mutate_once(rng, f);
    }
    // Now and then, a payload spliced in from another seed's frame.
    if rng.u8(..16) == 0 {
        let other = &all[rng.usize(..all.len())];
        let g = &other.frames[rng.usize(..other.frames.len())];
        if g.len() > 8 && f.len() > 8 {
            let at = rng.usize(7..f.len());
            let from = rng.usize(7..g.len());
            f.truncate(at);
            f.extend_from_slice(&g[from..]);
        }
    }
    if !whole && rng.bool() {
        refit(f);
    }
    frames.concat()
}

#[test]
fn mutated_real_frames_never_panic() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(SEED ^ 1);
    let started = Instant::now();
    let mut total = DecodeTally::default();
    for _ in 0..MUTATED_INPUTS {
        let seed = &seeds[rng.usize(..seeds.len())];
        total += feed(&mutated(&mut rng, seed, &seeds));
    }
    eprintln!(
        "{MUTATED_INPUTS} mutated frames in {:?}: {total:?}",
        started.elapsed()
    );
    // The mutations reach the payload decoders, which both accept and refuse them.
    assert!(total.frames > MUTATED_INPUTS / 2, "{total:?}");
    assert!(
        total.methods_ok > 1000 && total.methods_err > 1000,
        "{total:?}"
    );
    assert!(
        total.headers_ok > 1000 && total.headers_err > 100,
        "{total:?}"
    );
    assert!(total.headers_malformed > 1000, "{total:?}");
}
