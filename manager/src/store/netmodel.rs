//! The parts of the networking model beyond overlays: node-local bridge
//! networks (the per-node default `bridge` and user bridges), the `host`
//! and `none` modes, live connect/disconnect, published ports and the
//! `ingress` routing-mesh network. Everything here runs inside
//! [`State::apply`], so it is deterministic like the rest of the store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::ipam;
use super::types::*;
use super::{State, StoreError};

/// Names that are not networks of the store: `host` and `none` are modes,
/// `bridge` is each node's default bridge, `ingress` the routing mesh.
pub const RESERVED_NETWORK_NAMES: [&str; 4] = ["bridge", "host", "none", "ingress"];

/// The name of every node's default bridge network.
pub const DEFAULT_BRIDGE: &str = "bridge";

/// The name of the routing-mesh network.
pub const INGRESS_NETWORK: &str = "ingress";

/// The default subnet of the routing-mesh network (`weft init
/// --ingress-subnet` and `weft cluster update --ingress-subnet` pick another).
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";

/// Ports handed out when a publish names no port (`-p 80`,
/// `--publish target=80`): the range Kubernetes uses for node ports.
pub const PUBLISHED_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Ports a published port may never take: weft's own control port.
pub const CONTROL_PORT: u16 = 4377;

/// The ID of the cluster's ingress network: derived from the cluster ID so
/// every manager computes the same one at apply time.
pub fn ingress_network_id(cluster_id: &str) -> String {
    let h = ipam::fnv1a(cluster_id.bytes().chain(*b"/ingress"));
    format!("{h:016x}")
}

/// The first free `ethN` among `used`.
pub fn next_ifname<'a>(used: impl IntoIterator<Item = &'a str>) -> String {
    let used: BTreeSet<&str> = used.into_iter().collect();
    (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !used.contains(n.as_str()))
        .expect("an unused name exists")
}

/// Who holds a published port, for error messages.
struct Holder {
    owner: String,
    node: Option<NodeId>,
}

impl State {
    /// The network a standalone task on `node` means by `what`: that
    /// node's local networks first (so `bridge` is its own default bridge),
    /// then swarm networks.
    pub fn resolve_network_on(&self, what: &str, node: NodeId) -> Result<&Network, StoreError> {
        if let Some(n) = self
            .networks
            .values()
            .find(|n| n.node == Some(node) && (n.name == what || n.id == what))
        {
            return Ok(n);
        }
        let n = self.resolve_network(what)?;
        if n.visible_on(node) {
            Ok(n)
        } else {
            Err(StoreError::NetworkNotFound(what.to_string()))
        }
    }

    /// A node's default bridge network.
    pub fn default_bridge(&self, node: NodeId) -> Option<&Network> {
        self.networks
            .values()
            .find(|n| n.node == Some(node) && n.name == DEFAULT_BRIDGE)
    }

    /// The cluster's ingress network, if some service publishes through it.
    pub fn ingress_network(&self) -> Option<&Network> {
        // Its ID follows from the cluster's (`ensure_ingress` is the one
        // place it is made): a lookup, not a walk over every network (a
        // default bridge per node; every projection asks).
        let id = ingress_network_id(&self.cluster.as_ref()?.id);
        self.networks.get(&id).filter(|n| n.ingress)
    }

    /// Creates or updates `node`'s default bridge with `subnet` (its
    /// daemon's `--bridge-subnet`). A changed subnet is refused while tasks
    /// use the bridge.
    pub(crate) fn set_node_bridge(
        &mut self,
        node: NodeId,
        id: &str,
        subnet: IpNetwork,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.node(node)?;
        let gateway = ipam::first_host(&subnet).ok_or_else(|| {
            StoreError::InvalidNetwork(format!("subnet {subnet} is too small: use a /30 or larger"))
        })?;
        if let Some(old) = self.default_bridge(node) {
            if old.subnet == subnet {
                return Ok(());
            }
            let users = self
                .tasks
                .values()
                .filter(|t| t.attachments.iter().any(|a| a.network == old.id))
                .count();
            if users > 0 {
                return Err(StoreError::NetworkInUse {
                    name: DEFAULT_BRIDGE.into(),
                    tasks: users,
                });
            }
            let old_id = old.id.clone();
            let net = self.networks.get_mut(&old_id).expect("found above");
            net.subnet = subnet;
            net.gateway = gateway;
            net.ip_range = None;
            return Ok(());
        }
        if self.networks.contains_key(id) {
            return Err(StoreError::NetworkExists(id.to_string()));
        }
        self.networks.insert(
            id.to_string(),
            Network {
                ipv6: None,
                id: id.to_string(),
                name: DEFAULT_BRIDGE.into(),
                driver: "bridge".into(),
                subnet,
                gateway,
                ip_range: None,
                vni: 0,
                internal: false,
                attachable: true,
                mtu: None,
                labels: Default::default(),
                created_at_ms: now_ms,
                encrypted: false,
                node: Some(node),
                ingress: false,
                node_endpoints: Default::default(),
                node_endpoints6: Default::default(),
                last_allocated: None,
                aux_addresses: Default::default(),
            },
        );
        Ok(())
    }

    /// Checks a bridge-network spec: a node, no reserved name, no
    /// overlay-only options.
    pub(crate) fn check_local_spec(&self, spec: &NetworkSpec) -> Result<NodeId, StoreError> {
        let node = spec.node.ok_or_else(|| {
            StoreError::InvalidNetwork(
                "a bridge network is local to one node: create it through that node's daemon"
                    .into(),
            )
        })?;
        self.node(node)?;
        if spec.encrypted {
            return Err(StoreError::InvalidNetwork(
                "--opt encrypted is for overlay networks; a bridge network never leaves its node"
                    .into(),
            ));
        }
        Ok(node)
    }

    /// Every node gets an address on a new ingress network; a node that
    /// joins later gets one in [`State::add_ingress_endpoint`].
    fn ensure_ingress(&mut self, now_ms: u64) -> Result<String, StoreError> {
        if let Some(n) = self.ingress_network() {
            return Ok(n.id.clone());
        }
        let cluster = self.cluster.as_ref().ok_or(StoreError::NotInitialised)?;
        let id = ingress_network_id(&cluster.id);
        let subnet = cluster.settings.ingress_subnet();
        if let Some(o) = self
            .networks
            .values()
            .find(|n| n.node.is_none() && ipam::overlaps(&n.subnet, &subnet))
        {
            return Err(StoreError::SubnetOverlap {
                subnet: subnet.to_string(),
                other: o.subnet.to_string(),
                network: o.name.clone(),
            });
        }
        if self.networks.values().any(|n| n.name == INGRESS_NETWORK) {
            return Err(StoreError::NetworkExists(INGRESS_NETWORK.into()));
        }
        let used: BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
        let vni = ipam::next_vni(&used).ok_or(StoreError::VniExhausted)?;
        let gateway = ipam::first_host(&subnet).ok_or_else(|| {
            StoreError::InvalidNetwork(format!("ingress subnet {subnet} has no host addresses"))
        })?;
        let ipv6 = match cluster.settings.ingress_subnet6 {
            Some(s6) => {
                if let Some((o, other)) = self.v6_overlap(&s6) {
                    return Err(StoreError::SubnetOverlap {
                        subnet: s6.to_string(),
                        other: other.to_string(),
                        network: o.to_owned(),
                    });
                }
                Some(Subnet6 {
                    subnet: s6,
                    gateway: ipam::first_host(&s6).ok_or_else(|| {
                        StoreError::InvalidNetwork(format!(
                            "ingress subnet {s6} has no host addresses"
                        ))
                    })?,
                    ip_range: None,
                    last_allocated: None,
                })
            }
            None => None,
        };
        let subnet6 = ipv6.as_ref().map(|v6| v6.subnet);
        self.networks.insert(
            id.clone(),
            Network {
                ipv6,
                id: id.clone(),
                name: INGRESS_NETWORK.into(),
                driver: "overlay".into(),
                subnet,
                gateway,
                ip_range: None,
                vni,
                internal: false,
                attachable: false,
                mtu: None,
                labels: Default::default(),
                created_at_ms: now_ms,
                encrypted: false,
                node: None,
                ingress: true,
                node_endpoints: Default::default(),
                node_endpoints6: Default::default(),
                last_allocated: None,
                aux_addresses: Default::default(),
            },
        );
        // Every node's endpoint, lowest free addresses first, in one pass
        // per family.
        let taken = self.taken_on(&id);
        let mut endpoints = [BTreeMap::new(), BTreeMap::new()];
        for (family, s) in std::iter::once(subnet).chain(subnet6).enumerate() {
            let mut free = ipam::free_ips(&s, None, &taken);
            for n in self.nodes.keys() {
                let ip = free
                    .next()
                    .ok_or_else(|| StoreError::NetworkFull(INGRESS_NETWORK.into()))?;
                endpoints[family].insert(*n, ip);
            }
        }
        let [v4, v6] = endpoints;
        let net = self.networks.get_mut(&id).expect("inserted above");
        net.node_endpoints = v4;
        net.node_endpoints6 = v6;
        Ok(id)
    }

    /// Moves the ingress subnet of either family, or gives the routing mesh
    /// IPv6 (`weft cluster update --ingress-subnet`). Refused while a
    /// service publishes a port through the routing mesh; an unused ingress
    /// network is dropped and comes back on the new subnets with the next
    /// ingress publish. Checks everything before changing anything.
    pub(crate) fn set_ingress_subnets(
        &mut self,
        v4: Option<IpNetwork>,
        v6: Option<IpNetwork>,
    ) -> Result<(), StoreError> {
        let settings = &self
            .cluster
            .as_ref()
            .ok_or(StoreError::NotInitialised)?
            .settings;
        let moves4 = v4.filter(|s| *s != settings.ingress_subnet());
        let moves6 = v6.filter(|s| Some(*s) != settings.ingress_subnet6);
        if moves4.is_none() && moves6.is_none() {
            // Records the default explicitly, as before.
            if let (Some(s), Some(c)) = (v4, self.cluster.as_mut()) {
                c.settings.ingress_subnet = Some(s);
            }
            return Ok(());
        }
        if let Some(s) = moves4 {
            check_ingress_subnet(&s, settings).map_err(StoreError::InvalidNetwork)?;
        }
        if let Some(s) = moves6 {
            check_ingress_subnet6(&s).map_err(StoreError::InvalidNetwork)?;
        }
        if let Some(s) = self
            .services
            .values()
            .find(|s| s.ports.iter().any(|p| p.mode == PublishMode::Ingress))
        {
            return Err(StoreError::InvalidNetwork(format!(
                "service {} publishes ports through the ingress network; remove its ingress ports \
                 (or the service) before moving the ingress subnet",
                s.spec.name
            )));
        }
        if let Some(net) = self.ingress_network()
            && let Some(t) = self
                .tasks
                .values()
                .find(|t| t.attachments.iter().any(|a| a.network == net.id))
        {
            return Err(StoreError::InvalidNetwork(format!(
                "task {} is still on the ingress network; move the ingress subnet once it has \
                 stopped",
                t.name
            )));
        }
        if let Some(subnet) = moves4
            && let Some(o) = self
                .networks
                .values()
                .find(|n| !n.ingress && ipam::overlaps(&n.subnet, &subnet))
        {
            return Err(StoreError::SubnetOverlap {
                subnet: subnet.to_string(),
                other: o.subnet.to_string(),
                network: o.name.clone(),
            });
        }
        if let Some(subnet) = moves6
            && let Some((name, other)) = self.v6_overlap(&subnet)
        {
            return Err(StoreError::SubnetOverlap {
                subnet: subnet.to_string(),
                other: other.to_string(),
                network: name.to_owned(),
            });
        }
        self.networks.retain(|_, n| !n.ingress);
        if let Some(c) = self.cluster.as_mut() {
            if let Some(s) = v4 {
                c.settings.ingress_subnet = Some(s);
            }
            if let Some(s) = v6 {
                c.settings.ingress_subnet6 = Some(s);
            }
        }
        Ok(())
    }

    /// The first network other than the ingress one with an IPv6 subnet
    /// overlapping `subnet`: its name and that subnet.
    fn v6_overlap(&self, subnet: &IpNetwork) -> Option<(&str, IpNetwork)> {
        self.networks.values().filter(|n| !n.ingress).find_map(|n| {
            (n.ipv6.as_ref().map(|v6| v6.subnet))
                .into_iter()
                .chain(Some(n.subnet).filter(|s| s.is_ipv6()))
                .find(|o| ipam::overlaps(o, subnet))
                .map(|o| (n.name.as_str(), o))
        })
    }

    /// Gives `node` its address on the ingress network, if there is one.
    pub(crate) fn add_ingress_endpoint(&mut self, node: NodeId) -> Result<(), StoreError> {
        let Some(net) = self.ingress_network() else {
            return Ok(());
        };
        if net.node_endpoints.contains_key(&node) {
            return Ok(());
        }
        let id = net.id.clone();
        let taken = self.taken_on(&id);
        let net = &self.networks[&id];
        let full = || StoreError::NetworkFull(net.name.clone());
        let ip = ipam::next_ip(&net.subnet, None, &taken).ok_or_else(full)?;
        let ip6 = match &net.ipv6 {
            Some(v6) => Some(ipam::next_ip(&v6.subnet, None, &taken).ok_or_else(full)?),
            None => None,
        };
        let net = self.networks.get_mut(&id).expect("found above");
        net.node_endpoints.insert(node, ip);
        if let Some(ip6) = ip6 {
            net.node_endpoints6.insert(node, ip6);
        }
        Ok(())
    }

    /// Drops what belonged to a removed node: its local networks and its
    /// ingress endpoint.
    pub(crate) fn forget_node_networks(&mut self, node: NodeId) {
        self.networks.retain(|_, n| n.node != Some(node));
        for n in self.networks.values_mut() {
            n.node_endpoints.remove(&node);
            n.node_endpoints6.remove(&node);
        }
    }

    /// Every published port in use, with its holder: services' ports hold
    /// on every node, tasks' ports on their node.
    fn published(&self, skip_service: Option<&str>) -> Vec<(PortProto, u16, Holder)> {
        let mut out = Vec::new();
        for s in self.services.values() {
            if Some(s.id.as_str()) == skip_service {
                continue;
            }
            for p in &s.ports {
                out.push((
                    p.proto,
                    p.published,
                    Holder {
                        owner: format!("service {}", s.spec.name),
                        node: None,
                    },
                ));
            }
        }
        for t in self.tasks.values() {
            for p in &t.ports {
                out.push((
                    p.proto,
                    p.published,
                    Holder {
                        owner: format!("task {}", t.name),
                        node: Some(t.node),
                    },
                ));
            }
        }
        out
    }

    /// [`Command::SetTaskPorts`]: a Docker endpoint's task on `node`, with
    /// no ports yet and a way out (a non-internal network), gets `wanted`
    /// published on its node.
    pub(crate) fn set_task_ports(
        &mut self,
        task: &str,
        node: NodeId,
        wanted: &[PortRequest],
    ) -> Result<(), StoreError> {
        let t = self
            .tasks
            .get(task)
            .ok_or_else(|| StoreError::TaskNotFound(task.to_owned()))?;
        if t.node != node {
            return Err(StoreError::NotYourTask(task.to_owned()));
        }
        let docker = t
            .spec
            .external
            .as_ref()
            .is_some_and(|e| e.runtime == super::ExternalRuntime::Docker);
        if !docker || !t.ports.is_empty() {
            return Err(StoreError::InvalidPort(
                "only a Docker endpoint's ports are published after its task is made, and once"
                    .into(),
            ));
        }
        if t.gateway_ip.is_none() {
            return Err(StoreError::InvalidPort(
                "publishing ports needs a non-internal network".into(),
            ));
        }
        let mapped = self.allocate_task_ports(wanted, node)?;
        if let Some(t) = self.tasks.get_mut(task) {
            t.ports = mapped;
        }
        Ok(())
    }

    /// A task's `wanted` ports, published on its `node` only (host mode).
    pub(crate) fn allocate_task_ports(
        &self,
        wanted: &[PortRequest],
        node: NodeId,
    ) -> Result<Vec<PortMapping>, StoreError> {
        let host: Vec<PortRequest> = wanted
            .iter()
            .map(|p| PortRequest {
                mode: PublishMode::Host,
                ..*p
            })
            .collect();
        self.allocate_ports(&host, Some(node), None, &[])
    }

    /// Allocates `wanted` on `node` (a task's ports) or on every node
    /// (`node` = `None`: a service's ports), skipping `skip_service`'s own
    /// ports (an update keeps them).
    pub(crate) fn allocate_ports(
        &self,
        wanted: &[PortRequest],
        node: Option<NodeId>,
        skip_service: Option<&str>,
        keep: &[PortMapping],
    ) -> Result<Vec<PortMapping>, StoreError> {
        let settings = &self
            .cluster
            .as_ref()
            .ok_or(StoreError::NotInitialised)?
            .settings;
        let held = self.published(skip_service);
        let mut mine: Vec<PortMapping> = Vec::new();
        let clash = |proto: PortProto, port: u16, mine: &[PortMapping]| -> Option<String> {
            if mine.iter().any(|m| m.proto == proto && m.published == port) {
                return Some("this same request".into());
            }
            held.iter()
                .find(|(p, n, h)| {
                    *p == proto
                        && *n == port
                        && (node.is_none() || h.node.is_none() || h.node == node)
                })
                .map(|(_, _, h)| h.owner.clone())
        };
        let reserved = |proto: PortProto, port: u16| -> Option<&'static str> {
            match (proto, port) {
                (PortProto::Tcp, CONTROL_PORT) => Some("weft's control port"),
                (PortProto::Udp, p) if p == settings.data_path_port => Some("the VXLAN port"),
                (PortProto::Udp, p) if p == settings.wg_port => Some("the WireGuard port"),
                _ => None,
            }
        };
        for w in wanted {
            if w.target == 0 {
                return Err(StoreError::InvalidPort(format!(
                    "target port {} is outside 1-65535",
                    w.target
                )));
            }
            let port = if w.published != 0 {
                w.published
            } else if let Some(k) = keep
                .iter()
                .find(|k| k.proto == w.proto && k.target == w.target && k.mode == w.mode)
                .filter(|k| clash(k.proto, k.published, &mine).is_none())
            {
                k.published
            } else {
                PUBLISHED_PORT_RANGE
                    .clone()
                    .find(|p| {
                        reserved(w.proto, *p).is_none() && clash(w.proto, *p, &mine).is_none()
                    })
                    .ok_or(StoreError::PortsExhausted)?
            };
            if let Some(what) = reserved(w.proto, port) {
                return Err(StoreError::InvalidPort(format!(
                    "port {port}/{} is {what}; publish another port",
                    w.proto.as_str()
                )));
            }
            if let Some(owner) = clash(w.proto, port, &mine) {
                return Err(StoreError::PortInUse {
                    port,
                    proto: w.proto.as_str().into(),
                    owner,
                });
            }
            mine.push(PortMapping {
                proto: w.proto,
                published: port,
                target: w.target,
                mode: w.mode,
            });
        }
        Ok(mine)
    }

    /// A service's ports after create/update, and the ingress network they
    /// need (created on first use). Refused, it changes nothing; only the
    /// first ingress publish changes the state (and is made on a copy,
    /// the one time the whole state is cloned).
    pub(crate) fn service_ports(
        &mut self,
        spec: &ServiceSpec,
        id: &str,
        keep: &[PortMapping],
        now_ms: u64,
    ) -> Result<Vec<PortMapping>, StoreError> {
        if spec.endpoint_mode == EndpointMode::Dnsrr
            && spec.ports.iter().any(|p| p.mode == PublishMode::Ingress)
        {
            return Err(StoreError::InvalidPort(
                "ingress-published ports need a virtual IP: use --endpoint-mode vip, or publish with mode=host"
                    .into(),
            ));
        }
        let ports = self.allocate_ports(&spec.ports, None, Some(id), keep)?;
        if ports.iter().any(|p| p.mode == PublishMode::Ingress) && self.ingress_network().is_none()
        {
            // Creating it may fail half-way (no address left for a node).
            let mut next = self.clone();
            next.ensure_ingress(now_ms)?;
            *self = next;
        }
        Ok(ports)
    }

    /// Attaches a running standalone task to one more network.
    pub(crate) fn connect_task(
        &mut self,
        task: &str,
        network: &str,
        (ip, ip6): (Option<IpAddr>, Option<IpAddr>),
        aliases: &[String],
    ) -> Result<(), StoreError> {
        let t = self
            .tasks
            .get(task)
            .ok_or_else(|| StoreError::TaskNotFound(task.to_string()))?;
        let net = self
            .networks
            .get(network)
            .ok_or_else(|| StoreError::NetworkNotFound(network.to_string()))?;
        match t.network_mode {
            NetworkMode::Attached => {}
            NetworkMode::Host | NetworkMode::None => {
                return Err(StoreError::NetworkMode(format!(
                    "task {} uses --network {}; it cannot join other networks",
                    t.name,
                    if t.network_mode == NetworkMode::Host {
                        "host"
                    } else {
                        "none"
                    }
                )));
            }
        }
        if t.service.is_some() {
            return Err(StoreError::NetworkMode(format!(
                "task {} belongs to a service: change the service's networks with `weft service update --network-add`",
                t.name
            )));
        }
        if t.attachments.iter().any(|a| a.network == net.id) {
            return Err(StoreError::AlreadyConnected {
                task: t.name.clone(),
                network: net.name.clone(),
            });
        }
        if !net.visible_on(t.node) {
            return Err(StoreError::NetworkNotFound(network.to_string()));
        }
        if !net.attachable || net.ingress {
            return Err(StoreError::NotAttachable(net.name.clone()));
        }
        let (ip, ip6) = wants(net, ip, ip6);
        let addr = self.pick_address(net, ip)?;
        let addr6 = self.pick_address6(net, ip6)?;
        let ifname = next_ifname(t.attachments.iter().map(|a| a.ifname.as_str()));
        let attachment = Attachment {
            network: network.to_string(),
            ip: addr,
            ifname,
            aliases: aliases.to_vec(),
            ip6: addr6,
        };
        self.check_task_aliases(std::slice::from_ref(&attachment))?;
        let internal = net.internal;
        let node = t.node;
        let needs_gateway = t.gateway_ip.is_none() && !internal;
        let gateway = if needs_gateway {
            Some(self.gateway_address(node)?)
        } else {
            None
        };
        let t = self.tasks.get_mut(task).expect("found above");
        t.attachments.push(attachment);
        if gateway.is_some() {
            t.gateway_ip = gateway;
        }
        if ip.is_none() {
            self.allocated(network, addr);
        }
        if let (None, Some(a6)) = (ip6, addr6) {
            self.allocated(network, a6);
        }
        Ok(())
    }

    /// Detaches a standalone task from one of its networks.
    pub(crate) fn disconnect_task(&mut self, task: &str, network: &str) -> Result<(), StoreError> {
        let t = self
            .tasks
            .get(task)
            .ok_or_else(|| StoreError::TaskNotFound(task.to_string()))?;
        let net_name = self
            .networks
            .get(network)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| network.to_string());
        if t.service.is_some() {
            return Err(StoreError::NetworkMode(format!(
                "task {} belongs to a service: change the service's networks with `weft service update --network-rm`",
                t.name
            )));
        }
        if !t.attachments.iter().any(|a| a.network == network) {
            return Err(StoreError::NotConnected {
                task: t.name.clone(),
                network: net_name,
            });
        }
        let t = self.tasks.get_mut(task).expect("found above");
        t.attachments.retain(|a| a.network != network);
        Ok(())
    }

    /// The address of an endpoint on `net`: `want` if it is free, else the
    /// next in serial order (requests as [`wants`] makes them).
    pub(crate) fn pick_address(
        &self,
        net: &Network,
        want: Option<IpAddr>,
    ) -> Result<IpAddr, StoreError> {
        let taken = self.taken_on(&net.id);
        let range = (&net.subnet, net.ip_range.as_ref(), net.last_allocated);
        pick_in(&net.name, range, &taken, want)
    }

    /// Moves `network`'s serial allocation past `ip`, handed out unasked
    /// (that of its family).
    pub(crate) fn allocated(&mut self, network: &str, ip: IpAddr) {
        if let Some(n) = self.networks.get_mut(network) {
            match (&mut n.ipv6, ip) {
                (Some(v6), IpAddr::V6(_)) if v6.subnet.contains(ip) => v6.last_allocated = Some(ip),
                _ => n.last_allocated = Some(ip),
            }
        }
    }

    /// The IPv6 address of an endpoint on `net`: `want` if it is free,
    /// else the next in serial order; `None` on a network without IPv6.
    pub(crate) fn pick_address6(
        &self,
        net: &Network,
        want: Option<IpAddr>,
    ) -> Result<Option<IpAddr>, StoreError> {
        let Some(v6) = &net.ipv6 else {
            return match want {
                None => Ok(None),
                Some(ip) => Err(StoreError::AddressUnavailable {
                    ip: ip.to_string(),
                    network: net.name.clone(),
                    why: "the network has no IPv6 subnet (create it with --ipv6)".into(),
                }),
            };
        };
        let taken = self.taken_on(&net.id);
        let range = (&v6.subnet, v6.ip_range.as_ref(), v6.last_allocated);
        pick_in(&net.name, range, &taken, want).map(Some)
    }

    /// A free address on `node`'s gateway bridge.
    pub(crate) fn gateway_address(&self, node: NodeId) -> Result<IpAddr, StoreError> {
        let settings = &self
            .cluster
            .as_ref()
            .ok_or(StoreError::NotInitialised)?
            .settings;
        let mut taken: BTreeSet<IpAddr> = self
            .tasks
            .values()
            .filter(|t| t.node == node)
            .filter_map(|t| t.gateway_ip)
            .collect();
        let gw_subnet = settings.gateway_subnet;
        if let Some(g) = ipam::first_host(&gw_subnet) {
            taken.insert(g);
        }
        ipam::next_ip(&gw_subnet, None, &taken)
            .ok_or_else(|| StoreError::NetworkFull("the gateway bridge".into()))
    }
}

/// `--ingress-subnet TEXT` (of `init` and `cluster update`) parsed and
/// checked with [`check_ingress_subnet`]; the reason when refused.
pub fn parse_ingress_subnet(text: &str, settings: &ClusterSettings) -> Result<IpNetwork, String> {
    let subnet: IpNetwork = text.parse().map_err(|_| {
        format!("invalid --ingress-subnet {text:?}: give a CIDR such as {INGRESS_SUBNET}")
    })?;
    check_ingress_subnet(&subnet, settings)?;
    Ok(subnet)
}

/// What an IPv6 ingress subnet must be: an IPv6 network address, /48 to
/// /120 (room for a gateway and one address per node). The reason when
/// not.
pub fn check_ingress_subnet6(subnet: &IpNetwork) -> Result<(), String> {
    if !subnet.is_ipv6() {
        return Err(format!("ingress subnet {subnet} is not IPv6"));
    }
    if subnet.network() != subnet.ip() {
        return Err(format!(
            "ingress subnet {subnet} has host bits set; did you mean {}/{}?",
            subnet.network(),
            subnet.prefix()
        ));
    }
    if !(48..=120).contains(&subnet.prefix()) {
        return Err(format!(
            "ingress subnet {subnet} is out of range: use a /48 to /120 (a /64 is usual)"
        ));
    }
    match ipam::unusable6(subnet) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// `--ingress-subnet` values (of `init` and `cluster update`), at most one
/// per family, parsed and checked ([`check_ingress_subnet`],
/// [`check_ingress_subnet6`]); the reason when refused. Empty text: that
/// family is not given.
pub fn parse_ingress_subnets(
    v4: &str,
    v6: &str,
    settings: &ClusterSettings,
) -> Result<(Option<IpNetwork>, Option<IpNetwork>), String> {
    let v4 = (!v4.is_empty())
        .then(|| parse_ingress_subnet(v4, settings))
        .transpose()?;
    let v6 = if v6.is_empty() {
        None
    } else {
        let subnet: IpNetwork = v6.parse().map_err(|_| {
            format!("invalid --ingress-subnet {v6:?}: give a CIDR such as fd00:ffff::/64")
        })?;
        check_ingress_subnet6(&subnet)?;
        Some(subnet)
    };
    Ok((v4, v6))
}

/// What an ingress subnet must be: an IPv4 network address with room for
/// a gateway and one address per node (/8 to /24), clear of the node-local
/// subnets of `settings`. The reason when not.
pub fn check_ingress_subnet(subnet: &IpNetwork, settings: &ClusterSettings) -> Result<(), String> {
    if !subnet.is_ipv4() {
        return Err(format!(
            "ingress subnet {subnet} is not IPv4; the routing mesh is IPv4"
        ));
    }
    if subnet.network() != subnet.ip() {
        return Err(format!(
            "ingress subnet {subnet} has host bits set; did you mean {}/{}?",
            subnet.network(),
            subnet.prefix()
        ));
    }
    if !(8..=24).contains(&subnet.prefix()) {
        return Err(format!(
            "ingress subnet {subnet} is out of range: use a /8 to /24 (default {INGRESS_SUBNET})"
        ));
    }
    for (what, other) in [
        ("gateway bridge", settings.gateway_subnet),
        ("WireGuard tunnel", settings.tunnel_subnet),
    ] {
        if ipam::overlaps(&other, subnet) {
            return Err(format!(
                "ingress subnet {subnet} overlaps the {what} subnet {other}; choose another"
            ));
        }
    }
    Ok(())
}

/// The addresses asked for on `net` (`--ip`, `--ip6`) as the allocation
/// takes them: the network's own address and its IPv6 side's. On an
/// IPv6-only network its one address is IPv6, so `--ip6` asks for it.
pub(crate) fn wants(
    net: &Network,
    want: Option<IpAddr>,
    want6: Option<IpAddr>,
) -> (Option<IpAddr>, Option<IpAddr>) {
    if net.subnet.is_ipv6() {
        (want.or(want6), None)
    } else {
        (want, want6)
    }
}

/// `want` if it is a free host address of the subnet, else the first free
/// one after the last handed out (`range`: subnet, ip range, last).
fn pick_in(
    network: &str,
    (subnet, ip_range, last): (&IpNetwork, Option<&IpNetwork>, Option<IpAddr>),
    taken: &BTreeSet<IpAddr>,
    want: Option<IpAddr>,
) -> Result<IpAddr, StoreError> {
    let Some(ip) = want else {
        return ipam::next_ip_after(subnet, ip_range, taken, last)
            .ok_or_else(|| StoreError::NetworkFull(network.to_string()));
    };
    let why = if !ipam::is_host_addr(subnet, ip) {
        format!("it is not a usable address of {subnet}")
    } else if taken.contains(&ip) {
        "it is already in use".to_string()
    } else {
        return Ok(ip);
    };
    Err(StoreError::AddressUnavailable {
        ip: ip.to_string(),
        network: network.to_string(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_fill_gaps() {
        assert_eq!(next_ifname([]), "eth0");
        assert_eq!(next_ifname(["eth0", "eth2"]), "eth1");
        assert_eq!(next_ifname(["eth0", "eth1"]), "eth2");
    }

    #[test]
    fn ingress_id_is_stable_and_hex() {
        let a = ingress_network_id("c1");
        assert_eq!(a, ingress_network_id("c1"));
        assert_ne!(a, ingress_network_id("c2"));
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
