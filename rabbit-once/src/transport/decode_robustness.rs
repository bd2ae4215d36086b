//! The decoders against hostile bytes: random inputs and mutated real frames, with a fixed
//! seed so a failure reproduces. Whatever the bytes, every decoder returns `Ok` or `Err` —
//! a panic fails the test — and the checks of [`super::fuzzing`] hold: a frame is split off
//! whole or not at all, no table nests beyond [`MAX_DEPTH`], and nothing decoded holds more
//! heap than a small multiple of the input (a length prefix claiming 4 GiB allocates nothing).
//!
//! The coverage-guided counterpart is the cargo-fuzz target in `fuzz/` (docs/fuzzing.md);
//! `write_fuzz_seeds` below writes its seed corpus from the same real frames.

use super::fuzzing::{self, FRAME_MAX, Outcome};
use super::method::{Close, Method};
use super::properties::Properties;
use super::table::{FieldTable, FieldValue, MAX_DEPTH};
use super::wire::{Reader, text_view};
use super::{frame, frame::PublishFrames};
use bytes::BytesMut;
use std::time::Instant;

const SEED: u64 = 0x5EED_AB1E_0009_0001;
const RANDOM_INPUTS: usize = 40_000;
const MUTATED_INPUTS: usize = 70_000;

// ---------------------------------------------------------------------------------------
// Real frames, made by the crate's own encoders.

/// A header value of every type, with tables and arrays nested inside each other.
fn every_value_table() -> FieldTable {
    let inner = FieldTable::new()
        .with("n", 1i32)
        .with("s", "x")
        .with("a", vec![FieldValue::Void, FieldValue::from(true)]);
    let death = FieldTable::new()
        .with("count", 3i64)
        .with("reason", "rejected")
        .with("queue", "orders")
        .with("time", FieldValue::Timestamp(1_700_000_000))
        .with("routing-keys", vec![FieldValue::from("rk.1")]);
    FieldTable::new()
        .with("bool", true)
        .with("i8", -3i8)
        .with("u8", 200u8)
        .with("i16", -300i16)
        .with("u16", 60000u16)
        .with("i32", -70000i32)
        .with("u32", 4_000_000_000u32)
        .with("i64", -5_000_000_000i64)
        .with("f32", 1.5f32)
        .with("f64", -2.25f64)
        .with("dec", FieldValue::Decimal(2, 12345))
        .with("str", "héllo")
        .with("bin-str", FieldValue::LongString(vec![0xff, 0xfe, b'a', 0]))
        .with("ts", FieldValue::Timestamp(1_700_000_000))
        .with("void", FieldValue::Void)
        .with("bytes", FieldValue::ByteArray(vec![0, 1, 2, 255]))
        .with(text_view(b"key-\xff\xfe"), "non-UTF-8 key")
        .with(
            "table",
            FieldTable::new().with("inner", inner.clone()).with(
                "list",
                vec![
                    FieldValue::Table(inner.clone()),
                    FieldValue::Array(vec![1i32.into(), "deep".into(), FieldValue::Table(inner)]),
                ],
            ),
        )
        .with("x-death", vec![FieldValue::Table(death)])
}

fn rich_properties() -> Properties {
    Properties {
        content_type: Some("application/json".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(every_value_table()),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("corr-1".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some(text_view(b"id-\xc3\x28-\xff")),
        timestamp: Some(1_700_000_000),
        kind: Some("order.created".into()),
        user_id: Some("guest".into()),
        app_id: Some("rabbit-once".into()),
        cluster_id: Some("c1".into()),
        message_id_octets: false,
    }
}

/// One encoded frame per element, as the broker or the publisher would send them.
#[derive(Debug)]
struct Seed {
    name: &'static str,
    frames: Vec<Vec<u8>>,
}

/// The frames `bytes` holds, each one whole (header, payload, frame-end).
fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(f) = frame::parse_frame(&mut buf, u32::MAX).expect("own frames parse") {
        let n = f.payload.len() + frame::FRAME_OVERHEAD;
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    out
}

fn method_frame(channel: u16, m: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::put_method(&mut out, channel, m);
    out.to_vec()
}

fn publish(frame_max: u32, properties: &Properties, body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = BytesMut::new();
    frame::put_publish(
        &mut out,
        1,
        frame_max,
        PublishFrames {
            exchange: "orders",
            routing_key: "order.created",
            mandatory: true,
            properties,
            body,
        },
    );
    split(&out)
}

/// `method` followed by the content header and body frames of a publish.
fn with_content(method: &Method, properties: &Properties, body: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = vec![method_frame(1, method)];
    frames.extend(publish(4096, properties, body).into_iter().skip(1));
    frames
}

fn seeds() -> Vec<Seed> {
    let args = FieldTable::new()
        .with("x-queue-type", "quorum")
        .with("x-message-ttl", 60_000i32)
        .with("x-max-length", 10_000i64)
        .with("x-dead-letter-exchange", "dlx")
        .with("x-overflow", "reject-publish");
    let server_properties = FieldTable::new()
        .with(
            "capabilities",
            FieldTable::new()
                .with("publisher_confirms", true)
                .with("exchange_exchange_bindings", true)
                .with("basic.nack", true)
                .with("consumer_cancel_notify", true)
                .with("connection.blocked", true)
                .with("authentication_failure_close", true)
                .with("per_consumer_qos", true),
        )
        .with("cluster_name", "rabbit@host")
        .with("copyright", "Copyright (c) 2007-2024 Broadcom Inc")
        .with("information", "Licensed under the MPL 2.0")
        .with("platform", "Erlang/OTP 26.2")
        .with("product", "RabbitMQ")
        .with("version", "3.13.7");
    let body: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
    let deliver = Method::BasicDeliver {
        consumer_tag: "amq.ctag-abc".into(),
        delivery_tag: 42,
        redelivered: true,
        exchange: "orders".into(),
        routing_key: "order.created".into(),
    };
    let ret = Method::BasicReturn {
        reply_code: 312,
        reply_text: "NO_ROUTE".into(),
        exchange: "orders".into(),
        routing_key: "nowhere".into(),
    };
    let one = |name, channel, m: Method| Seed {
        name,
        frames: vec![method_frame(channel, &m)],
    };
    vec![
        one(
            "connection-start",
            0,
            Method::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties,
                mechanisms: "AMQPLAIN PLAIN".into(),
                locales: "en_US".into(),
            },
        ),
        one(
            "connection-start-ok",
            0,
            Method::ConnectionStartOk {
                client_properties: FieldTable::new()
                    .with("product", "rabbit-once")
                    .with("capabilities", FieldTable::new().with("basic.nack", true)),
                mechanism: "PLAIN".into(),
                response: b"\0guest\0guest".to_vec(),
                locale: "en_US".into(),
            },
        ),
        one(
            "connection-tune",
            0,
            Method::ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            },
        ),
        one(
            "connection-close",
            0,
            Method::ConnectionClose(Close {
                reply_code: 320,
                reply_text: "CONNECTION_FORCED - broker forced connection closure".into(),
                class_id: 0,
                method_id: 0,
            }),
        ),
        one(
            "connection-blocked",
            0,
            Method::ConnectionBlocked {
                reason: "low on memory".into(),
            },
        ),
        one(
            "channel-close",
            1,
            Method::ChannelClose(Close {
                reply_code: 406,
                reply_text: "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'".into(),
                class_id: 50,
                method_id: 10,
            }),
        ),
        one(
            "queue-declare",
            1,
            Method::QueueDeclare {
                queue: "orders".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: args.clone(),
            },
        ),
        one(
            "queue-declare-ok",
            1,
            Method::QueueDeclareOk {
                queue: "orders".into(),
                message_count: 12,
                consumer_count: 1,
            },
        ),
        one(
            "exchange-declare",
            1,
            Method::ExchangeDeclare {
                exchange: "orders".into(),
                kind: "topic".into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::new().with("alternate-exchange", "ae"),
            },
        ),
        one(
            "queue-bind",
            1,
            Method::QueueBind {
                queue: "orders".into(),
                exchange: "orders".into(),
                routing_key: "order.*".into(),
                arguments: every_value_table(),
            },
        ),
        one(
            "basic-consume",
            1,
            Method::BasicConsume {
                queue: "orders".into(),
                consumer_tag: "ct".into(),
                no_ack: false,
                exclusive: false,
                arguments: FieldTable::new().with("x-priority", 10i32),
            },
        ),
        one(
            "basic-nack",
            1,
            Method::BasicNack {
                delivery_tag: 7,
                multiple: true,
                requeue: false,
            },
        ),
        one(
            "basic-get-ok",
            1,
            Method::BasicGetOk {
                delivery_tag: 9,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 3,
            },
        ),
        Seed {
            name: "publish-rich",
            frames: publish(4096, &rich_properties(), &body),
        },
        Seed {
            name: "publish-small",
            frames: publish(
                FRAME_MAX,
                &Properties {
                    message_id: Some("0192-abc".into()),
                    delivery_mode: Some(2),
                    ..Default::default()
                },
                b"{\"id\":1}",
            ),
        },
        Seed {
            name: "publish-empty",
            frames: publish(4096, &Properties::default(), b""),
        },
        Seed {
            name: "deliver",
            frames: with_content(&deliver, &rich_properties(), &body[..300]),
        },
        Seed {
            name: "return",
            frames: with_content(&ret, &rich_properties(), b"returned"),
        },
        Seed {
            name: "heartbeat",
            frames: {
                let mut out = BytesMut::new();
                frame::put_heartbeat(&mut out);
                vec![out.to_vec()]
            },
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Mutations.

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

fn pick<T: Copy>(rng: &mut fastrand::Rng, xs: &[T]) -> Option<T> {
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

// ---------------------------------------------------------------------------------------
// Random inputs.

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

/// Every decoder on `data`: the stream checks of `decode_all`, and the method and content
/// header decoders on the bytes themselves and on what follows a frame header.
fn feed(data: &[u8]) -> Outcome {
    let mut out = fuzzing::decode_all(data);
    for payload in [data, data.get(7..).unwrap_or_default()] {
        fuzzing::decode_method(payload, &mut out);
        fuzzing::decode_header(payload, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn own_frames_decode_cleanly() {
    for seed in seeds() {
        let out = fuzzing::decode_all(&seed.frames.concat());
        assert_eq!(out.frames, seed.frames.len(), "{}", seed.name);
        assert_eq!(out.methods_err + out.headers_err, 0, "{}", seed.name);
        assert_eq!(out.headers_malformed, 0, "{}", seed.name);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let started = Instant::now();
    let mut total = Outcome::default();
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

#[test]
fn mutated_real_frames_never_panic() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(SEED ^ 1);
    let started = Instant::now();
    let mut total = Outcome::default();
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

/// `levels` tables and arrays, alternating, nested inside the top-level table (which counts as
/// the first level, as the decoder counts), built byte by byte.
fn nested_table(levels: usize) -> Vec<u8> {
    let mut v = vec![b'I', 0, 0, 0, 1];
    for level in (2..=levels).rev() {
        let mut outer = Vec::with_capacity(v.len() + 8);
        if level % 2 == 0 {
            outer.push(b'A');
            outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
        } else {
            outer.push(b'F');
            outer.extend_from_slice(&(v.len() as u32 + 2).to_be_bytes());
            outer.extend_from_slice(&[1, b'k']);
        }
        outer.extend_from_slice(&v);
        v = outer;
    }
    let mut t = (v.len() as u32 + 2).to_be_bytes().to_vec();
    t.extend_from_slice(&[1, b'k']);
    t.extend_from_slice(&v);
    t
}

fn frame_of(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind, 0, 1];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// The nesting limit holds for a table that arrives in a frame: in a message's headers (the
/// message is handed up as malformed) and in a method's arguments (a protocol error).
#[test]
fn nesting_limit_holds_inside_frames() {
    for (levels, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false)] {
        let table = nested_table(levels);
        let (depth, _) = FieldTable::decode(&mut Reader::new(&table))
            .map(|t| t.depth_and_heap())
            .unwrap_or_default();
        assert_eq!(depth, if ok { MAX_DEPTH } else { 0 });

        // A content header with those headers.
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&0u64.to_be_bytes());
        header.extend_from_slice(&(1u16 << 13).to_be_bytes());
        header.extend_from_slice(&table);
        let mut buf = BytesMut::from(&frame_of(frame::HEADER, &header)[..]);
        let f = frame::parse_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        let h = frame::decode_content_header(&f.payload).unwrap();
        assert_eq!(
            h.malformed.is_none(),
            ok,
            "{levels} levels: {:?}",
            h.malformed
        );
        assert_eq!(h.properties.headers.is_some(), ok);
        if !ok {
            assert!(h.malformed.unwrap().contains("nested"));
        }

        // queue.declare with those arguments.
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0b10];
        declare.extend_from_slice(&table);
        let mut buf = BytesMut::from(&frame_of(frame::METHOD, &declare)[..]);
        let f = frame::parse_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        match Method::decode(&f.payload) {
            Ok(Method::QueueDeclare { arguments, .. }) => {
                assert!(ok);
                assert_eq!(arguments.depth_and_heap().0, MAX_DEPTH);
            }
            Err(e) => assert!(!ok && e.0.contains("nested"), "{e}"),
            other => panic!("{other:?}"),
        }
        feed(&frame_of(frame::HEADER, &header));
        feed(&frame_of(frame::METHOD, &declare));
    }
}

/// Length prefixes claiming up to 4 GiB, at every level: refused without allocating for them.
#[test]
fn lengths_claiming_4_gib_are_refused_without_allocating() {
    let huge = u32::MAX.to_be_bytes();
    // A frame whose size is over frame_max: refused before any reserve.
    let mut buf = BytesMut::from(&[1, 0, 1, 0xff, 0xff, 0xff, 0xf7][..]);
    assert!(frame::parse_frame(&mut buf, FRAME_MAX).is_err());
    assert!(buf.capacity() < 64);
    // The largest frame frame_max allows, not arrived yet: room for it, no more.
    let size = (FRAME_MAX - 8).to_be_bytes();
    let mut buf = BytesMut::from(&[1, 0, 1, size[0], size[1], size[2], size[3]][..]);
    assert!(frame::parse_frame(&mut buf, FRAME_MAX).unwrap().is_none());
    assert!(buf.capacity() <= 2 * FRAME_MAX as usize);

    let mut cases: Vec<Vec<u8>> = Vec::new();
    // A table, a long string in a table, an array, a byte array.
    cases.push([&huge[..], &b"\x01k"[..]].concat());
    for tag in [b'S', b'A', b'x', b'F'] {
        let body = [&[1, b'k', tag][..], &huge[..], &b"abc"[..]].concat();
        cases.push([&(body.len() as u32).to_be_bytes()[..], &body].concat());
    }
    for table in cases.clone() {
        assert!(FieldTable::decode(&mut Reader::new(&table)).is_err());
        // As a message's headers: the message is malformed, the connection goes on.
        let header = [&[0, 60, 0, 0][..], &[0; 8][..], &[0x20, 0][..], &table[..]].concat();
        let h = frame::decode_content_header(&header).unwrap();
        assert!(h.malformed.is_some());
        cases.push(frame_of(frame::HEADER, &header));
        // As connection.start's server properties.
        let start = [&[0, 10, 0, 10, 0, 9][..], &table[..]].concat();
        assert!(Method::decode(&start).is_err());
        cases.push(frame_of(frame::METHOD, &start));
    }
    // connection.start's mechanisms and start-ok's response as long strings of 4 GiB.
    let start = [
        &[0, 10, 0, 10, 0, 9][..],
        &[0; 4][..],
        &huge[..],
        &b"PLAIN"[..],
    ]
    .concat();
    assert!(Method::decode(&start).is_err());
    let start_ok = [
        &[0, 10, 0, 11][..],
        &[0; 4][..],
        &b"\x05PLAIN"[..],
        &huge[..],
    ]
    .concat();
    assert!(Method::decode(&start_ok).is_err());
    cases.extend([start, start_ok]);
    for c in &cases {
        feed(c);
    }
}

/// Writes the seed corpus of the cargo-fuzz target (docs/fuzzing.md):
/// `cargo test -p rabbit-once --lib write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds/decode_all; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode_all");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = seeds()
        .into_iter()
        .map(|s| (s.name.to_string(), s.frames.concat()))
        .collect();
    files.push(("table-every-type".into(), {
        let mut out = BytesMut::new();
        every_value_table().encode(&mut out);
        out.to_vec()
    }));
    files.push(("properties-rich".into(), {
        let mut out = BytesMut::new();
        rich_properties().encode(&mut out);
        out.to_vec()
    }));
    files.push(("table-nested-max-depth".into(), nested_table(MAX_DEPTH)));
    for (name, bytes) in files {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}
