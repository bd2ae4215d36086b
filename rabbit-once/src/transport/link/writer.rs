//! The writer task: swaps the outbox out and writes it with one syscall, so frames from many
//! publishes (and acks) share one write.

use super::WriteHalf;
use super::shared::LinkShared;
use crate::error::Error;
use crate::shutdown::stopped;
use bytes::BytesMut;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub(super) async fn writer(shared: Arc<LinkShared>, mut w: WriteHalf) {
    let mut stop = shared.stop.subscribe();
    let mut spare = BytesMut::with_capacity(64 << 10);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = shared.wake_writer.notified() => {}
        }
        let stop_after = {
            let mut out = shared.out.lock().expect("outbox lock");
            std::mem::swap(&mut out.buf, &mut spare);
            out.stop_after_flush
        };
        if !spare.is_empty() {
            let res = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                r = w.write_all(&spare) => r,
            };
            if let Err(e) = res {
                shared.fail(Error::ConnectionLost(format!("write failed: {e}")));
                break;
            }
            spare.clear();
            shared.write_activity.fetch_add(1, Ordering::Relaxed);
            shared.drained.notify_waiters();
        }
        if stop_after {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.flush()).await;
            shared.fail(Error::ConnectionLost("closed".into()));
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}
