//! The WireGuard device across daemon restarts: its TAP and UDP socket
//! are kept in the node's fd store (key [`WG_KEY`]), so the interface
//! (with its address and routes) and the bound port outlive the daemon;
//! the next daemon's [`Op::CreateWg`](crate::plan::Op::CreateWg) adopts
//! them after checking what they are, instead of making a new device.
//!
//! ```text
//!  CreateWg ─▶ store get wg/weft-wg0 ─┬─ TAP of weft-wg0 + UDP :port, both in the host ns ─▶ adopt
//!                                     └─ none / not these ─▶ drop them ─▶ delete link ─▶ create
//!           ─▶ key, port, peers (each handshakes at once) ─▶ store put wg/weft-wg0
//!  DeleteWg ─▶ stop ─▶ store drop wg/weft-wg0 ─▶ delete link
//! ```
//!
//! While no daemon runs, frames the kernel routes into the interface wait
//! in the TAP's queue and datagrams from peers in the socket's buffer;
//! the sessions do not survive (boringtun keeps their keys in memory), so
//! the peers' datagrams of the old sessions are dropped and the new
//! device handshakes with every peer as soon as it is added.

use crate::linux::fdstore;
use crate::model::names::WG_DEVICE;
use crate::wg::NodeDevice;

use super::LinuxDataplane;

/// The fd store key of the device's TAP and socket.
pub(super) const WG_KEY: &str = "wg/weft-wg0";

impl LinuxDataplane {
    /// The device an earlier daemon left in the fd store, if it is a TAP
    /// attached to the WireGuard interface of the host namespace and a
    /// UDP socket of that namespace bound to `port`; what is kept but is
    /// not that is dropped from the store.
    pub(super) async fn adopt_wg(&self, port: u16) -> Option<NodeDevice> {
        let fds = match self.keeper.kept(WG_KEY) {
            Ok(Some(fds)) => fds,
            Ok(None) => return None,
            Err(e) => {
                tracing::info!(error = %e, "no WireGuard device to adopt from the fd store");
                return None;
            }
        };
        let host = self.host.clone();
        let adopted =
            tokio::task::spawn_blocking(move || NodeDevice::adopt(WG_DEVICE, &host, fds, port))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match adopted {
            Ok(dev) => {
                tracing::info!(
                    device = WG_DEVICE,
                    port,
                    "WireGuard device adopted from the fd store"
                );
                Some(dev)
            }
            Err(e) => {
                tracing::info!(error = %e, "making a new WireGuard device");
                self.forget_wg();
                None
            }
        }
    }

    /// Hands duplicates of the device's TAP and socket to the fd store.
    pub(super) fn keep_wg(&self, dev: &NodeDevice) {
        let Some(fds) = dev.keepable_fds() else {
            return;
        };
        if let Err(e) = self.keeper.keep(WG_KEY, &fds) {
            tracing::warn!(error = %e, "WireGuard device not kept in the fd store; encrypted traffic will stop while the daemon restarts");
        }
    }

    /// Closes the fd store's copies of the device (before deleting it: the
    /// interface lives as long as any copy of its TAP).
    pub(super) fn forget_wg(&self) {
        if let Err(e) = self.keeper.forget(WG_KEY) {
            tracing::warn!(error = %e, "cannot drop the WireGuard device from the fd store");
        }
    }
}

/// The keeper of a data plane whose store is at `exec_root`.
pub(super) fn keeper(
    exec_root: &std::path::Path,
    launcher: Option<fdstore::Launcher>,
) -> fdstore::Keeper {
    fdstore::Keeper::new(
        fdstore::Client::new(exec_root.join(fdstore::SOCKET_NAME)),
        launcher,
    )
}
