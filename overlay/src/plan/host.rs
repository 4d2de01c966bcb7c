//! The daemon namespace's own objects: NAT, the gateway bridge, the
//! WireGuard device, the guard and ports tables, deleted when unwanted.

use super::{NsRef, ObservedKind, Op, Pass, PortsTable, ports_table};
use crate::model::names::WG_DEVICE;

/// Deletes, 5 and 6: NAT, the gateway bridge, the WireGuard device, the
/// guard and ports tables when unwanted. Returns whether the WireGuard
/// device is kept as it is, and the wanted ports table.
pub(super) fn delete_host_objects(
    p: &mut Pass,
    gw_bridge_delete: Option<Op>,
) -> (bool, Option<PortsTable>) {
    let (observed, desired) = (p.observed, p.desired);
    let (fresh, ops) = (&mut p.fresh, &mut p.ops);
    // --- deletes, 5: the gateway bridge and NAT when the node has no gateway.
    if desired.gateway.is_none() && observed.nat.is_some() {
        ops.push(Op::DeleteNat);
    }
    ops.extend(gw_bridge_delete);
    // --- deletes, 6: the WireGuard device when unwanted or mis-shaped
    // (wrong port, its link gone or replaced), and the guard table.
    let wg_link = observed.link(&NsRef::Host, WG_DEVICE);
    let wg_ok = match (&desired.wireguard, &observed.wg) {
        (Some(cfg), Some(o)) => {
            o.listen_port == cfg.listen_port
                && wg_link.is_some()
                && !fresh.contains(&(NsRef::Host, WG_DEVICE.to_owned()))
        }
        _ => false,
    };
    // A `weft-wg0` TUN/TAP link without our device is the one an earlier
    // daemon left in the fd store: CreateWg adopts it if we want one, else
    // it goes (DeleteWg drops the store's copy too). A link of another
    // kind is not ours.
    let stray_wg = desired.wireguard.is_none()
        && wg_link.is_some_and(|l| l.kind == ObservedKind::Other("tun".into()));
    if !wg_ok && (observed.wg.is_some() || stray_wg) {
        ops.push(Op::DeleteWg);
    }
    if desired.wireguard.is_some() && !wg_ok {
        fresh.insert((NsRef::Host, WG_DEVICE.to_owned()));
    }
    if desired.vxlan_allowed_sources.is_none() && observed.guard.is_some() {
        ops.push(Op::DeleteGuard);
    }
    let ports = ports_table(desired);
    if ports.is_none() && observed.ports.is_some() {
        ops.push(Op::DeletePorts);
    }

    (wg_ok, ports)
}
