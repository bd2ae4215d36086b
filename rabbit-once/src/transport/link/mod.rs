//! One AMQP connection — a [`Link`]: the handshake, then a reader task and a writer task
//! around the socket. (Named `Link` so it is never confused with the supervised, public
//! `crate::Connection` that opens a new link after each loss.)
//!
//! Channels append encoded frames to a shared outbox under a short lock; the writer swaps the
//! outbox out and writes it with one syscall, so frames from many publishes share one write.
//! The reader splits frames off a large read buffer (no copies), assembles content and
//! dispatches events to each channel's queue. When either task fails, the connection is dead:
//! every channel receives `Closed` with the reason, the outbox refuses new frames, and nothing
//! in this module ever reconnects (that is the supervisor's job).
//!
//! - this file: the [`Link`] handle (open, channels, close) and [`ConnectParams`];
//! - [`shared`]: what the tasks and the handles share — the outbox and the channel table;
//! - [`handshake`]: from the protocol header to `connection.open-ok`;
//! - [`reader`]: frames in, content assembled, events to each channel;
//! - [`writer`]: the outbox out in one write;  [`heartbeat`]: heartbeats, and the silence
//!   that declares a peer dead.

mod handshake;
mod heartbeat;
mod reader;
mod shared;
mod writer;

use super::channel::Channel;
use super::frame::put_method;
use super::method::{Close, Method};
use super::table::FieldTable;
use crate::error::Error;
use crate::shutdown::stopped;
use crate::uri::Endpoint;
use bytes::BytesMut;
use handshake::{Handshake, handshake};
use shared::{ChannelTable, LinkShared, Outbox};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};

/// The outbox is "full" past this many bytes: writers should await [`Link::writable`].
pub(super) const HIGH_WATER: usize = 4 << 20;
pub(super) const READ_CHUNK: usize = 128 << 10;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// What the connection asks for; the broker may lower frame_max, channel_max and heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    pub name: String,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Deliveries announcing a larger body are handed up malformed, without the body.
    pub max_body_size: u64,
}

/// A cheap handle to one live (or dead) AMQP connection: its socket and I/O tasks.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<LinkShared>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("endpoint", &self.shared.endpoint)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Link {
    /// Connects, authenticates and opens the vhost, then starts the I/O tasks.
    pub(crate) async fn open(endpoint: &Endpoint, params: &ConnectParams) -> Result<Self, Error> {
        let timeout = endpoint.connect_timeout.unwrap_or(params.connect_timeout);
        match tokio::time::timeout(timeout, Self::open_inner(endpoint, params)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Connect {
                endpoint: endpoint.to_string(),
                reason: format!("no answer within {timeout:?} (TCP connect and AMQP handshake)"),
            }),
        }
    }

    async fn open_inner(endpoint: &Endpoint, params: &ConnectParams) -> Result<Self, Error> {
        let connect_err = |reason: String| Error::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        // Certificate and key files are read before connecting: a file that cannot be used
        // is a configuration error whether or not a broker answers.
        #[cfg(feature = "tls")]
        let tls_config = match endpoint.tls {
            true => Some(super::tls::client_config(endpoint)?),
            false => None,
        };
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| connect_err(e.to_string()))?;
        if endpoint.tls {
            #[cfg(feature = "tls")]
            {
                let config =
                    tls_config.ok_or_else(|| connect_err("no TLS configuration".into()))?;
                let mut tls = super::tls::wrap(tcp, endpoint, config).await?;
                let hs = handshake(&mut tls, endpoint, params).await?;
                let (r, w) = tokio::io::split(tls);
                return Ok(Self::start(endpoint, params, hs, Box::new(r), Box::new(w)));
            }
            #[cfg(not(feature = "tls"))]
            return Err(connect_err("amqps needs the \"tls\" feature".into()));
        }
        let mut tcp = tcp;
        let hs = handshake(&mut tcp, endpoint, params).await?;
        let (r, w) = tcp.into_split();
        Ok(Self::start(endpoint, params, hs, Box::new(r), Box::new(w)))
    }

    fn start(
        endpoint: &Endpoint,
        params: &ConnectParams,
        hs: Handshake,
        r: ReadHalf,
        w: WriteHalf,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        let (blocked, _) = watch::channel(None);
        let shared = Arc::new(LinkShared {
            out: Mutex::new(Outbox {
                buf: BytesMut::with_capacity(64 << 10),
                closed: false,
                stop_after_flush: false,
                closed_channels: Vec::new(),
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            table: Mutex::new(ChannelTable {
                slots: Vec::new(),
                closed: false,
                next: 1,
            }),
            frame_max: hs.frame_max,
            channel_max: hs.channel_max,
            max_body_size: params.max_body_size,
            heartbeat: hs.heartbeat,
            endpoint: endpoint.to_string(),
            reason: Mutex::new(None),
            stop,
            blocked,
            read_activity: AtomicU64::new(0),
            write_activity: AtomicU64::new(0),
            server_properties: hs.server_properties,
        });
        tokio::spawn(reader::reader(shared.clone(), r, hs.leftover));
        tokio::spawn(writer::writer(shared.clone(), w));
        if !hs.heartbeat.is_zero() {
            tokio::spawn(heartbeat::heartbeats(shared.clone()));
        }
        tracing::debug!(endpoint = %shared.endpoint, frame_max = hs.frame_max, heartbeat = ?hs.heartbeat, "connected");
        Link { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<LinkShared> {
        &self.shared
    }

    /// Opens a channel on this connection.
    pub(crate) async fn open_channel(&self) -> Result<Channel, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut t = self.shared.table.lock().expect("table lock");
            if t.closed {
                drop(t);
                return Err(self.shared.reason());
            }
            let max = self.shared.channel_max.max(1);
            let mut id = None;
            for i in 0..max {
                let cand = ((t.next as u32 - 1 + i as u32) % max as u32 + 1) as u16;
                if t.slots.get(cand as usize).is_none_or(Option::is_none) {
                    id = Some(cand);
                    break;
                }
            }
            let id = id.ok_or_else(|| {
                Error::Config(format!("all {max} channels of the connection are in use"))
            })?;
            if t.slots.len() <= id as usize {
                t.slots.resize_with(id as usize + 1, || None);
            }
            t.slots[id as usize] = Some(tx);
            t.next = if id == max { 1 } else { id + 1 };
            self.shared.mark_channel(id, false);
            id
        };
        let mut ch = Channel::new(id, self.clone(), rx);
        match ch.call(Method::ChannelOpen).await? {
            Method::ChannelOpenOk => Ok(ch),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    /// Writes `channel.close` for a channel dropped without closing, unless the broker closed it
    /// already (then its slot is gone and a second close would be a protocol error).
    pub(crate) fn abandon_channel(&self, id: u16) {
        let t = self.shared.table.lock().expect("table lock");
        if t.slots.get(id as usize).is_some_and(Option::is_some) {
            let _ = self
                .shared
                .write(|out| put_method(out, id, &Method::ChannelClose(Close::normal())));
        }
    }

    /// Closes gracefully (`connection.close`, wait for close-ok), or gives up after `timeout`.
    pub(crate) async fn close(&self, timeout: Duration) {
        let mut stop = self.shared.stop.subscribe();
        if self
            .shared
            .write(|out| put_method(out, 0, &Method::ConnectionClose(Close::normal())))
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, stopped(&mut stop)).await;
        }
        self.shared.fail(Error::Closed);
    }

    /// Kills the connection at once without a goodbye (used when a session is abandoned).
    pub(crate) fn kill(&self, reason: Error) {
        self.shared.fail(reason);
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Resolves with the reason once the connection is dead.
    pub(crate) async fn closed(&self) -> Error {
        let mut stop = self.shared.stop.subscribe();
        let _ = stopped(&mut stop).await;
        self.shared.reason()
    }

    /// `Some(reason)` while the broker has blocked publishing (`connection.blocked`).
    pub(crate) fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    pub(crate) fn frame_max(&self) -> u32 {
        self.shared.frame_max
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        self.shared.heartbeat
    }

    pub(crate) fn server_properties(&self) -> &FieldTable {
        &self.shared.server_properties
    }

    /// Waits until the outbox is below its high-water mark (or the connection is dead).
    pub(crate) async fn writable(&self) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let out = self.shared.out.lock().expect("outbox lock");
                if out.closed || out.buf.len() < HIGH_WATER {
                    return;
                }
            }
            drained.await;
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Method) -> Error {
    Error::Protocol(crate::error::ProtocolError::new(format!(
        "expected {wanted}, got {:?}",
        got.ids()
    )))
}
