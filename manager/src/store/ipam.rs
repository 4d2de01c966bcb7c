//! Address allocation: VNIs, subnets from the pools, endpoint addresses and
//! MACs. Pure functions of what is already allocated, so allocation at
//! apply time is deterministic on every manager.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// First VNI weft hands out (Docker Swarm starts at 4096 too).
pub const FIRST_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The lowest free VNI.
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

/// Whether two prefixes share any address.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first `/mask` subnet of `pools` that overlaps none of `taken`.
pub fn pick_subnet(pools: &[IpNetwork], mask: u8, taken: &[IpNetwork]) -> Option<IpNetwork> {
    for pool in pools {
        if let IpNetwork::V6(p) = pool {
            if let Some(s) = pick_subnet6(p, mask, taken) {
                return Some(s);
            }
            continue;
        }
        let (IpNetwork::V4(p), true) = (pool, mask >= pool.prefix() && mask <= 30) else {
            continue;
        };
        let step = 1u64 << (32 - u32::from(mask));
        let start = u64::from(u32::from(p.network()));
        let end = start + (1u64 << (32 - u32::from(p.prefix())));
        let mut at = start;
        while at < end {
            let cand = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(at as u32)), mask).ok()?;
            match taken.iter().find(|t| overlaps(t, &cand)) {
                None => return Some(cand),
                // Skip past the whole taken prefix when it is larger.
                Some(t) => {
                    let t_end = match t {
                        IpNetwork::V4(t4) => {
                            u64::from(u32::from(t4.network()))
                                + (1u64 << (32 - u32::from(t4.prefix())))
                        }
                        IpNetwork::V6(_) => at + step,
                    };
                    at = t_end.max(at + step);
                    // Re-align to the candidate grid.
                    at = at.div_ceil(step) * step;
                }
            }
        }
    }
    None
}

/// The first `/mask` subnet of the IPv6 pool `pool` that overlaps none of
/// `taken`, trying at most [`MAX_SUBNET_PROBES`] candidates (taken ones
/// of the other family never overlap).
fn pick_subnet6(pool: &ipnetwork::Ipv6Network, mask: u8, taken: &[IpNetwork]) -> Option<IpNetwork> {
    if mask < pool.prefix() || mask > MAX_PREFIX6 {
        return None;
    }
    let start = u128::from(pool.network());
    let count = 1u128
        .checked_shl(u32::from(mask - pool.prefix()))
        .unwrap_or(u128::MAX);
    let step = 1u128 << (128 - u32::from(mask));
    (0..count.min(MAX_SUBNET_PROBES))
        .map(|i| IpNetwork::new(IpAddr::V6(Ipv6Addr::from(start + i * step)), mask))
        .filter_map(Result::ok)
        .find(|cand| !taken.iter().any(|t| overlaps(t, cand)))
}

/// The longest IPv6 prefix a network may have: at least 16 addresses.
pub const MAX_PREFIX6: u8 = 124;

/// How many candidate subnets of an IPv6 pool are tried before it counts
/// as full (a /48 pool has 65,536 /64s; a cluster has far fewer networks).
const MAX_SUBNET_PROBES: u128 = 1 << 17;

/// The first usable address of a subnet (network + 1).
pub fn first_host(subnet: &IpNetwork) -> Option<IpAddr> {
    match subnet {
        IpNetwork::V4(n) if n.prefix() <= 30 => {
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)))
        }
        IpNetwork::V6(n) if n.prefix() <= MAX_PREFIX6 => {
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)))
        }
        _ => None,
    }
}

/// 64-bit FNV-1a of `bytes`: a stable hash for values every manager must
/// derive alike from replicated state (not a secret, not collision-proof).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The unique local /48 every node's gateway bridge takes its IPv6
/// addresses from (`weft_overlay::GatewayBridge::IPV6_PREFIX`, derived on
/// the nodes): no network's IPv6 subnet may overlap it.
pub const GATEWAY_BRIDGE6: &str = "fd77:6566:7400::/48";

/// Why an IPv6 subnet cannot be a network's (link-local, multicast, the
/// `::/8` block of the unspecified, loopback and mapped addresses, or the
/// gateway bridges' range); `None` when it can.
pub fn unusable6(subnet: &IpNetwork) -> Option<String> {
    let reserved: [(&str, &str); 4] = [
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        (
            "::/8",
            "reserved (unspecified, loopback and mapped addresses)",
        ),
        (
            GATEWAY_BRIDGE6,
            "the nodes' gateway bridges' (egress over IPv6)",
        ),
    ];
    reserved.into_iter().find_map(|(r, what)| {
        let r: IpNetwork = r.parse().expect("valid literal");
        overlaps(&r, subnet).then(|| format!("IPv6 subnet {subnet} overlaps {r}, which is {what}"))
    })
}

/// A cluster's default IPv6 pool: a unique local /48 (RFC 4193) whose
/// global ID comes from the cluster ID, so every manager derives the same.
pub fn ula_pool(cluster_id: &str) -> IpNetwork {
    let h = fnv1a(cluster_id.bytes()).to_be_bytes();
    let mut o = [0u8; 16];
    o[0] = 0xfd;
    o[1..6].copy_from_slice(&h[..5]);
    IpNetwork::new(IpAddr::V6(Ipv6Addr::from(o)), 48).expect("48 is a valid prefix")
}

/// Whether `ip` may be given to an endpoint of `subnet`: inside it, and
/// not its network or broadcast address.
pub fn is_host_addr(subnet: &IpNetwork, ip: IpAddr) -> bool {
    if !subnet.contains(ip) {
        return false;
    }
    match (subnet, ip) {
        (IpNetwork::V4(n), IpAddr::V4(a)) => a != n.network() && a != n.broadcast(),
        // The subnet-router anycast address (all host bits zero) is not
        // an endpoint's.
        (IpNetwork::V6(n), IpAddr::V6(a)) => a != n.network(),
        _ => false,
    }
}

/// The lowest free host address of `subnet` (within `range` if given),
/// skipping `taken`.
pub fn next_ip(
    subnet: &IpNetwork,
    range: Option<&IpNetwork>,
    taken: &BTreeSet<IpAddr>,
) -> Option<IpAddr> {
    free_ips(subnet, range, taken).next()
}

/// The first free host address of `subnet` (within `range` if given)
/// after `after`, wrapping to the lowest: serial allocation, so an address
/// just released is the last to be handed out again.
pub fn next_ip_after(
    subnet: &IpNetwork,
    range: Option<&IpNetwork>,
    taken: &BTreeSet<IpAddr>,
    after: Option<IpAddr>,
) -> Option<IpAddr> {
    let mut free = free_ips(subnet, range, taken);
    let first = free.next()?;
    match after {
        Some(a) if first <= a => free.find(|ip| *ip > a).or(Some(first)),
        _ => Some(first),
    }
}

/// The free host addresses of `subnet` (within `range` if given), lowest
/// first: taking n of them gives what n calls of [`next_ip`] would, each
/// after the one before was taken, in one pass (n nodes' ingress
/// endpoints at once were O(n²) with `next_ip`).
pub fn free_ips<'a>(
    subnet: &'a IpNetwork,
    range: Option<&IpNetwork>,
    taken: &'a BTreeSet<IpAddr>,
) -> impl Iterator<Item = IpAddr> + 'a {
    let (start, size) = match range.unwrap_or(subnet) {
        IpNetwork::V4(w) => (
            u128::from(u32::from(w.network())),
            1u128 << (32 - u32::from(w.prefix())),
        ),
        IpNetwork::V6(w) => (
            u128::from(w.network()),
            1u128
                .checked_shl(128 - u32::from(w.prefix()))
                .unwrap_or(u128::MAX),
        ),
    };
    let v6 = subnet.is_ipv6();
    (0..size)
        .map(move |i| {
            let a = start.wrapping_add(i);
            if v6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::from(a as u32))
            }
        })
        .filter(move |ip| is_host_addr(subnet, *ip) && !taken.contains(ip))
}

/// The MAC of an endpoint, derived from its address as Docker does
/// (`02:42:` + the IPv4 address), so it is stable and needs no storage.
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x02, 0x42, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [0x02, 0x42, o[12], o[13], o[14], o[15]]
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn vnis_start_at_4096_and_fill_gaps() {
        let mut used = BTreeSet::new();
        assert_eq!(next_vni(&used), Some(4096));
        used.extend([4096, 4097, 4099]);
        assert_eq!(next_vni(&used), Some(4098));
    }

    #[test]
    fn subnets_come_from_pools_without_overlap() {
        let pools = [net("10.0.0.0/8")];
        assert_eq!(pick_subnet(&pools, 24, &[]), Some(net("10.0.0.0/24")));
        let taken = [net("10.0.0.0/24"), net("10.0.1.0/24")];
        assert_eq!(pick_subnet(&pools, 24, &taken), Some(net("10.0.2.0/24")));
        // A user subnet larger than the grid is skipped entirely.
        let taken = [net("10.0.0.0/16")];
        assert_eq!(pick_subnet(&pools, 24, &taken), Some(net("10.1.0.0/24")));
        // A second pool is used when the first is full.
        let pools = [net("10.9.0.0/24"), net("10.10.0.0/16")];
        let taken = [net("10.9.0.0/24")];
        assert_eq!(pick_subnet(&pools, 24, &taken), Some(net("10.10.0.0/24")));
        // Exhausted.
        let pools = [net("10.9.0.0/24")];
        assert_eq!(pick_subnet(&pools, 24, &[net("10.9.0.0/25")]), None);
    }

    #[test]
    fn endpoint_addresses() {
        let s = net("10.0.9.0/24");
        let mut taken = BTreeSet::new();
        taken.insert("10.0.9.1".parse().unwrap()); // gateway
        assert_eq!(next_ip(&s, None, &taken), Some("10.0.9.2".parse().unwrap()));
        let r = net("10.0.9.128/25");
        assert_eq!(
            next_ip(&s, Some(&r), &taken),
            Some("10.0.9.128".parse().unwrap())
        );
        assert!(!is_host_addr(&s, "10.0.9.0".parse().unwrap()));
        assert!(!is_host_addr(&s, "10.0.9.255".parse().unwrap()));
        assert!(!is_host_addr(&s, "10.0.10.1".parse().unwrap()));
        let tiny = net("10.0.9.0/30");
        let taken: BTreeSet<IpAddr> = ["10.0.9.1", "10.0.9.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(next_ip(&tiny, None, &taken), None, "exhausted");
        // Taking n free addresses at once is n calls of next_ip.
        let mut one_by_one = BTreeSet::from(["10.0.9.3".parse().unwrap()]);
        let at_once: Vec<IpAddr> = free_ips(&s, None, &one_by_one).take(5).collect();
        for ip in &at_once {
            assert_eq!(next_ip(&s, None, &one_by_one), Some(*ip));
            one_by_one.insert(*ip);
        }
    }

    #[test]
    fn ipv6_subnets_and_addresses() {
        let pools = [net("fd00:1::/48")];
        assert_eq!(pick_subnet(&pools, 64, &[]), Some(net("fd00:1::/64")));
        let taken = [net("fd00:1::/64"), net("10.0.0.0/24")];
        assert_eq!(
            pick_subnet(&pools, 64, &taken),
            Some(net("fd00:1:0:1::/64"))
        );
        // Mixed pools: each family from its own.
        let mixed = [net("10.0.0.0/8"), net("fd00:1::/48")];
        assert_eq!(pick_subnet(&mixed[1..], 64, &[]), Some(net("fd00:1::/64")));
        assert_eq!(pick_subnet(&pools, 125, &[]), None, "too long a prefix");
        let s = net("fd00:1::/64");
        assert_eq!(first_host(&s), Some("fd00:1::1".parse().unwrap()));
        assert!(!is_host_addr(&s, "fd00:1::".parse().unwrap()));
        assert!(!is_host_addr(&s, "10.0.0.1".parse().unwrap()));
        let taken = BTreeSet::from(["fd00:1::1".parse().unwrap()]);
        assert_eq!(
            next_ip(&s, None, &taken),
            Some("fd00:1::2".parse().unwrap())
        );
        let after = Some("fd00:1::7".parse().unwrap());
        assert_eq!(
            next_ip_after(&s, None, &taken, after),
            Some("fd00:1::8".parse().unwrap())
        );
        let r = net("fd00:1::100/120");
        assert_eq!(
            next_ip(&s, Some(&r), &taken),
            Some("fd00:1::100".parse().unwrap())
        );
        // A whole /64 is not walked to find the end of a small one.
        let tiny = net("fd00:1::/126");
        let full: BTreeSet<IpAddr> = (1..4)
            .map(|i| format!("fd00:1::{i}").parse().unwrap())
            .collect();
        assert_eq!(next_ip(&tiny, None, &full), None);
    }

    #[test]
    fn the_default_ula_pool_is_stable_and_unique_local() {
        let a = ula_pool("c1");
        assert_eq!(a, ula_pool("c1"));
        assert_ne!(a, ula_pool("c2"));
        assert_eq!(a.prefix(), 48);
        let IpAddr::V6(ip) = a.ip() else { panic!("v6") };
        assert_eq!(ip.octets()[0], 0xfd);
    }

    #[test]
    fn macs_follow_addresses() {
        let mac = mac_for("10.0.9.2".parse().unwrap());
        assert_eq!(mac_text(mac), "02:42:0a:00:09:02");
    }
}
