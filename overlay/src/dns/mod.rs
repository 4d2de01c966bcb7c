//! The embedded DNS resolver: what each task may resolve ([`view`], pure,
//! computed from the desired state), how one query is answered
//! ([`message`], pure, bytes to bytes), resolv.conf parsing and writing
//! ([`resolv`]), and on Linux the listeners at 127.0.0.11:53 (UDP and TCP)
//! inside every task namespace ([`listener`], driven by
//! [`crate::linux::LinuxDataplane`]).
//!
//! ```text
//!  apply(desired) ──▶ DnsView::of(desired) ──▶ shared view (RwLock)
//!                                                 ▲ read per query
//!  task netns: 127.0.0.11:53 ─ udp/tcp ─▶ message::handle ─▶ reply
//!                                                 └─▶ forward (daemon's netns) ─▶ upstreams
//! ```

#[cfg(target_os = "linux")]
pub mod listener;
pub mod message;
pub mod metrics;
pub mod resolv;
pub mod view;

pub use resolv::{
    DOCKER_UPSTREAM_ADDR, RESOLVER_ADDR, SYSTEMD_RESOLV_CONF, TASK_RESOLV_CONF, host_upstreams,
    parse_upstreams, resolv_conf_upstreams,
};
pub use view::{DnsView, Lookup, TaskView};
