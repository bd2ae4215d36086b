//! Random inputs of several shapes (noise, frames around noise, known method ids before
//! tables and strings) — and the test that no decoder panics on them.

use super::mutate::pick;
use super::{SEED, feed};
use crate::transport::fuzzing::DecodeTally;
use std::time::Instant;

const RANDOM_INPUTS: usize = 40_000;

/// The (class, method) pairs `Method::decode` knows, and a few it does not.
const METHOD_IDS: &[(u16, u16)] = &[
    (10, 10),
    (10, 11),
    (10, 30),
    (10, 31),
    (10, 40),
    (10, 41),
    (10, 50),
    (10, 51),
    (10, 60),
    (10, 61),
    (20, 10),
    (20, 11),
    (20, 20),
    (20, 21),
    (20, 40),
    (20, 41),
    (40, 10),
    (40, 11),
    (40, 20),
    (40, 21),
    (40, 30),
    (40, 31),
    (50, 10),
    (50, 11),
    (50, 20),
    (50, 21),
    (50, 30),
    (50, 31),
    (50, 40),
    (50, 41),
    (50, 50),
    (50, 51),
    (60, 10),
    (60, 11),
    (60, 20),
    (60, 21),
    (60, 30),
    (60, 31),
    (60, 40),
    (60, 50),
    (60, 60),
    (60, 70),
    (60, 71),
    (60, 72),
    (60, 80),
    (60, 90),
    (60, 120),
    (85, 10),
    (85, 11),
    (90, 10),
    (0, 0),
    (65535, 65535),
];

const TAGS: &[u8] = b"tbBsuIilfdDSTFAVx";

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let n = rng.usize(..=max);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// Random field-table entries: a short key, a known type tag, then random bytes (often
/// enough to be a valid value, sometimes a nested table or array of the same).
fn random_table_body(rng: &mut fastrand::Rng, depth: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..rng.usize(..6) {
        let key = random_bytes(rng, 6);
        b.push(key.len() as u8);
        b.extend_from_slice(&key);
        let tag = pick(rng, TAGS).unwrap();
        b.push(tag);
        match tag {
            b'F' | b'A' if depth < 4 => {
                let inner = random_table_body(rng, depth + 1);
                b.extend_from_slice(&(inner.len() as u32).to_be_bytes());
                b.extend_from_slice(&inner);
            }
            b'S' | b'x' => {
                let s = random_bytes(rng, 12);
                b.extend_from_slice(&(s.len() as u32).to_be_bytes());
                b.extend_from_slice(&s);
            }
            _ => b.extend(random_bytes(rng, 9)),
        }
    }
    b
}

fn random_table(rng: &mut fastrand::Rng) -> Vec<u8> {
    let body = random_table_body(rng, 0);
    let mut t = (body.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&body);
    t
}

/// A random input of one of several shapes: pure noise, a frame around noise, a known method
/// id before noise or a table, a table, properties flags before tables and strings.
fn random_input(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(..6) {
        0 => random_bytes(rng, 512),
        1 => {
            let payload = random_bytes(rng, 300);
            let any = rng.u8(..);
            let mut f = vec![pick(rng, &[1, 2, 3, 8, any]).unwrap()];
            f.extend_from_slice(&rng.u16(..4).to_be_bytes());
            let size = if rng.u8(..4) == 0 {
                rng.u32(..)
            } else {
                payload.len() as u32
            };
            f.extend_from_slice(&size.to_be_bytes());
            f.extend_from_slice(&payload);
            f.push(if rng.u8(..8) == 0 { rng.u8(..) } else { 0xCE });
            f
        }
        2 | 3 => {
            let (c, m) = pick(rng, METHOD_IDS).unwrap();
            let mut p = c.to_be_bytes().to_vec();
            p.extend_from_slice(&m.to_be_bytes());
            for _ in 0..rng.usize(..4) {
                if rng.bool() {
                    p.extend(random_table(rng));
                } else {
                    let s = random_bytes(rng, 10);
                    p.push(s.len() as u8);
                    p.extend_from_slice(&s);
                }
            }
            p
        }
        4 => random_table(rng),
        _ => {
            let mut p = rng.u16(..).to_be_bytes().to_vec();
            for _ in 0..rng.usize(..5) {
                if rng.u8(..3) == 0 {
                    p.extend(random_table(rng));
                } else {
                    let s = random_bytes(rng, 10);
                    p.push(s.len() as u8);
                    p.extend_from_slice(&s);
                }
            }
            p
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let started = Instant::now();
    let mut total = DecodeTally::default();
    for _ in 0..RANDOM_INPUTS {
        total += feed(&random_input(&mut rng));
    }
    eprintln!(
        "{RANDOM_INPUTS} random inputs in {:?}: {total:?}",
        started.elapsed()
    );
    // The shaped inputs get past the first length prefix often enough to mean something.
    assert!(total.frames > 1000, "{total:?}");
    assert!(total.methods_ok > 1000, "{total:?}");
    assert!(total.tables_ok > 1000, "{total:?}");
    assert!(total.properties_ok > 1000, "{total:?}");
    assert!(total.headers_malformed > 1000, "{total:?}");
}
