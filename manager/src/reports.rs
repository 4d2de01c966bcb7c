//! What a node may say about itself in a status report, checked before it
//! becomes a Raft write. A node is trusted to speak for itself only (its
//! certificate says which node it is), not to say anything at all: a
//! report's bridge subnet and WireGuard key are checked here, and a field
//! that fails is dropped (logged) while the rest of the report applies, so
//! a misconfigured node keeps its session.

use ipnetwork::IpNetwork;

use crate::store::{NodeId, State};

/// Why a reported field was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The default-bridge subnet is not a usable private IPv4 range.
    #[error(
        "bridge subnet {0:?} is not usable: give an IPv4 network with a /8 to /30 prefix \
         outside 0.0.0.0/8, loopback, link-local, multicast and reserved space"
    )]
    BridgeSubnet(String),
    /// The WireGuard public key is not 32 bytes of base64.
    #[error("WireGuard public key {0:?} is not 32 bytes of base64")]
    WgKeyFormat(String),
    /// Another node already uses this WireGuard public key.
    #[error("WireGuard public key {key:?} belongs to node {owner}")]
    WgKeyTaken {
        /// The key.
        key: String,
        /// The node that has it.
        owner: NodeId,
    },
    /// CPUs or memory beyond what any machine has.
    #[error("node resources out of range: {nano_cpus} nano-CPUs, {memory_bytes} bytes of memory")]
    Resources {
        /// Reported CPUs, billionths.
        nano_cpus: u64,
        /// Reported memory, bytes.
        memory_bytes: u64,
    },
    /// A version that is not a short version string.
    #[error(
        "version {0:?} is not a version: at most 64 characters of letters, digits and . + - _ ~"
    )]
    Version(String),
}

/// The version a node may report (a semantic version, perhaps with a build
/// suffix): shown in `node ls`, so short and plain. Empty: none reported.
pub fn node_version(v: &str) -> Result<String, ReportError> {
    let ok = v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_' | '~'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(ReportError::Version(v.chars().take(80).collect()))
    }
}

/// The CPUs and memory a node may report: at most what a reservation may
/// name (1024 CPUs, 1 PiB), so sums of reservations cannot overflow.
pub fn node_resources(
    r: &weft_proto::v1::NodeResources,
) -> Result<crate::store::NodeResources, ReportError> {
    use crate::validate::{MAX_MEMORY_BYTES, MAX_NANO_CPUS};
    if r.nano_cpus > MAX_NANO_CPUS || r.memory_bytes > MAX_MEMORY_BYTES {
        return Err(ReportError::Resources {
            nano_cpus: r.nano_cpus,
            memory_bytes: r.memory_bytes,
        });
    }
    Ok(crate::store::NodeResources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    })
}

/// A default-bridge subnet a node may report.
pub fn bridge_subnet(subnet: &str) -> Result<IpNetwork, ReportError> {
    let bad = || ReportError::BridgeSubnet(subnet.to_string());
    let net: IpNetwork = subnet.parse().map_err(|_| bad())?;
    let IpNetwork::V4(v4) = net else {
        return Err(bad());
    };
    let ip = v4.network();
    let unusable = ip.octets()[0] == 0
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] >= 240;
    if unusable || !(8..=30).contains(&v4.prefix()) {
        return Err(bad());
    }
    Ok(net)
}

/// A WireGuard public key node `node` may report: well-formed, and no
/// other node's (a node claiming another's key would draw that node's
/// encrypted traffic to itself once peers re-key).
pub fn wg_public_key(state: &State, node: NodeId, key: &str) -> Result<(), ReportError> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| ReportError::WgKeyFormat(key.to_string()))?;
    if decoded.len() != 32 {
        return Err(ReportError::WgKeyFormat(key.to_string()));
    }
    if let Some(owner) = state
        .nodes
        .values()
        .find(|n| n.id != node && n.wg_public_key == key)
    {
        return Err(ReportError::WgKeyTaken {
            key: key.to_string(),
            owner: owner.id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Node;

    #[test]
    fn a_version_is_short_and_plain() {
        for v in ["", "0.1.0", "1.2.3-rc.1+build.5", "2.0~beta_1"] {
            assert_eq!(node_version(v).as_deref(), Ok(v));
        }
        for v in ["1.0 ", "1.0\n", "<b>", "é", &"9".repeat(65)] {
            assert!(
                matches!(node_version(v), Err(ReportError::Version(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn bridge_subnets() {
        for good in [
            "172.17.0.0/16",
            "10.1.0.0/24",
            "192.168.5.0/30",
            "100.64.0.0/10",
        ] {
            assert!(bridge_subnet(good).is_ok(), "{good}");
        }
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/8",
            "10.0.0.0/7",
            "10.0.0.0/31",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/8",
            "240.0.0.0/8",
            "fd00::/64",
            "nonsense",
            "",
        ] {
            let e = bridge_subnet(bad).unwrap_err();
            assert!(e.to_string().contains("not usable"), "{bad}: {e}");
        }
    }

    #[test]
    fn wireguard_keys_are_well_formed_and_unique() {
        let key = |b: u8| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode([b; 32])
        };
        let mut s = State::default();
        for (id, k) in [(1, key(1)), (2, key(2))] {
            s.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    wg_public_key: k,
                    ..Default::default()
                },
            );
        }
        assert!(wg_public_key(&s, NodeId(1), &key(1)).is_ok(), "its own key");
        assert!(wg_public_key(&s, NodeId(1), &key(3)).is_ok(), "a new key");
        assert_eq!(
            wg_public_key(&s, NodeId(1), &key(2)),
            Err(ReportError::WgKeyTaken {
                key: key(2),
                owner: NodeId(2)
            })
        );
        for bad in ["", "abc", "AAAA", &"A".repeat(44)] {
            assert!(
                matches!(
                    wg_public_key(&s, NodeId(1), bad),
                    Err(ReportError::WgKeyFormat(_))
                ),
                "{bad}"
            );
        }
    }
}
