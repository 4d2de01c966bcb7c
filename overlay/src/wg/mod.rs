//! WireGuard for encrypted overlays (DESIGN §3, "encryption").
//!
//! Owns: the node's key pair ([`keys`]: generated here, the private key in a
//! 0600 file that never leaves the node), the [`WgDevice`] trait through
//! which the data plane drives the node-wide WireGuard device, the
//! WireGuard cross-platform UAPI text it speaks ([`uapi`], pure), and two
//! implementations: boringtun's stock device ([`boringtun::BoringtunDevice`],
//! one packet per syscall) and our batched loop over boringtun's `Tunn`
//! ([`batched::BatchedDevice`], GSO/GRO on the TAP and the socket, with its
//! pure packet work in [`packet`]). [`NodeDevice`] picks one for the data
//! plane: batched unless `WEFT_WG_DEVICE=stock`.
//!
//! Must not: decide what the device should look like (the planner does,
//! [`crate::plan`]), or change a peer in place (boringtun panics on it;
//! a changed peer is removed and added again, in two transactions).
//!
//! ```text
//!  task ─ br0 ─ weft-vx<vni> (local = tunnel addr) ─ route to tunnel subnet
//!        ─ weft-wg0 (TAP: batched; TUN: stock) ─ Tunn ─ UDP 51820 ─ underlay ─ peer node
//! ```

#[cfg(target_os = "linux")]
pub mod batched;
#[cfg(target_os = "linux")]
pub mod boringtun;
pub mod keys;
pub mod packet;
#[cfg(target_os = "linux")]
pub mod tap;
pub mod uapi;
#[cfg(target_os = "linux")]
pub mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// What can go wrong with keys or the device.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A key file could not be read or written.
    #[error("{op} WireGuard key file {}: {source}", path.display())]
    KeyIo {
        /// What we were doing.
        op: &'static str,
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key file has the wrong permissions (the private key must be 0600).
    #[error("WireGuard key file {} has mode {mode:o}; it must be 0600", path.display())]
    KeyMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key is not base64 of 32 bytes.
    #[error("invalid WireGuard {what} key: {reason}")]
    InvalidKey {
        /// "private" or "public".
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The device could not be created.
    #[error("create WireGuard device {name}: {reason}")]
    Create {
        /// The interface name.
        name: String,
        /// Why, rendered (boringtun's error type is not `std::error::Error`;
        /// the batched device's are io errors).
        reason: String,
    },
    /// Talking UAPI to the device failed (it may have died).
    #[error("WireGuard device {name}: UAPI {op}: {source}")]
    Uapi {
        /// The interface name.
        name: String,
        /// "set" or "get".
        op: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The device refused a UAPI request.
    #[error("WireGuard device {name} refused {request}: errno {errno}")]
    Refused {
        /// The interface name.
        name: String,
        /// What we asked (never includes key material).
        request: String,
        /// The errno it answered.
        errno: i32,
    },
    /// The device (or the kernel under it) failed.
    #[error("WireGuard device {name}: {op}: {source}")]
    Device {
        /// The interface name.
        name: String,
        /// What we were doing.
        op: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Descriptors kept across a daemon restart are not the device's (see
    /// [`batched::BatchedDevice::adopt`]); a new device is made instead.
    #[error("WireGuard device {name}: kept descriptors not adopted: {reason}")]
    NotAdoptable {
        /// The interface name.
        name: String,
        /// What they are instead.
        reason: String,
    },
    /// The device's answer could not be parsed.
    #[error("WireGuard device {name}: bad UAPI answer line {line:?}")]
    BadAnswer {
        /// The interface name.
        name: String,
        /// The offending line.
        line: String,
    },
}

/// Result alias of [`crate::wg`].
pub type Result<T, E = WgError> = std::result::Result<T, E>;

/// A peer as the device should hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Its public key, canonical base64.
    pub public_key: String,
    /// Where to send to it (underlay address and port).
    pub endpoint: SocketAddr,
    /// The inner source addresses accepted from it / routed to it.
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive, seconds.
    pub keepalive: Option<u16>,
}

/// A peer as the device reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// Its current endpoint (WireGuard follows a roaming peer).
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs.
    pub allowed_ips: BTreeSet<IpNetwork>,
    /// Persistent keepalive, seconds.
    pub keepalive: Option<u16>,
    /// When the current session's handshake completed (wall clock,
    /// computed from boringtun's "time since"; see crates.md §6.5).
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// What the device holds right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Its public key (base64), once a private key is set.
    pub public_key: Option<String>,
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// Its peers by public key (base64).
    pub peers: BTreeMap<String, PeerState>,
}

/// A running WireGuard device. Implementations: [`batched::BatchedDevice`]
/// (the default, an own batched loop over `boringtun::noise::Tunn`) and
/// [`boringtun::BoringtunDevice`] (boringtun's stock device,
/// `WEFT_WG_DEVICE=stock`). Dropping it stops the device and removes its
/// interface.
pub trait WgDevice: Send + std::fmt::Debug {
    /// The interface name.
    fn name(&self) -> &str;
    /// Sets (or rotates) the private key; existing peers are kept and
    /// handshake again with the new key.
    fn set_private_key(&mut self, key: &keys::PrivateKey) -> Result<()>;
    /// Sets the UDP port.
    fn set_listen_port(&mut self, port: u16) -> Result<()>;
    /// Adds a peer. A peer with the same key is removed first (never
    /// updated in place).
    fn add_peer(&mut self, peer: &PeerConfig) -> Result<()>;
    /// Removes a peer by public key (base64); absent is fine.
    fn remove_peer(&mut self, public_key: &str) -> Result<()>;
    /// What the device holds; an error means the device is gone.
    fn state(&mut self) -> Result<DeviceState>;
    /// Starts sending what waits on the interface, for a device adopted
    /// held ([`batched::BatchedDevice::adopt`]) once its key and peers are
    /// set; a no-op for any other device.
    fn release(&mut self) {}
}

/// Which [`WgDevice`] implementation the data plane runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// [`batched::BatchedDevice`] (the default).
    Batched,
    /// [`boringtun::BoringtunDevice`], boringtun's own loop.
    Stock,
}

impl DeviceKind {
    /// The environment variable that picks the device.
    pub const ENV: &'static str = "WEFT_WG_DEVICE";

    /// The kind named by the value of [`DeviceKind::ENV`]: `stock` (or
    /// `boringtun`) for the stock device, anything else or unset for the
    /// batched one.
    pub fn from_env_value(v: Option<&str>) -> DeviceKind {
        match v.map(str::trim) {
            Some("stock") | Some("boringtun") => DeviceKind::Stock,
            _ => DeviceKind::Batched,
        }
    }
}

/// The node's WireGuard device as the data plane creates it (see
/// [`DeviceKind`]).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub enum NodeDevice {
    /// The batched device.
    Batched(batched::BatchedDevice),
    /// The stock boringtun device.
    Stock(boringtun::BoringtunDevice),
}

#[cfg(target_os = "linux")]
impl NodeDevice {
    /// Creates the device `name` in `ns`, of the kind [`DeviceKind::ENV`]
    /// names; `threads` is the stock device's worker count (the batched
    /// one always runs a tx, an rx and a timer thread).
    pub fn create(name: &str, ns: &crate::linux::Netns, threads: usize) -> Result<NodeDevice> {
        let v = std::env::var(DeviceKind::ENV).ok();
        match DeviceKind::from_env_value(v.as_deref()) {
            DeviceKind::Batched => {
                batched::BatchedDevice::create(name, ns).map(NodeDevice::Batched)
            }
            DeviceKind::Stock => {
                boringtun::BoringtunDevice::create(name, ns, threads).map(NodeDevice::Stock)
            }
        }
    }

    /// Takes over a batched device's TAP and socket kept across a daemon
    /// restart ([`batched::BatchedDevice::adopt`]); the stock device has
    /// nothing to keep, so its kind adopts nothing.
    pub fn adopt(
        name: &str,
        ns: &crate::linux::Netns,
        fds: Vec<std::os::fd::OwnedFd>,
        port: u16,
    ) -> Result<NodeDevice> {
        let v = std::env::var(DeviceKind::ENV).ok();
        match DeviceKind::from_env_value(v.as_deref()) {
            DeviceKind::Batched => {
                batched::BatchedDevice::adopt(name, ns, fds, port).map(NodeDevice::Batched)
            }
            DeviceKind::Stock => Err(WgError::NotAdoptable {
                name: name.to_owned(),
                reason: "the stock device keeps nothing across restarts".into(),
            }),
        }
    }

    /// The descriptors that keep the device alive without this process
    /// (TAP, then socket), to hand to the fd store; `None` for the stock
    /// device, which owns its descriptors inside boringtun.
    pub fn keepable_fds(&self) -> Option<[std::os::fd::BorrowedFd<'_>; 2]> {
        match self {
            NodeDevice::Batched(d) => Some(d.keepable_fds()),
            NodeDevice::Stock(_) => None,
        }
    }

    fn inner(&mut self) -> &mut dyn WgDevice {
        match self {
            NodeDevice::Batched(d) => d,
            NodeDevice::Stock(d) => d,
        }
    }
}

#[cfg(target_os = "linux")]
impl WgDevice for NodeDevice {
    fn name(&self) -> &str {
        match self {
            NodeDevice::Batched(d) => d.name(),
            NodeDevice::Stock(d) => d.name(),
        }
    }

    fn set_private_key(&mut self, key: &keys::PrivateKey) -> Result<()> {
        self.inner().set_private_key(key)
    }

    fn set_listen_port(&mut self, port: u16) -> Result<()> {
        self.inner().set_listen_port(port)
    }

    fn add_peer(&mut self, peer: &PeerConfig) -> Result<()> {
        self.inner().add_peer(peer)
    }

    fn remove_peer(&mut self, public_key: &str) -> Result<()> {
        self.inner().remove_peer(public_key)
    }

    fn state(&mut self) -> Result<DeviceState> {
        self.inner().state()
    }

    fn release(&mut self) {
        self.inner().release()
    }
}

#[cfg(test)]
mod tests;
