//! Stop signals: every long-running task watches a `watch::Receiver<bool>` that turns `true`
//! when it should stop (a connection that died, a consumer shutting down).

use tokio::sync::watch;

/// Resolves once the watched flag is `true` (or its sender is gone). Holds no borrow across
/// awaits, so it can sit in a `select!` of a `Send` future.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
