//! weft-overlay: the kernel data plane.
//!
//! Owns: the desired node state model ([`model`]), the pure planner that
//! diffs it against what the kernel holds ([`plan`]), the [`Dataplane`]
//! trait ([`dataplane`]) with its Linux implementation
//! ([`linux::LinuxDataplane`]: netlink, network namespaces, nftables) and an
//! in-memory fake ([`fake::FakeDataplane`]) for tests of the logic above it,
//! the embedded DNS resolver of the tasks ([`dns`]) and WireGuard for
//! encrypted networks ([`wg`]: keys, the device trait and boringtun). Also
//! the crash-safe file write ([`durable`]) the worker uses too: this is the
//! one crate both depend on.
//!
//! Must not: speak gRPC, know about Raft, or depend on `weft-proto` or
//! `weft-manager`.

pub mod dataplane;
pub mod dns;
pub mod durable;
pub mod fake;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod model;
pub mod plan;
pub mod wg;

mod mac;

pub use dataplane::{ApplyReport, Dataplane, Error, Result, TeardownReport};
pub use dns::resolv_conf_upstreams;
pub use fake::FakeDataplane;
#[cfg(target_os = "linux")]
pub use linux::LinuxDataplane;
pub use mac::{MacAddr, ParseMacError};
pub use model::{
    DEFAULT_VXLAN_PORT, DEFAULT_WG_PORT, DesiredNode, EndpointId, GatewayBridge, GwAttachment,
    LocalEndpoint, NetworkId, OverlayNet, RemoteEndpoint, ServiceEntry, TaskId, TaskNet,
    VXLAN_OVERHEAD, WIREGUARD_OVERHEAD, WgConfig, WgPeer, encrypted_overlay_mtu, overlay_mtu,
};
pub use plan::{Observed, Op, PlanError, plan};
