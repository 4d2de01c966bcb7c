//! Root tests of `weft_overlay::linux`: every test builds its own network
//! namespaces under a temp directory, checks the result through an
//! independent view of the kernel (`ip`/`bridge`/`nft` via `nsenter`), and
//! cleans up on failure through Drop guards. Without root they are skipped.

mod common;
mod dataplane;
mod dns_store;
mod dual_stack;
mod egress6;
mod fake_agrees;
mod netlink;
mod netns;
mod nft;
mod overlay_path;
mod ports;
mod probe;
mod process;
mod services;
mod topology;
mod watch;
mod wireguard;
