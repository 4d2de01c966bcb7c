//! The WireGuard device across daemon restarts: its TAP and UDP socket
//! are kept in the node's fd store (key [`WG_KEY`]), so the interface
//! (with its address and routes) and the bound port outlive the daemon;
//! the next daemon's [`Op::CreateWg`](crate::plan::Op::CreateWg) adopts
//! them after checking what they are, instead of making a new device.
//!
//! An adopted device holds the frames that waited in the TAP until its key
//! and peers are set (then [`WgDevice::release`]): read earlier, with no
//! peer to route them to, they would be dropped.
//!
//! ```text
//!  CreateWg ─▶ store get wg/weft-wg0 ─┬─ TAP of weft-wg0 + UDP :port, both in the host ns ─▶ adopt
//!                                     └─ none / not these ─▶ drop them ─▶ delete link ─▶ create
//!           ─▶ key, port, peers (each handshakes at once) ─▶ store put wg/weft-wg0
//!  DeleteWg ─▶ stop ─▶ store drop wg/weft-wg0 ─▶ delete link
//! ```
//!
//! The first pass after a restart adopts the device before it observes
//! the kernel ([`LinuxDataplane::resume_wg`]): observing every namespace
//! comes before the plan's `CreateWg`, and the device would wait for it.
//!
//! While no daemon runs, frames the kernel routes into the interface wait
//! in the TAP's queue and datagrams from peers in the socket's buffer;
//! the sessions do not survive (boringtun keeps their keys in memory), so
//! the peers' datagrams of the old sessions are dropped and the new
//! device handshakes with every peer as soon as it is added.

use crate::linux::fdstore;
use crate::model::DesiredNode;
use crate::model::names::WG_DEVICE;
use crate::wg::{NodeDevice, PeerConfig, WgDevice, keys};

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

    /// The first pass after a restart, before it observes the kernel (which
    /// takes tens of milliseconds per namespace): adopts the kept device,
    /// sets the key and adds the wanted peers ([`crate::plan::wg_peers`]),
    /// so handshakes start at once. The plan that follows sees a device
    /// with its peers and changes only what differs; anything that fails
    /// here is left to it (`CreateWg` adopts or creates the device then).
    pub(super) async fn resume_wg(&self, desired: &DesiredNode) {
        let Some(cfg) = &desired.wireguard else {
            return;
        };
        if self.wg_device().is_some() {
            return;
        }
        let (Ok(key), Ok(peers)) = (
            keys::load_private_key(&cfg.private_key_path),
            crate::plan::wg_peers(desired),
        ) else {
            return;
        };
        let Some(mut dev) = self.adopt_wg(cfg.listen_port).await else {
            return;
        };
        let mut resumed = dev.set_private_key(&key);
        for (public_key, p) in peers {
            let Some(endpoint) = p.endpoint else { continue };
            resumed = resumed.and_then(|()| {
                dev.add_peer(&PeerConfig {
                    public_key,
                    endpoint,
                    allowed_ips: p.allowed_ips.into_iter().collect(),
                    keepalive: p.keepalive,
                })
            });
        }
        match resumed {
            Ok(()) => {
                dev.release();
                *self.wg_device() = Some(Box::new(dev));
            }
            Err(e) => {
                tracing::info!(error = %e, "WireGuard device not resumed early; the plan sets it up")
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
