//! The WireGuard device's peers as the planner wants them, and the pass
//! that sets its key and peers.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use super::{ObservedWgPeer, Op, Pass, PlanError};
use crate::model::DesiredNode;

/// The WireGuard peers `desired` wants, by canonical public key.
pub fn wg_peers(desired: &DesiredNode) -> Result<BTreeMap<String, ObservedWgPeer>, PlanError> {
    let Some(wg) = &desired.wireguard else {
        return Ok(BTreeMap::new());
    };
    let keepalive = (wg.keepalive > 0).then_some(wg.keepalive);
    let mut out = BTreeMap::new();
    for (node, p) in &wg.peers {
        let bad = |reason| PlanError::InvalidWireguard {
            what: format!("peer {node}"),
            reason,
        };
        let key = crate::wg::keys::normalize_public_key(&p.public_key)
            .map_err(|_| bad("public key is not base64 of 32 bytes"))?;
        let host = IpNetwork::from(p.tunnel_ip);
        let peer = ObservedWgPeer {
            endpoint: Some(p.endpoint),
            allowed_ips: BTreeSet::from([host]),
            keepalive,
        };
        if out.insert(key, peer).is_some() {
            return Err(bad("public key shared with another peer"));
        }
    }
    Ok(out)
}

/// The WireGuard key and peers (the device is up by now).
pub(super) fn wireguard_peers(p: &mut Pass, wg_ok: bool) -> Result<(), PlanError> {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    if let Some(cfg) = &desired.wireguard {
        let have = if wg_ok { observed.wg.as_ref() } else { None };
        if let (Some(o), Some(k)) = (have, &observed.wg_key)
            && o.public_key.as_ref() != Some(k)
        {
            ops.push(Op::SetWgKey {
                private_key_path: cfg.private_key_path.clone(),
            });
        }
        let want_peers = wg_peers(desired)?;
        let empty = BTreeMap::new();
        let have_peers = have.map_or(&empty, |o| &o.peers);
        for (key, p) in have_peers {
            if want_peers.get(key) != Some(p) {
                ops.push(Op::RemoveWgPeer {
                    public_key: key.clone(),
                });
            }
        }
        for (key, p) in &want_peers {
            if have_peers.get(key) != Some(p) {
                ops.push(Op::AddWgPeer {
                    public_key: key.clone(),
                    endpoint: p.endpoint.expect("wanted peers have an endpoint"),
                    allowed_ips: p.allowed_ips.iter().copied().collect(),
                    keepalive: p.keepalive,
                });
            }
        }
    }
    Ok(())
}
