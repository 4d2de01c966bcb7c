//! Linux kernel primitives of the data plane.
//!
//! Owns: network namespaces pinned by bind mounts under a run directory of
//! our choosing ([`netns`]), per-namespace rtnetlink handles and idempotent
//! link/address/route/FDB/neighbour operations ([`netlink`]), nftables
//! batches applied inside a namespace ([`nft`]) including the tasks'
//! service-VIP tables ([`lb`]), published ports and the operator's
//! firewall chain ([`ports`]), a watcher of nftables changes
//! ([`monitor`]), watchers of each namespace's observed objects
//! ([`nswatch`]), stale conntrack entries deleted over
//! ctnetlink ([`conntrack`]), commands started inside namespaces
//! ([`process`]), the doctor's data-path probes ([`probe`]), the fd store that keeps the resolver's sockets across
//! daemon restarts ([`fdstore`]) and the underlay topology used by the tests and
//! `weft lab` ([`topology`]).
//!
//! Must not: shell out to `ip`, `bridge` or `wg` (netlink only; `nft` through
//! the `nftables` crate is the one tool we run), touch the iproute2 netns directory, or call
//! `setns` on a thread it does not own (tokio workers in particular).

pub mod conntrack;
pub mod dataplane;
pub mod fdstore;
pub mod guard;
pub mod lb;
pub mod libnft;
pub mod monitor;
mod nat;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nswatch;
pub mod ports;
pub mod probe;
pub mod process;
pub mod topology;

mod error;

pub use crate::mac::{MacAddr, ParseMacError};
pub use dataplane::{LinuxDataplane, task_netns_path, underlay_mtu_of};
pub use error::{Error, Result, TeardownReport};
pub use monitor::NftMonitor;
pub use netlink::{
    FdbEntry, Link, LinkKind, NeighEntry, Netlink, RouteEntry, VethSpec, VxlanInfo, VxlanSpec,
};
pub use netns::Netns;
pub use process::{MountPropagation, NsCommand};
pub use topology::{
    Underlay, UnderlayHost, UnderlayOptions, cleanup_run_dir, pids_in_netns, teardown_pins,
};
