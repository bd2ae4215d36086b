//! Pieces the commands share: connection flags, sequence-numbered bodies, progress bars, the
//! task that awaits confirmations.

use indicatif::{ProgressBar, ProgressStyle};
use rabbit_once::{Backoff, Confirmation, Confirmed, ConnectionConfig, PublishError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The local broker as guest, vhost `/`.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Flags every command that talks to a broker takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Broker URI; repeat for several endpoints, tried in turn.
    #[arg(long = "uri", default_value = DEFAULT_URI)]
    pub uris: Vec<String>,
    /// Heartbeat interval in seconds (0 disables).
    #[arg(long, default_value_t = 5)]
    pub heartbeat: u64,
}

impl Conn {
    /// Connection settings from these flags; `name` is shown in the broker's connection list.
    /// Reconnect backoff from 50 ms to 2 s, jitter 0.5.
    pub fn config(&self, name: &str) -> anyhow::Result<ConnectionConfig> {
        Ok(ConnectionConfig::from_uris(&self.uris)?
            .name(name)
            .heartbeat(Duration::from_secs(self.heartbeat))
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(2),
                0.5,
            )))
    }
}

/// A body that starts with the JSON `{"seq":i}`, padded with spaces to `size` bytes.
pub fn seq_body(seq: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{{\"seq\":{seq}}}").into_bytes();
    if b.len() < size {
        b.resize(size, b' ');
    }
    b
}

/// The `seq` of a body made by [`seq_body`], if it is one.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} {{msg}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// A task that awaits every [`Confirmation`] sent to it, in the order sent, and folds each
/// outcome into `state` with `each` (`T` travels along, e.g. the message's sequence number).
/// It returns `state` once every sender is dropped and the last confirmation has settled, so
/// publishing never waits for a confirm while the confirms are counted as they come.
pub fn await_confirmations<T, S, F>(
    mut state: S,
    mut each: F,
) -> (mpsc::UnboundedSender<(T, Confirmation)>, JoinHandle<S>)
where
    T: Send + 'static,
    S: Send + 'static,
    F: FnMut(&mut S, T, Result<Confirmed, PublishError>) + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(T, Confirmation)>();
    let task = tokio::spawn(async move {
        while let Some((tag, c)) = rx.recv().await {
            let outcome = c.await;
            each(&mut state, tag, outcome);
        }
        state
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_bodies_round_trip() {
        let b = seq_body(42, 64);
        assert_eq!(b.len(), 64);
        assert!(b.starts_with(br#"{"seq":42}"#));
        assert_eq!(seq_of(&b), Some(42));
        assert_eq!(seq_of(b"nope"), None);
        assert_eq!(seq_body(7, 0), br#"{"seq":7}"#.to_vec());
    }
}
