//! The AMQP 0-9-1 methods rabbit-once speaks, with their class/method ids and arguments.

use super::table::FieldTable;
use super::wire::{DecodeResult, ProtocolError, Reader, bit, bits, put_long_str, put_short_str};
use bytes::{BufMut, BytesMut};

/// One method frame's payload. Only the methods this crate sends or can receive.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Method {
    ConnectionStart {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: String,
        locales: String,
    },
    ConnectionStartOk {
        client_properties: FieldTable,
        mechanism: String,
        response: Vec<u8>,
        locale: String,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        vhost: String,
    },
    ConnectionOpenOk,
    ConnectionClose(Close),
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: String,
    },
    ConnectionUnblocked,
    ChannelOpen,
    ChannelOpenOk,
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose(Close),
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: String,
        kind: String,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    ExchangeDeclareOk,
    ExchangeDelete {
        exchange: String,
        if_unused: bool,
    },
    ExchangeDeleteOk,
    ExchangeBind {
        destination: String,
        source: String,
        routing_key: String,
        arguments: FieldTable,
    },
    ExchangeBindOk,
    QueueDeclare {
        queue: String,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    },
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: FieldTable,
    },
    QueueBindOk,
    QueueUnbind {
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: FieldTable,
    },
    QueueUnbindOk,
    QueuePurge {
        queue: String,
    },
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDelete {
        queue: String,
        if_unused: bool,
        if_empty: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    BasicQos {
        prefetch_count: u16,
        global: bool,
    },
    BasicQosOk,
    BasicConsume {
        queue: String,
        consumer_tag: String,
        no_ack: bool,
        exclusive: bool,
        arguments: FieldTable,
    },
    BasicConsumeOk {
        consumer_tag: String,
    },
    BasicCancel {
        consumer_tag: String,
        nowait: bool,
    },
    BasicCancelOk {
        consumer_tag: String,
    },
    BasicPublish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
    },
    BasicReturn {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    BasicDeliver {
        consumer_tag: String,
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    BasicGet {
        queue: String,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    ConfirmSelect,
    ConfirmSelectOk,
}

/// The arguments of `connection.close` and `channel.close`: who closed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub reply_code: u16,
    pub reply_text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Close {
    pub(crate) fn normal() -> Self {
        Close {
            reply_code: 200,
            reply_text: "closed by rabbit-once".into(),
            class_id: 0,
            method_id: 0,
        }
    }
}

fn put_close(out: &mut BytesMut, c: &Close) {
    out.put_u16(c.reply_code);
    put_short_str(out, &c.reply_text);
    out.put_u16(c.class_id);
    out.put_u16(c.method_id);
}

fn read_close(r: &mut Reader<'_>) -> DecodeResult<Close> {
    Ok(Close {
        reply_code: r.u16()?,
        reply_text: r.short_str()?,
        class_id: r.u16()?,
        method_id: r.u16()?,
    })
}

/// Encodes `basic.publish` straight from borrowed names: the publish hot path builds no `Method`.
pub(crate) fn put_basic_publish(
    out: &mut BytesMut,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
) {
    out.put_u16(60);
    out.put_u16(40);
    out.put_u16(0);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u8(bits(&[mandatory, false]));
}

impl Method {
    /// The (class, method) ids.
    pub(crate) fn ids(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => (10, 10),
            ConnectionStartOk { .. } => (10, 11),
            ConnectionTune { .. } => (10, 30),
            ConnectionTuneOk { .. } => (10, 31),
            ConnectionOpen { .. } => (10, 40),
            ConnectionOpenOk => (10, 41),
            ConnectionClose(_) => (10, 50),
            ConnectionCloseOk => (10, 51),
            ConnectionBlocked { .. } => (10, 60),
            ConnectionUnblocked => (10, 61),
            ChannelOpen => (20, 10),
            ChannelOpenOk => (20, 11),
            ChannelFlow { .. } => (20, 20),
            ChannelFlowOk { .. } => (20, 21),
            ChannelClose(_) => (20, 40),
            ChannelCloseOk => (20, 41),
            ExchangeDeclare { .. } => (40, 10),
            ExchangeDeclareOk => (40, 11),
            ExchangeDelete { .. } => (40, 20),
            ExchangeDeleteOk => (40, 21),
            ExchangeBind { .. } => (40, 30),
            ExchangeBindOk => (40, 31),
            QueueDeclare { .. } => (50, 10),
            QueueDeclareOk { .. } => (50, 11),
            QueueBind { .. } => (50, 20),
            QueueBindOk => (50, 21),
            QueuePurge { .. } => (50, 30),
            QueuePurgeOk { .. } => (50, 31),
            QueueDelete { .. } => (50, 40),
            QueueDeleteOk { .. } => (50, 41),
            QueueUnbind { .. } => (50, 50),
            QueueUnbindOk => (50, 51),
            BasicQos { .. } => (60, 10),
            BasicQosOk => (60, 11),
            BasicConsume { .. } => (60, 20),
            BasicConsumeOk { .. } => (60, 21),
            BasicCancel { .. } => (60, 30),
            BasicCancelOk { .. } => (60, 31),
            BasicPublish { .. } => (60, 40),
            BasicReturn { .. } => (60, 50),
            BasicDeliver { .. } => (60, 60),
            BasicGet { .. } => (60, 70),
            BasicGetOk { .. } => (60, 71),
            BasicGetEmpty => (60, 72),
            BasicAck { .. } => (60, 80),
            BasicReject { .. } => (60, 90),
            BasicNack { .. } => (60, 120),
            ConfirmSelect => (85, 10),
            ConfirmSelectOk => (85, 11),
        }
    }

    /// Whether this method is followed by a content header and body frames.
    pub(crate) fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish { .. } | Method::BasicReturn { .. } | Method::BasicDeliver { .. }
        )
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        use Method::*;
        let (class, method) = self.ids();
        out.put_u16(class);
        out.put_u16(method);
        match self {
            ConnectionStart {
                version_major,
                version_minor,
                server_properties,
                mechanisms,
                locales,
            } => {
                out.put_u8(*version_major);
                out.put_u8(*version_minor);
                server_properties.encode(out);
                put_long_str(out, mechanisms.as_bytes());
                put_long_str(out, locales.as_bytes());
            }
            ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            } => {
                client_properties.encode(out);
                put_short_str(out, mechanism);
                put_long_str(out, response);
                put_short_str(out, locale);
            }
            ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            }
            | ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
            } => {
                out.put_u16(*channel_max);
                out.put_u32(*frame_max);
                out.put_u16(*heartbeat);
            }
            ConnectionOpen { vhost } => {
                put_short_str(out, vhost);
                put_short_str(out, "");
                out.put_u8(0);
            }
            ConnectionOpenOk => put_short_str(out, ""),
            ConnectionClose(c) | ChannelClose(c) => put_close(out, c),
            ConnectionCloseOk | ConnectionUnblocked | ChannelCloseOk | ExchangeDeclareOk
            | ExchangeDeleteOk | ExchangeBindOk | QueueBindOk | QueueUnbindOk | BasicQosOk
            | ConfirmSelectOk => {}
            ConnectionBlocked { reason } => put_short_str(out, reason),
            ChannelOpen => put_short_str(out, ""),
            ChannelOpenOk => put_long_str(out, b""),
            ChannelFlow { active } | ChannelFlowOk { active } => out.put_u8(u8::from(*active)),
            ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, exchange);
                put_short_str(out, kind);
                out.put_u8(bits(&[*passive, *durable, *auto_delete, *internal, false]));
                arguments.encode(out);
            }
            ExchangeDelete {
                exchange,
                if_unused,
            } => {
                out.put_u16(0);
                put_short_str(out, exchange);
                out.put_u8(bits(&[*if_unused, false]));
            }
            ExchangeBind {
                destination,
                source,
                routing_key,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, destination);
                put_short_str(out, source);
                put_short_str(out, routing_key);
                out.put_u8(0);
                arguments.encode(out);
            }
            QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, queue);
                out.put_u8(bits(&[*passive, *durable, *exclusive, *auto_delete, false]));
                arguments.encode(out);
            }
            QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            } => {
                put_short_str(out, queue);
                out.put_u32(*message_count);
                out.put_u32(*consumer_count);
            }
            QueueBind {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, queue);
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
                out.put_u8(0);
                arguments.encode(out);
            }
            QueueUnbind {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, queue);
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
                arguments.encode(out);
            }
            QueuePurge { queue } => {
                out.put_u16(0);
                put_short_str(out, queue);
                out.put_u8(0);
            }
            QueuePurgeOk { message_count } | QueueDeleteOk { message_count } => {
                out.put_u32(*message_count)
            }
            QueueDelete {
                queue,
                if_unused,
                if_empty,
            } => {
                out.put_u16(0);
                put_short_str(out, queue);
                out.put_u8(bits(&[*if_unused, *if_empty, false]));
            }
            BasicQos {
                prefetch_count,
                global,
            } => {
                out.put_u32(0);
                out.put_u16(*prefetch_count);
                out.put_u8(u8::from(*global));
            }
            BasicConsume {
                queue,
                consumer_tag,
                no_ack,
                exclusive,
                arguments,
            } => {
                out.put_u16(0);
                put_short_str(out, queue);
                put_short_str(out, consumer_tag);
                out.put_u8(bits(&[false, *no_ack, *exclusive, false]));
                arguments.encode(out);
            }
            BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => {
                put_short_str(out, consumer_tag)
            }
            BasicCancel {
                consumer_tag,
                nowait,
            } => {
                put_short_str(out, consumer_tag);
                out.put_u8(u8::from(*nowait));
            }
            BasicPublish {
                exchange,
                routing_key,
                mandatory,
            } => {
                out.put_u16(0);
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
                out.put_u8(bits(&[*mandatory, false]));
            }
            BasicReturn {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            } => {
                out.put_u16(*reply_code);
                put_short_str(out, reply_text);
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
            }
            BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => {
                put_short_str(out, consumer_tag);
                out.put_u64(*delivery_tag);
                out.put_u8(u8::from(*redelivered));
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
            }
            BasicGet { queue, no_ack } => {
                out.put_u16(0);
                put_short_str(out, queue);
                out.put_u8(u8::from(*no_ack));
            }
            BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count,
            } => {
                out.put_u64(*delivery_tag);
                out.put_u8(u8::from(*redelivered));
                put_short_str(out, exchange);
                put_short_str(out, routing_key);
                out.put_u32(*message_count);
            }
            BasicGetEmpty => put_short_str(out, ""),
            BasicAck {
                delivery_tag,
                multiple,
            } => {
                out.put_u64(*delivery_tag);
                out.put_u8(u8::from(*multiple));
            }
            BasicReject {
                delivery_tag,
                requeue,
            } => {
                out.put_u64(*delivery_tag);
                out.put_u8(u8::from(*requeue));
            }
            BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => {
                out.put_u64(*delivery_tag);
                out.put_u8(bits(&[*multiple, *requeue]));
            }
            ConfirmSelect => out.put_u8(0),
        }
    }

    pub(crate) fn decode(payload: &[u8]) -> DecodeResult<Method> {
        use Method::*;
        let mut r = Reader::new(payload);
        let class = r.u16()?;
        let method = r.u16()?;
        let r = &mut r;
        let m = match (class, method) {
            (10, 10) => ConnectionStart {
                version_major: r.u8()?,
                version_minor: r.u8()?,
                server_properties: FieldTable::decode(r)?,
                mechanisms: r.long_str()?,
                locales: r.long_str()?,
            },
            (10, 11) => ConnectionStartOk {
                client_properties: FieldTable::decode(r)?,
                mechanism: r.short_str()?,
                response: r.long_str_bytes()?.to_vec(),
                locale: r.short_str()?,
            },
            (10, 30) => ConnectionTune {
                channel_max: r.u16()?,
                frame_max: r.u32()?,
                heartbeat: r.u16()?,
            },
            (10, 31) => ConnectionTuneOk {
                channel_max: r.u16()?,
                frame_max: r.u32()?,
                heartbeat: r.u16()?,
            },
            (10, 40) => {
                let vhost = r.short_str()?;
                r.short_str()?;
                r.u8()?;
                ConnectionOpen { vhost }
            }
            (10, 41) => ConnectionOpenOk,
            (10, 50) => ConnectionClose(read_close(r)?),
            (10, 51) => ConnectionCloseOk,
            (10, 60) => ConnectionBlocked {
                reason: r.short_str()?,
            },
            (10, 61) => ConnectionUnblocked,
            (20, 10) => ChannelOpen,
            (20, 11) => ChannelOpenOk,
            (20, 20) => ChannelFlow {
                active: r.u8()? != 0,
            },
            (20, 21) => ChannelFlowOk {
                active: r.u8()? != 0,
            },
            (20, 40) => ChannelClose(read_close(r)?),
            (20, 41) => ChannelCloseOk,
            (40, 10) => {
                r.u16()?;
                let exchange = r.short_str()?;
                let kind = r.short_str()?;
                let b = r.u8()?;
                ExchangeDeclare {
                    exchange,
                    kind,
                    passive: bit(b, 0),
                    durable: bit(b, 1),
                    auto_delete: bit(b, 2),
                    internal: bit(b, 3),
                    arguments: FieldTable::decode(r)?,
                }
            }
            (40, 11) => ExchangeDeclareOk,
            (40, 20) => {
                r.u16()?;
                let exchange = r.short_str()?;
                ExchangeDelete {
                    exchange,
                    if_unused: bit(r.u8()?, 0),
                }
            }
            (40, 21) => ExchangeDeleteOk,
            (40, 30) => {
                r.u16()?;
                let destination = r.short_str()?;
                let source = r.short_str()?;
                let routing_key = r.short_str()?;
                r.u8()?;
                ExchangeBind {
                    destination,
                    source,
                    routing_key,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (40, 31) => ExchangeBindOk,
            (50, 10) => {
                r.u16()?;
                let queue = r.short_str()?;
                let b = r.u8()?;
                QueueDeclare {
                    queue,
                    passive: bit(b, 0),
                    durable: bit(b, 1),
                    exclusive: bit(b, 2),
                    auto_delete: bit(b, 3),
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 11) => QueueDeclareOk {
                queue: r.short_str()?,
                message_count: r.u32()?,
                consumer_count: r.u32()?,
            },
            (50, 20) => {
                r.u16()?;
                let queue = r.short_str()?;
                let exchange = r.short_str()?;
                let routing_key = r.short_str()?;
                r.u8()?;
                QueueBind {
                    queue,
                    exchange,
                    routing_key,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 21) => QueueBindOk,
            (50, 30) => {
                r.u16()?;
                let queue = r.short_str()?;
                r.u8()?;
                QueuePurge { queue }
            }
            (50, 31) => QueuePurgeOk {
                message_count: r.u32()?,
            },
            (50, 40) => {
                r.u16()?;
                let queue = r.short_str()?;
                let b = r.u8()?;
                QueueDelete {
                    queue,
                    if_unused: bit(b, 0),
                    if_empty: bit(b, 1),
                }
            }
            (50, 41) => QueueDeleteOk {
                message_count: r.u32()?,
            },
            (50, 50) => {
                r.u16()?;
                QueueUnbind {
                    queue: r.short_str()?,
                    exchange: r.short_str()?,
                    routing_key: r.short_str()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 51) => QueueUnbindOk,
            (60, 10) => {
                r.u32()?;
                BasicQos {
                    prefetch_count: r.u16()?,
                    global: r.u8()? != 0,
                }
            }
            (60, 11) => BasicQosOk,
            (60, 20) => {
                r.u16()?;
                let queue = r.short_str()?;
                let consumer_tag = r.short_str()?;
                let b = r.u8()?;
                BasicConsume {
                    queue,
                    consumer_tag,
                    no_ack: bit(b, 1),
                    exclusive: bit(b, 2),
                    arguments: FieldTable::decode(r)?,
                }
            }
            (60, 21) => BasicConsumeOk {
                consumer_tag: r.short_str()?,
            },
            (60, 30) => BasicCancel {
                consumer_tag: r.short_str()?,
                nowait: bit(r.u8()?, 0),
            },
            (60, 31) => BasicCancelOk {
                consumer_tag: r.short_str()?,
            },
            (60, 40) => {
                r.u16()?;
                let exchange = r.short_str()?;
                let routing_key = r.short_str()?;
                BasicPublish {
                    exchange,
                    routing_key,
                    mandatory: bit(r.u8()?, 0),
                }
            }
            (60, 50) => BasicReturn {
                reply_code: r.u16()?,
                reply_text: r.short_str()?,
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
            },
            (60, 60) => BasicDeliver {
                // Each consuming channel has one consumer: the tag is never looked at, so it
                // is skipped rather than copied for every delivery.
                consumer_tag: {
                    r.short_str_bytes()?;
                    String::new()
                },
                delivery_tag: r.u64()?,
                redelivered: bit(r.u8()?, 0),
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
            },
            (60, 70) => {
                r.u16()?;
                BasicGet {
                    queue: r.short_str()?,
                    no_ack: bit(r.u8()?, 0),
                }
            }
            (60, 71) => BasicGetOk {
                delivery_tag: r.u64()?,
                redelivered: bit(r.u8()?, 0),
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
                message_count: r.u32()?,
            },
            (60, 72) => BasicGetEmpty,
            (60, 80) => BasicAck {
                delivery_tag: r.u64()?,
                multiple: bit(r.u8()?, 0),
            },
            (60, 90) => BasicReject {
                delivery_tag: r.u64()?,
                requeue: bit(r.u8()?, 0),
            },
            (60, 120) => {
                let delivery_tag = r.u64()?;
                let b = r.u8()?;
                BasicNack {
                    delivery_tag,
                    multiple: bit(b, 0),
                    requeue: bit(b, 1),
                }
            }
            (85, 10) => ConfirmSelect,
            (85, 11) => ConfirmSelectOk,
            (c, m) => {
                return Err(ProtocolError::new(format!("unsupported method {c}.{m}")));
            }
        };
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Method) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(Method::decode(&out).unwrap(), m, "{m:?}");
    }

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
}
