//! Bytes to methods: `Method::decode`, which trusts nothing it reads.

use super::Method;
use super::close::read_close;
use crate::transport::table::FieldTable;
use crate::transport::wire::{DecodeResult, ProtocolError, Reader, bit};

impl Method {
    /// Decodes a method frame's payload; an unknown (class, method) is a protocol error.
    // Over 100 lines: one short arm per method, a table to read top to bottom.
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
