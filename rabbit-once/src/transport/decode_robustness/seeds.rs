//! Real frames, made by the crate's own encoders: the seeds the mutations start from, the
//! check that they decode cleanly, and the seed corpus of the cargo-fuzz target.

use super::limits::nested_table;
use crate::transport::fuzzing::{self, FRAME_MAX};
use crate::transport::method::{Close, Method};
use crate::transport::properties::Properties;
use crate::transport::table::{FieldTable, FieldValue, MAX_DEPTH};
use crate::transport::wire::text_view;
use crate::transport::{frame, frame::PublishFrames};
use bytes::BytesMut;

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
pub(super) struct Seed {
    pub(super) name: &'static str,
    pub(super) frames: Vec<Vec<u8>>,
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

/// The real frames the mutations start from: methods of each class, deliveries and publishes
/// with rich properties, made by the crate's own encoders.
// Over 100 lines: a list, one entry per frame shape.
pub(super) fn seeds() -> Vec<Seed> {
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

#[test]
fn own_frames_decode_cleanly() {
    for seed in seeds() {
        let out = fuzzing::decode_all(&seed.frames.concat());
        assert_eq!(out.frames, seed.frames.len(), "{}", seed.name);
        assert_eq!(out.methods_err + out.headers_err, 0, "{}", seed.name);
        assert_eq!(out.headers_malformed, 0, "{}", seed.name);
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
