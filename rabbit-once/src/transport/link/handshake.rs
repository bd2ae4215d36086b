//! The handshake: protocol header, `connection.start` / `start-ok` (PLAIN or EXTERNAL), `tune` /
//! `tune-ok`, `open` / `open-ok`. What goes wrong here decides what is fatal: see
//! `Error::is_recoverable` and the fault table in `docs/guarantees.md`.

use super::{ConnectParams, unexpected};
use crate::error::Error;
use crate::transport::frame::{self, FRAME_MIN_SIZE, PROTOCOL_HEADER, parse_frame, put_method};
use crate::transport::method::Method;
use crate::transport::table::FieldTable;
use crate::uri::{AuthMechanism, Endpoint};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) struct Handshake {
    pub(super) frame_max: u32,
    pub(super) channel_max: u16,
    pub(super) heartbeat: Duration,
    pub(super) server_properties: FieldTable,
    pub(super) leftover: BytesMut,
}

pub(super) async fn read_method<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    endpoint: &Endpoint,
    stage: &str,
) -> Result<Option<Method>, Error> {
    loop {
        if buf.starts_with(b"AMQP") && buf.len() >= 8 {
            return Err(Error::Connect {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "the server does not speak AMQP 0-9-1 (it offered protocol {:?})",
                    &buf[4..8]
                ),
            });
        }
        if let Some(f) = parse_frame(buf, 131_072)? {
            if f.kind == frame::METHOD && f.channel == 0 {
                return Ok(Some(Method::decode(&f.payload)?));
            }
            continue;
        }
        buf.reserve(4096);
        match s.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => {
                // TLS 1.3: the broker's refusal of our client certificate arrives here.
                #[cfg(feature = "tls")]
                if let Some(refused) = crate::transport::tls::refusal(endpoint, &e) {
                    return Err(refused);
                }
                return Err(Error::Connect {
                    endpoint: endpoint.to_string(),
                    reason: format!("{e} ({stage})"),
                });
            }
        }
    }
}

pub(super) fn client_properties(name: &str) -> FieldTable {
    let caps = FieldTable::new()
        .with("publisher_confirms", true)
        .with("exchange_exchange_bindings", true)
        .with("basic.nack", true)
        .with("consumer_cancel_notify", true)
        .with("connection.blocked", true)
        .with("authentication_failure_close", true)
        .with("per_consumer_qos", true);
    FieldTable::new()
        .with("product", "rabbit-once")
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("platform", "Rust")
        .with("connection_name", name)
        .with("capabilities", caps)
}

/// From the protocol header to `connection.open-ok`, one exchange after another.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    endpoint: &Endpoint,
    params: &ConnectParams,
) -> Result<Handshake, Error> {
    s.write_all(PROTOCOL_HEADER)
        .await
        .map_err(|e| connect_error(endpoint, e.to_string()))?;
    let mut buf = BytesMut::with_capacity(8192);
    let server_properties = start(s, &mut buf, endpoint, params).await?;
    let tuned = tune(s, &mut buf, endpoint, params, &server_properties).await?;
    open(s, &mut buf, endpoint, &tuned).await?;
    Ok(Handshake {
        frame_max: tuned.frame_max,
        channel_max: tuned.channel_max,
        heartbeat: Duration::from_secs(tuned.heartbeat as u64),
        server_properties,
        leftover: buf,
    })
}

fn connect_error(endpoint: &Endpoint, reason: String) -> Error {
    Error::Connect {
        endpoint: endpoint.to_string(),
        reason,
    }
}

fn closed_early(endpoint: &Endpoint, stage: &str) -> Error {
    connect_error(
        endpoint,
        format!("the server closed the connection {stage}"),
    )
}

/// `connection.start` in, `start-ok` (PLAIN or EXTERNAL) out; returns the server's properties.
async fn start<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    endpoint: &Endpoint,
    params: &ConnectParams,
) -> Result<FieldTable, Error> {
    let start = read_method(s, buf, endpoint, "waiting for connection.start")
        .await?
        .ok_or_else(|| closed_early(endpoint, "before connection.start"))?;
    let (server_properties, mechanisms) = match start {
        Method::ConnectionStart {
            server_properties,
            mechanisms,
            ..
        } => (server_properties, mechanisms),
        other => return Err(unexpected("connection.start", &other)),
    };
    let (mechanism, response) = match endpoint.auth_mechanism {
        AuthMechanism::Plain => ("PLAIN", plain_response(endpoint)),
        // The broker reads the user name from the client certificate; nothing to send.
        AuthMechanism::External => ("EXTERNAL", Vec::new()),
    };
    if !mechanisms.split_whitespace().any(|m| m == mechanism) {
        let hint = match endpoint.auth_mechanism {
            AuthMechanism::Plain => "",
            AuthMechanism::External => {
                "; EXTERNAL needs the rabbitmq_auth_mechanism_ssl plugin and \
                 auth_mechanisms.N = EXTERNAL in rabbitmq.conf"
            }
        };
        return Err(Error::Connect {
            endpoint: endpoint.to_string(),
            reason: format!(
                "the broker offers no {mechanism} authentication (it offers {mechanisms:?}){hint}"
            ),
        });
    }
    let mut out = BytesMut::new();
    put_method(
        &mut out,
        0,
        &Method::ConnectionStartOk {
            client_properties: client_properties(&params.name),
            mechanism: mechanism.into(),
            response,
            locale: "en_US".into(),
        },
    );
    s.write_all(&out)
        .await
        .map_err(|e| connect_error(endpoint, e.to_string()))?;
    Ok(server_properties)
}

/// PLAIN's response: `\0user\0password`.
fn plain_response(endpoint: &Endpoint) -> Vec<u8> {
    let mut response = Vec::with_capacity(2 + endpoint.user.len() + endpoint.password.len());
    response.push(0);
    response.extend_from_slice(endpoint.user.as_bytes());
    response.push(0);
    response.extend_from_slice(endpoint.password.as_bytes());
    response
}

/// The limits both sides agreed on (`heartbeat` in seconds, 0 = off).
struct Tuned {
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
}

/// `connection.tune` in (or the refusal of our credentials); returns the agreed limits.
async fn tune<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    endpoint: &Endpoint,
    params: &ConnectParams,
    server_properties: &FieldTable,
) -> Result<Tuned, Error> {
    let auth_failed = |reason: String| Error::AuthenticationFailed {
        endpoint: endpoint.to_string(),
        user: match endpoint.auth_mechanism {
            AuthMechanism::Plain => endpoint.user.clone(),
            AuthMechanism::External => "(the client certificate's, EXTERNAL)".into(),
        },
        reason,
    };
    // We advertise `authentication_failure_close`, so a broker that has that capability too
    // refuses credentials with `connection.close 403`; an EOF here is then a node shutting down
    // or a load balancer losing its backend — transient. Only from a broker without the
    // capability is a silent close the (old-style) authentication failure.
    let explicit_auth_failure = server_properties
        .get("capabilities")
        .and_then(|c| match c {
            crate::transport::table::FieldValue::Table(t) => t.get("authentication_failure_close"),
            _ => None,
        })
        .is_some_and(|v| *v == crate::transport::table::FieldValue::Bool(true));
    let tune = read_method(s, buf, endpoint, "waiting for connection.tune")
        .await?
        .ok_or_else(|| {
            if explicit_auth_failure {
                closed_early(
                    endpoint,
                    "after the credentials were sent, without refusing them (a node shutting \
                     down or a proxy without a backend)",
                )
            } else {
                auth_failed(
                    "the broker closed the connection after the credentials were sent".into(),
                )
            }
        })?;
    match tune {
        Method::ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        } => Ok(negotiate(
            endpoint,
            params,
            channel_max,
            frame_max,
            heartbeat,
        )),
        Method::ConnectionClose(c) if c.reply_code == 403 => Err(auth_failed(c.reply_text)),
        Method::ConnectionClose(c) => Err(Error::ConnectionClosed {
            code: c.reply_code,
            text: c.reply_text,
        }),
        other => Err(unexpected("connection.tune", &other)),
    }
}

/// The lower of what we want and what the broker offers, for each limit; 0 from the broker
/// means "no limit", 0 from us for the heartbeat means "off".
fn negotiate(
    endpoint: &Endpoint,
    params: &ConnectParams,
    ch_max: u16,
    fr_max: u32,
    hb: u16,
) -> Tuned {
    let want_fm = endpoint
        .frame_max
        .unwrap_or(params.frame_max)
        .max(FRAME_MIN_SIZE);
    let frame_max = if fr_max == 0 {
        want_fm
    } else {
        want_fm.min(fr_max)
    };
    let want_cm = endpoint.channel_max.unwrap_or(params.channel_max);
    let channel_max = match (ch_max, want_cm) {
        (0, 0) => 2047,
        (0, w) | (w, 0) => w,
        (a, b) => a.min(b),
    };
    let want_hb = endpoint
        .heartbeat
        .unwrap_or(params.heartbeat)
        .as_secs()
        .min(u16::MAX as u64) as u16;
    let heartbeat = match (want_hb, hb) {
        (0, _) => 0,
        (w, 0) => w,
        (w, s) => w.min(s),
    };
    Tuned {
        channel_max,
        frame_max,
        heartbeat,
    }
}

/// `tune-ok` and `connection.open` out in one write, `open-ok` in (or the vhost's refusal).
async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    endpoint: &Endpoint,
    tuned: &Tuned,
) -> Result<(), Error> {
    let mut out = BytesMut::new();
    put_method(
        &mut out,
        0,
        &Method::ConnectionTuneOk {
            channel_max: tuned.channel_max,
            frame_max: tuned.frame_max,
            heartbeat: tuned.heartbeat,
        },
    );
    put_method(
        &mut out,
        0,
        &Method::ConnectionOpen {
            vhost: endpoint.vhost.clone(),
        },
    );
    s.write_all(&out)
        .await
        .map_err(|e| connect_error(endpoint, e.to_string()))?;
    let vhost_refused = |reason: String| Error::VhostRefused {
        endpoint: endpoint.to_string(),
        vhost: endpoint.vhost.clone(),
        reason,
    };
    match read_method(s, buf, endpoint, "waiting for connection.open-ok")
        .await?
        .ok_or_else(|| closed_early(endpoint, "after connection.open"))?
    {
        Method::ConnectionOpenOk => Ok(()),
        // 530 also says "connection limit reached", which passes: only the vhost refusals are
        // fatal.
        Method::ConnectionClose(c)
            if matches!(c.reply_code, 530 | 402 | 403) && !c.reply_text.contains("limit") =>
        {
            Err(vhost_refused(c.reply_text))
        }
        Method::ConnectionClose(c) => Err(Error::ConnectionClosed {
            code: c.reply_code,
            text: c.reply_text,
        }),
        other => Err(unexpected("connection.open-ok", &other)),
    }
}
