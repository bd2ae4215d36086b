//! Every method round-trips through `encode` and `decode`; the publish fast path matches.

use super::*;
use crate::transport::table::FieldTable;
use bytes::BytesMut;

fn round_trip(m: Method) {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    assert_eq!(Method::decode(&out).unwrap(), m, "{m:?}");
}

// Over 100 lines: a list, one value per method shape.
#[test]
fn methods_round_trip() {
    let args = FieldTable::new().with("x-queue-type", "quorum");
    for m in [
        Method::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::new().with("product", "RabbitMQ"),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        },
        Method::ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: b"\0guest\0guest".to_vec(),
            locale: "en_US".into(),
        },
        Method::ConnectionTune {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        },
        Method::ConnectionOpen { vhost: "/".into() },
        Method::ConnectionClose(Close::normal()),
        Method::ConnectionBlocked {
            reason: "low on memory".into(),
        },
        Method::ChannelFlow { active: true },
        Method::ChannelClose(Close {
            reply_code: 404,
            reply_text: "NOT_FOUND - no exchange 'x'".into(),
            class_id: 60,
            method_id: 40,
        }),
        Method::ExchangeDeclare {
            exchange: "ex".into(),
            kind: "topic".into(),
            passive: false,
            durable: true,
            auto_delete: true,
            internal: false,
            arguments: args.clone(),
        },
        Method::ExchangeBind {
            destination: "d".into(),
            source: "s".into(),
            routing_key: "k".into(),
            arguments: FieldTable::new(),
        },
        Method::QueueDeclare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            arguments: args.clone(),
        },
        Method::QueueDeclareOk {
            queue: "q".into(),
            message_count: 3,
            consumer_count: 1,
        },
        Method::QueueBind {
            queue: "q".into(),
            exchange: "ex".into(),
            routing_key: "k".into(),
            arguments: args,
        },
        Method::QueueDelete {
            queue: "q".into(),
            if_unused: true,
            if_empty: false,
        },
        Method::BasicQos {
            prefetch_count: 1000,
            global: false,
        },
        Method::BasicConsume {
            queue: "q".into(),
            consumer_tag: "ct".into(),
            no_ack: false,
            exclusive: true,
            arguments: FieldTable::new(),
        },
        Method::BasicCancel {
            consumer_tag: "ct".into(),
            nowait: true,
        },
        Method::BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: true,
        },
        Method::BasicReturn {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "ex".into(),
            routing_key: "k".into(),
        },
        Method::BasicDeliver {
            consumer_tag: String::new(), // not kept on decode
            delivery_tag: u64::MAX - 1,
            redelivered: true,
            exchange: "".into(),
            routing_key: "q".into(),
        },
        Method::BasicGetOk {
            delivery_tag: 9,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
            message_count: 7,
        },
        Method::BasicAck {
            delivery_tag: 42,
            multiple: true,
        },
        Method::BasicNack {
            delivery_tag: 43,
            multiple: false,
            requeue: true,
        },
        Method::ConfirmSelect,
    ] {
        round_trip(m);
    }
}

#[test]
fn publish_fast_path_matches_the_method() {
    let mut a = BytesMut::new();
    put_basic_publish(&mut a, "ex", "rk", true);
    let mut b = BytesMut::new();
    Method::BasicPublish {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        mandatory: true,
    }
    .encode(&mut b);
    assert_eq!(a, b);
}

#[test]
fn unknown_method_is_an_error() {
    assert!(Method::decode(&[0, 99, 0, 1]).is_err());
}
