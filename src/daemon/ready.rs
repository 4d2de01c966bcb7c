//! Telling systemd (`Type=notify`, sd_notify(3)) when the daemon is ready:
//! once it serves its local API and, on a member node, has applied the
//! config it saved before it stopped (its tasks have their networks, names
//! and encryption again). Without `NOTIFY_SOCKET` nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::oneshot;

/// How long readiness waits for the saved config's pass. A pass that takes
/// longer (a data plane stuck on the kernel) should not have systemd kill
/// the daemon that would repair it: ready is then said with a status that
/// says why (`systemctl status weft`).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Waits for the local socket (`bound`) and the saved config (`settled`,
/// none when the node is not a member or is locked) and tells systemd.
pub async fn announce(bound: oneshot::Receiver<()>, settled: Option<oneshot::Receiver<()>>) {
    if bound.await.is_err() {
        return;
    }
    let status = match settled {
        None => "serving; not a cluster member",
        Some(settled) => match tokio::time::timeout(SETTLE_LIMIT, settled).await {
            // A dropped sender: the loop stopped before its first pass
            // (the node left); the socket is still served.
            Ok(_) => "serving; saved config applied",
            Err(_) => {
                tracing::warn!(
                    limit_s = SETTLE_LIMIT.as_secs(),
                    "the saved config is still being applied: ready anyway"
                );
                "serving; the saved config is still being applied"
            }
        },
    };
    tracing::info!(status, "weft daemon ready");
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(states: &[NotifyState]) {
    // The variable stays set: STOPPING=1 goes to the same socket later.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
