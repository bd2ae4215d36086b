//! Methods to bytes: `Method::encode`, and the `basic.publish` hot path that builds no `Method`.

use super::Method;
use super::close::put_close;
use crate::transport::wire::{bits, put_long_str, put_short_str};
use bytes::{BufMut, BytesMut};

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
    /// Appends this method frame's payload: the class and method ids, then the arguments.
    // Over 100 lines: one short arm per method, a table to read top to bottom.
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
}
