//! resolv.conf in both directions: the host's nameservers become the
//! embedded resolver's upstreams, and tasks get a file pointing at the
//! embedded resolver.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The address the embedded resolver listens on inside every task
/// namespace (Docker's choice, so images that expect it work).
pub const RESOLVER_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);
/// Where weft's resolver listens in a Docker container's namespace, where
/// Docker's own resolver holds [`RESOLVER_ADDR`]: `docker run --dns
/// 127.0.0.12` makes it Docker's upstream for names Docker does not know.
pub const DOCKER_UPSTREAM_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 12);

/// The resolv.conf tasks get: only the embedded resolver, and `ndots:0` so
/// single-label service names are tried as-is before any search domain.
pub const TASK_RESOLV_CONF: &str = "# written by weft: the embedded resolver of this task's namespace\n\
nameserver 127.0.0.11\n\
options ndots:0\n";

/// The `nameserver` entries of the resolv.conf at `path` as upstreams
/// (port 53), in file order and without duplicates. Loopback resolvers
/// (127.0.0.0/8, ::1: systemd-resolved's stub, a local dnsmasq, our own
/// 127.0.0.11) are skipped: seen from a task they would loop or be
/// unreachable. A missing or unreadable file gives no upstreams.
pub fn resolv_conf_upstreams(path: impl AsRef<Path>) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|s| parse_upstreams(&s))
        .unwrap_or_default()
}

/// Where systemd-resolved keeps the real upstreams when `/etc/resolv.conf`
/// only names its loopback stub (127.0.0.53).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The host's upstreams as the daemon should forward to them: those of
/// `/etc/resolv.conf`, or, when it only has loopback resolvers (a
/// systemd-resolved or dnsmasq stub), those of [`SYSTEMD_RESOLV_CONF`]
/// (as Docker does). Read it in the daemon's own namespace.
pub fn host_upstreams() -> Vec<SocketAddr> {
    let main = resolv_conf_upstreams("/etc/resolv.conf");
    if main.is_empty() {
        resolv_conf_upstreams(SYSTEMD_RESOLV_CONF)
    } else {
        main
    }
}

/// [`resolv_conf_upstreams`] on the file's contents.
pub fn parse_upstreams(contents: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in contents.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        // IPv6 link-local servers carry a zone ("fe80::1%eth0"): useless
        // from another namespace.
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let sa = SocketAddr::new(ip, 53);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_loopback_comments_and_junk() {
        let conf = "# comment\n; other comment\nsearch example.org\n\
            nameserver 127.0.0.53\nnameserver 192.0.2.1\n  nameserver\t2001:db8::1 \n\
            nameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.1\n\
            nameserver 127.0.0.11\nnameserver 0.0.0.0\noptions edns0\n";
        assert_eq!(
            parse_upstreams(conf),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert!(resolv_conf_upstreams("/nonexistent/resolv.conf").is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "nameserver 198.18.0.53\n").unwrap();
        assert_eq!(
            resolv_conf_upstreams(&p),
            vec!["198.18.0.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(TASK_RESOLV_CONF.contains("nameserver 127.0.0.11\n"));
        assert!(TASK_RESOLV_CONF.contains("options ndots:0\n"));
    }
}
