//! A node's config sent as a change (issue #16): [`diff`] makes a
//! [`NodeConfigDelta`] from the config a session sent before and the new
//! one; [`apply`] makes the new one again on the node.
//!
//! ```text
//!  manager: old, new ─diff─▶ NodeConfigDelta{base_version, head, …} ──session──▶ node
//!  node:    held ─apply(delta)─▶ new   (held.version ≠ base_version, or an unknown network or port: Err → resync)
//! ```
//!
//! Lists in a config are sets keyed by what names an item (a network's or
//! task's ID, a remote endpoint's task, a service's name, a peer's node,
//! a published port's protocol and port).
//! Both ends put them in one order, [`canonicalize`]: the managers project
//! in it, so `apply(old, diff(old, new)) == new`, which the tests check on
//! generated configs.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::v1::{
    NetworkConfig, NetworkDelta, NodeConfig, NodeConfigDelta, PublishedPortConfig, ServiceEndpoint,
    SourcesPart, WgPeerConfig,
};

mod diff;
pub use diff::{diff, head};

/// Why a delta cannot be applied to the config a node holds. Either way
/// the node holds something other than what the manager thinks: it asks
/// for a whole config (a new session).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The node holds another version than the delta's base.
    #[error("the delta is on version {base}, this node holds {held}")]
    Base {
        /// The delta's base version.
        base: u64,
        /// The version the node holds (0: none).
        held: u64,
    },
    /// The delta changes a network the node does not hold.
    #[error("the delta changes network {0}, which this node does not hold")]
    UnknownNetwork(String),
    /// The delta changes a published port (`PROTOCOL/PORT`) the node does
    /// not hold.
    #[error("the delta changes published port {0}, which this node does not hold")]
    UnknownPort(String),
    /// The delta, or a port's change in it, has no head.
    #[error("the delta has no head")]
    NoHead,
    /// A part of a config's VXLAN sources came with no config waiting for
    /// it, or a config or delta came while one still was.
    #[error("the parts of a config's VXLAN sources came out of order")]
    Parts,
    /// A config's VXLAN sources in parts grew past [`MAX_SOURCES`]
    /// addresses or [`MAX_SOURCES_BYTES`].
    #[error(
        "a config's VXLAN sources in parts grew past {MAX_SOURCES} addresses or {MAX_SOURCES_BYTES} bytes"
    )]
    TooManySources,
}

/// The most VXLAN sources a node takes in parts (a cluster holds at most
/// 5,000 nodes; this is a guard against a runaway, not a limit to meet).
pub const MAX_SOURCES: usize = 1 << 16;

/// The most bytes of VXLAN sources (addresses' text) a node takes in parts
/// for one config: a session's receive limit (8 MiB).
pub const MAX_SOURCES_BYTES: usize = crate::SESSION_RECEIVE_LIMIT_BYTES;

/// The encoded size a whole config's VXLAN sources are cut into parts of
/// ([`split_sources`]): under tonic's first send buffer (8 KiB), so no
/// session's buffer grows for them.
pub const SOURCES_PART_BYTES: usize = 6 * 1024;

/// Cuts `whole`'s VXLAN sources into parts of at most `part_bytes`
/// (encoded, about): `whole` keeps the first one, with `sources_follow`
/// set when more follow, and the others are returned in order, the last
/// without `more`. Nothing to cut (or `keep_sources`): none.
pub fn split_sources(whole: &mut NodeConfig, part_bytes: usize) -> Vec<SourcesPart> {
    let cost = |a: &String| a.len() + 2;
    let total: usize = whole.vxlan_allowed_sources.iter().map(cost).sum();
    if whole.keep_sources || total <= part_bytes {
        return Vec::new();
    }
    let mut parts: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0;
    for a in std::mem::take(&mut whole.vxlan_allowed_sources) {
        let last = parts.last_mut().expect("one part at least");
        if size + cost(&a) > part_bytes && !last.is_empty() {
            parts.push(Vec::new());
            size = 0;
        }
        size += cost(&a);
        parts.last_mut().expect("one part at least").push(a);
    }
    let mut parts = parts.into_iter();
    whole.vxlan_allowed_sources = parts.next().unwrap_or_default();
    let rest: Vec<Vec<String>> = parts.collect();
    whole.sources_follow = !rest.is_empty();
    let n = rest.len();
    rest.into_iter()
        .enumerate()
        .map(|(i, sources)| SourcesPart {
            sources,
            more: i + 1 < n,
        })
        .collect()
}

/// A node's side of [`split_sources`]: holds a config whose sources are
/// still coming and gives it back whole once the last part came.
#[derive(Debug, Default)]
pub struct SourceParts {
    pending: Option<NodeConfig>,
    /// The text of the pending config's sources, in bytes.
    bytes: usize,
}

impl SourceParts {
    /// A whole config (after [`with_kept_sources`]): `Ok(Some)` when it is
    /// complete, `Ok(None)` when its sources follow.
    pub fn config(&mut self, mut c: NodeConfig) -> Result<Option<NodeConfig>, DeltaError> {
        if self.pending.is_some() {
            return Err(DeltaError::Parts);
        }
        if !c.sources_follow {
            return Ok(Some(c));
        }
        c.sources_follow = false;
        self.bytes = c.vxlan_allowed_sources.iter().map(String::len).sum();
        self.pending = Some(c);
        Ok(None)
    }

    /// A part of the waiting config's sources: `Ok(Some)` with the config
    /// complete (sources in their canonical order) after the last one.
    pub fn part(&mut self, part: SourcesPart) -> Result<Option<NodeConfig>, DeltaError> {
        let c = self.pending.as_mut().ok_or(DeltaError::Parts)?;
        self.bytes += part.sources.iter().map(String::len).sum::<usize>();
        if c.vxlan_allowed_sources.len() + part.sources.len() > MAX_SOURCES
            || self.bytes > MAX_SOURCES_BYTES
        {
            self.pending = None;
            return Err(DeltaError::TooManySources);
        }
        c.vxlan_allowed_sources.extend(part.sources);
        if part.more {
            return Ok(None);
        }
        let mut c = self.pending.take().ok_or(DeltaError::Parts)?;
        c.vxlan_allowed_sources.sort();
        c.vxlan_allowed_sources.dedup();
        Ok(Some(c))
    }

    /// Whether a config waits for parts (a delta now is out of order).
    pub fn waiting(&self) -> bool {
        self.pending.is_some()
    }
}

/// Puts every set-like list of `c` in the one order both ends use:
/// networks and tasks by ID, remote endpoints by task, services by name
/// with their backends by address, names by (name, address), WireGuard
/// peers by node, VXLAN sources sorted without duplicates, published ports
/// by protocol and port with their backends sorted without duplicates.
/// Image fetches and a task's own lists keep their order (they are sent
/// whole).
///
/// Lists already in order (as the managers project them) are only walked.
pub fn canonicalize(c: &mut NodeConfig) {
    sort_if_needed(&mut c.networks, |a, b| a.id.cmp(&b.id));
    for n in &mut c.networks {
        canonicalize_network(n);
    }
    sort_if_needed(&mut c.tasks, |a, b| a.id.cmp(&b.id));
    if let Some(wg) = &mut c.wireguard {
        sort_if_needed(&mut wg.peers, peer_cmp);
    }
    sort_if_needed(&mut c.vxlan_allowed_sources, Ord::cmp);
    c.vxlan_allowed_sources.dedup();
    sort_if_needed(&mut c.ports, port_cmp);
    for p in &mut c.ports {
        sort_if_needed(&mut p.local, Ord::cmp);
        p.local.dedup();
        sort_if_needed(&mut p.remote, Ord::cmp);
        p.remote.dedup();
    }
}

/// Published ports in their canonical order: by protocol, then port (the
/// key a node has one of each).
pub fn port_cmp(a: &PublishedPortConfig, b: &PublishedPortConfig) -> std::cmp::Ordering {
    (&a.protocol, a.port).cmp(&(&b.protocol, b.port))
}

/// `delta` for a node that takes its ports whole in the head (an older
/// node, `SessionRequest.accepts_port_deltas` false): `ports`, the new
/// config's, in place of their change.
pub fn with_ports_whole(
    mut delta: NodeConfigDelta,
    ports: Vec<PublishedPortConfig>,
) -> NodeConfigDelta {
    if let Some(h) = &mut delta.head {
        h.ports = ports;
    }
    delta.ports_as_changes = false;
    delta.ports_set.clear();
    delta.ports_changed.clear();
    delta.ports_removed.clear();
    delta
}

fn canonicalize_network(n: &mut NetworkConfig) {
    sort_if_needed(&mut n.remote, |a, b| a.task_id.cmp(&b.task_id));
    sort_if_needed(&mut n.services, |a, b| a.name.cmp(&b.name));
    for s in &mut n.services {
        sort_addrs(&mut s.backends);
    }
    sort_if_needed(&mut n.names, |a, b| (&a.name, &a.ip).cmp(&(&b.name, &b.ip)));
}

/// A stable sort of `v` by `cmp`, skipped when `v` is in order already
/// (the sort itself takes a buffer as long as the list, sorted or not).
fn sort_if_needed<T>(v: &mut [T], cmp: impl Fn(&T, &T) -> std::cmp::Ordering) {
    if !v.is_sorted_by(|a, b| cmp(a, b).is_le()) {
        v.sort_by(cmp);
    }
}

/// Addresses in numeric order (text that is no address after them).
fn sort_addrs(v: &mut [String]) {
    // Sorting with a cached key makes a key per item, sorted or not.
    if !v.is_sorted_by(|a, b| addr_cmp(a, b).is_le()) {
        v.sort_by_cached_key(|s| (s.parse::<IpAddr>().map_err(|_| s.clone()), s.clone()));
    }
}

/// [`sort_addrs`]'s order: addresses numerically, then text that is no
/// address, by text.
fn addr_cmp(a: &String, b: &String) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    // Most pairs a diff compares are the same address.
    if a == b {
        return Equal;
    }
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Less,
        (Err(_), Ok(_)) => Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Peers by node ID, numerically (IDs are numbers on the wire), then by
/// text.
fn peer_cmp(a: &WgPeerConfig, b: &WgPeerConfig) -> std::cmp::Ordering {
    let number = |p: &WgPeerConfig| p.node_id.parse::<u64>().ok();
    number(a)
        .cmp(&number(b))
        .then_with(|| a.node_id.cmp(&b.node_id))
}

/// A digest of a config's VXLAN sources (sorted, as [`canonicalize`]
/// leaves them): SHA-256 over each address and a newline.
pub fn sources_digest(sources: &[String]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for a in sources {
        h.update(a.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_vec()
}

/// `whole` (a session's first config) as the node holds it: with
/// `keep_sources`, the VXLAN sources of `held`, which the node said it has.
pub fn with_kept_sources(mut whole: NodeConfig, held: Option<&NodeConfig>) -> NodeConfig {
    if whole.keep_sources {
        whole.keep_sources = false;
        whole.vxlan_allowed_sources = held
            .map(|h| h.vxlan_allowed_sources.clone())
            .unwrap_or_default();
    }
    whole
}

/// The config `delta` makes of `held` (the config the node holds).
pub fn apply(held: &NodeConfig, delta: &NodeConfigDelta) -> Result<NodeConfig, DeltaError> {
    let mut c = held.clone();
    apply_in_place(&mut c, delta)?;
    Ok(c)
}

/// [`apply`] to the config `held` in place, without a copy of its lists:
/// what is kept is moved, not cloned, and a list is sorted once at the
/// end (a list in canonical order with a few items added sorts in one
/// pass). A node with 5,000 VXLAN sources took a copy and a tree of them
/// for every delta, even one that added a single address. On an error
/// `held` is left as it was.
pub fn apply_in_place(held: &mut NodeConfig, delta: &NodeConfigDelta) -> Result<(), DeltaError> {
    if held.version != delta.base_version {
        return Err(DeltaError::Base {
            base: delta.base_version,
            held: held.version,
        });
    }
    let head = delta.head.as_ref().ok_or(DeltaError::NoHead)?;
    let removed: HashSet<&str> = delta.networks_removed.iter().map(String::as_str).collect();
    let known: HashSet<&str> = (held.networks.iter())
        .map(|n| n.id.as_str())
        .filter(|id| !removed.contains(id))
        .chain(delta.networks_set.iter().map(|n| n.id.as_str()))
        .collect();
    if let Some(nd) = (delta.networks_changed.iter()).find(|nd| !known.contains(nd.id.as_str())) {
        return Err(DeltaError::UnknownNetwork(nd.id.clone()));
    }
    if delta.ports_as_changes {
        check_ports(held, delta)?;
    }
    let mut c = head.clone();

    let mut nets = std::mem::take(&mut held.networks);
    nets.retain(|n| !removed.contains(n.id.as_str()));
    nets.extend(delta.networks_set.iter().cloned());
    c.networks = last_by_key(nets, |n| n.id.as_str());
    if !delta.networks_changed.is_empty() {
        let at: HashMap<String, usize> = (c.networks.iter().enumerate())
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        for nd in &delta.networks_changed {
            if let Some(&i) = at.get(&nd.id) {
                apply_network(&mut c.networks[i], nd);
            }
        }
    }

    c.tasks = apply_keyed(
        std::mem::take(&mut held.tasks),
        &delta.tasks_set,
        &delta.tasks_removed,
        |t| t.id.as_str(),
    );
    if let Some(wg) = &mut c.wireguard {
        let held_peers = held.wireguard.take().map(|w| w.peers).unwrap_or_default();
        wg.peers = apply_keyed(
            held_peers,
            &delta.wg_peers_set,
            &delta.wg_peers_removed,
            |p| p.node_id.as_str(),
        );
    }
    let mut sources = std::mem::take(&mut held.vxlan_allowed_sources);
    remove_all(&mut sources, &delta.sources_removed, String::as_str);
    sources.extend(delta.sources_added.iter().cloned());
    c.vxlan_allowed_sources = sources;
    if delta.ports_as_changes {
        c.ports = apply_ports(std::mem::take(&mut held.ports), delta);
    }
    // Sorts what is out of order and drops repeated sources.
    canonicalize(&mut c);
    *held = c;
    Ok(())
}

/// A port's key as [`port_cmp`] orders it.
fn port_key(p: &PublishedPortConfig) -> (&str, u32) {
    (p.protocol.as_str(), p.port)
}

/// `Err` when a port `delta` changes is one `held` will not have.
fn check_ports(held: &NodeConfig, delta: &NodeConfigDelta) -> Result<(), DeltaError> {
    let removed: HashSet<(&str, u32)> = (delta.ports_removed.iter())
        .map(|k| (k.protocol.as_str(), k.port))
        .collect();
    let known: HashSet<(&str, u32)> = (held.ports.iter().map(port_key))
        .filter(|k| !removed.contains(k))
        .chain(delta.ports_set.iter().map(port_key))
        .collect();
    for pd in &delta.ports_changed {
        let h = pd.head.as_ref().ok_or(DeltaError::NoHead)?;
        if !known.contains(&port_key(h)) {
            return Err(DeltaError::UnknownPort(format!(
                "{}/{}",
                h.protocol, h.port
            )));
        }
    }
    Ok(())
}

/// `held` ports changed by `delta` ([`check_ports`] said it can), one per
/// key; sorted by [`canonicalize`] after.
fn apply_ports(
    mut held: Vec<PublishedPortConfig>,
    delta: &NodeConfigDelta,
) -> Vec<PublishedPortConfig> {
    if !delta.ports_removed.is_empty() {
        let removed: HashSet<(&str, u32)> = (delta.ports_removed.iter())
            .map(|k| (k.protocol.as_str(), k.port))
            .collect();
        held.retain(|p| !removed.contains(&port_key(p)));
    }
    held.extend(delta.ports_set.iter().cloned());
    let mut ports = last_by(held, port_cmp);
    let at: HashMap<(String, u32), usize> = (ports.iter().enumerate())
        .map(|(i, p)| ((p.protocol.clone(), p.port), i))
        .collect();
    for pd in &delta.ports_changed {
        let Some(h) = &pd.head else { continue };
        let Some(&i) = at.get(&(h.protocol.clone(), h.port)) else {
            continue;
        };
        let mut remote = std::mem::take(&mut ports[i].remote);
        remove_all(&mut remote, &pd.remote_removed, String::as_str);
        remote.extend(pd.remote_added.iter().cloned());
        ports[i] = PublishedPortConfig {
            remote,
            ..h.clone()
        };
    }
    ports
}

fn apply_network(n: &mut NetworkConfig, d: &NetworkDelta) {
    n.remote = apply_keyed(
        std::mem::take(&mut n.remote),
        &d.remote_set,
        &d.remote_removed,
        |r| r.task_id.as_str(),
    );
    let mut services = last_by_key(std::mem::take(&mut n.services), |s| s.name.as_str());
    remove_all(&mut services, &d.services_removed, |s| s.name.as_str());
    let mut at: HashMap<String, usize> = (services.iter().enumerate())
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    for sd in &d.services_changed {
        let i = *at.entry(sd.name.clone()).or_insert_with(|| {
            services.push(ServiceEndpoint::default());
            services.len() - 1
        });
        let s = &mut services[i];
        s.name = sd.name.clone();
        s.vip = sd.vip.clone();
        s.vip6 = sd.vip6.clone();
        remove_all(&mut s.backends, &sd.backends_removed, String::as_str);
        s.backends.extend(sd.backends_added.iter().cloned());
        // Stable, and one pass over a list in order with a few added: no
        // key made per address.
        if !s.backends.is_sorted_by(|a, b| addr_cmp(a, b).is_le()) {
            s.backends.sort_by(addr_cmp);
        }
        s.backends.dedup();
    }
    n.services = last_by_key(services, |s| s.name.as_str());
    let mut names = std::mem::take(&mut n.names);
    if !d.names_removed.is_empty() {
        let gone: HashSet<(&str, &str)> = (d.names_removed.iter())
            .map(|r| (r.name.as_str(), r.ip.as_str()))
            .collect();
        names.retain(|r| !gone.contains(&(r.name.as_str(), r.ip.as_str())));
    }
    names.extend(d.names_added.iter().cloned());
    sort_if_needed(&mut names, |a, b| (&a.name, &a.ip).cmp(&(&b.name, &b.ip)));
    names.dedup_by(|a, b| a.name == b.name && a.ip == b.ip);
    n.names = names;
}

/// `items` without those whose key is in `gone`.
fn remove_all<T>(items: &mut Vec<T>, gone: &[String], key: impl Fn(&T) -> &str) {
    if gone.is_empty() {
        return;
    }
    let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
    items.retain(|t| !gone.contains(key(t)));
}

/// `held` without the `removed` keys, with `set` in place of the items of
/// their keys (or added), one item per key.
fn apply_keyed<T: Clone>(
    mut held: Vec<T>,
    set: &[T],
    removed: &[String],
    key: impl Fn(&T) -> &str,
) -> Vec<T> {
    remove_all(&mut held, removed, &key);
    held.extend(set.iter().cloned());
    last_by_key(held, key)
}

/// `items` in order of `key`, the last of the items of one key kept.
fn last_by_key<T>(items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<T> {
    last_by(items, |a, b| key(a).cmp(key(b)))
}

/// `items` in the order `cmp` gives, the last of the items it finds equal
/// kept.
fn last_by<T>(mut items: Vec<T>, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<T> {
    if !items.is_sorted_by(|a, b| cmp(a, b).is_lt()) {
        // Stable: among items of one key, the last stays last.
        items.sort_by(&cmp);
        items.dedup_by(|later, kept| {
            let same = cmp(later, kept).is_eq();
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
    }
    items
}

#[cfg(test)]
mod tests;
