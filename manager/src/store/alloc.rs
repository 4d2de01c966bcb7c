//! Allocation on the store's state, at apply time: networks' subnets and
//! gateways (both families), tasks' addresses on their networks, services'
//! VIPs, and the serial cursors that keep a released address last in line.
//! Deterministic: every manager computes the same from the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::ipam;
use super::types::*;
use super::{RESERVED_NETWORK_NAMES, State, StoreError, TaskState, TaskStatus};

impl State {
    /// Addresses in use on network `net_id`: task addresses, service VIPs
    /// and the gateway.
    pub(super) fn taken_on(&self, net_id: &str) -> BTreeSet<IpAddr> {
        let mut taken: BTreeSet<IpAddr> = self
            .tasks
            .values()
            .flat_map(|t| t.attachments.iter())
            .filter(|a| a.network == net_id)
            .flat_map(|a| std::iter::once(a.ip).chain(a.ip6))
            .collect();
        taken.extend(self.services.values().filter_map(|s| s.vips.get(net_id)));
        taken.extend(self.services.values().filter_map(|s| s.vips6.get(net_id)));
        if let Some(n) = self.networks.get(net_id) {
            taken.insert(n.gateway);
            taken.extend(n.ipv6.as_ref().map(|v6| v6.gateway));
            taken.extend(n.node_endpoints.values());
            taken.extend(n.node_endpoints6.values());
            taken.extend(n.aux_addresses.values());
        }
        taken
    }

    /// One VIP per network for a VIP-mode service, keeping those it has.
    pub(super) fn allocate_vips(
        &self,
        spec: &ServiceSpec,
        old: Option<&Service>,
    ) -> Result<BTreeMap<String, IpAddr>, StoreError> {
        let mut vips = BTreeMap::new();
        if spec.endpoint_mode != EndpointMode::Vip {
            return Ok(vips);
        }
        for net_id in &spec.networks {
            let net = self
                .networks
                .get(net_id)
                .ok_or_else(|| StoreError::NetworkNotFound(net_id.clone()))?;
            if let Some(ip) = old.and_then(|o| o.vips.get(net_id)) {
                vips.insert(net_id.clone(), *ip);
                continue;
            }
            vips.insert(net_id.clone(), self.pick_address(net, None)?);
        }
        Ok(vips)
    }

    /// One IPv6 VIP per dual-stack network for a VIP-mode service (those
    /// in `vips`), keeping those it has.
    pub(super) fn allocate_vips6(
        &self,
        old: Option<&Service>,
        vips: &BTreeMap<String, IpAddr>,
    ) -> Result<BTreeMap<String, IpAddr>, StoreError> {
        let mut vips6 = BTreeMap::new();
        for net_id in vips.keys() {
            let Some(net) = self.networks.get(net_id) else {
                continue;
            };
            let kept = old.and_then(|o| o.vips6.get(net_id)).copied();
            let ip = match kept {
                Some(ip) if net.ipv6.is_some() => Some(ip),
                _ => self.pick_address6(net, None)?,
            };
            if let Some(ip) = ip {
                vips6.insert(net_id.clone(), ip);
            }
        }
        Ok(vips6)
    }

    /// The IPv6 side of a new network: `None` unless `--ipv6`.
    pub(super) fn allocate_subnet6(
        &self,
        spec: &NetworkSpec,
        clash: impl Fn(&Network) -> bool,
    ) -> Result<Option<Subnet6>, StoreError> {
        let bad = |m: String| Err(StoreError::InvalidNetwork(m));
        if !spec.ipv6 {
            if let Some(s) = spec.subnet6 {
                return bad(format!(
                    "subnet {s} is IPv6: add --ipv6 for a dual-stack network"
                ));
            }
            return Ok(None);
        }
        // IPv6 subnets in use: dual-stack networks' and IPv6-only ones'.
        let v6_of = |n: &Network| {
            (n.ipv6.as_ref().map(|v6| v6.subnet))
                .into_iter()
                .chain(Some(n.subnet).filter(|s| s.is_ipv6()))
                .collect::<Vec<_>>()
        };
        // The ingress network's IPv6 subnet is kept free before it exists.
        let reserved = (self.cluster.as_ref())
            .and_then(|c| c.settings.ingress_subnet6)
            .filter(|_| self.ingress_network().is_none());
        let mut taken: Vec<IpNetwork> = (self.networks.values())
            .filter(|n| clash(n))
            .flat_map(v6_of)
            .collect();
        taken.extend(reserved);
        taken.push(ipam::GATEWAY_BRIDGE6.parse().expect("valid literal"));
        let subnet = match spec.subnet6 {
            Some(s) => {
                if let Some(why) = ipam::unusable6(&s) {
                    return bad(why);
                }
                if s.prefix() > ipam::MAX_PREFIX6 {
                    return bad(format!(
                        "IPv6 subnet {s} is too small: use a /{} or larger (a /64 is usual)",
                        ipam::MAX_PREFIX6
                    ));
                }
                let overlapping = (self.networks.values().filter(|n| clash(n))).find_map(|n| {
                    v6_of(n)
                        .into_iter()
                        .find(|o| ipam::overlaps(o, &s))
                        .map(|o| (n, o))
                });
                if let Some((o, other)) = overlapping {
                    return Err(StoreError::SubnetOverlap {
                        subnet: s.to_string(),
                        other: other.to_string(),
                        network: o.name.clone(),
                    });
                }
                if let Some(r) = reserved.filter(|r| ipam::overlaps(r, &s)) {
                    return bad(format!(
                        "IPv6 subnet {s} overlaps the ingress IPv6 subnet {r}, kept for the \
                         routing mesh of published ports; choose another subnet"
                    ));
                }
                s
            }
            None => {
                let cluster = self.cluster.as_ref().ok_or(StoreError::NotInitialised)?;
                let settings = &cluster.settings;
                let pools = match settings.default_addr_pools6.as_slice() {
                    [] => vec![ipam::ula_pool(&cluster.id)],
                    p => p.to_vec(),
                };
                let mask = settings.default_addr_pool_mask_length6;
                ipam::pick_subnet(&pools, mask, &taken).ok_or(StoreError::PoolExhausted(mask))?
            }
        };
        let gateway = match spec.gateway6 {
            Some(g) if !ipam::is_host_addr(&subnet, g) => {
                return bad(format!(
                    "gateway {g} is not a usable address of subnet {subnet}"
                ));
            }
            Some(g) => g,
            None => ipam::first_host(&subnet).ok_or_else(|| {
                StoreError::InvalidNetwork(format!("IPv6 subnet {subnet} has no host addresses"))
            })?,
        };
        if let Some(r) = &spec.ip_range6
            && !(subnet.contains(r.network()) && r.prefix() >= subnet.prefix())
        {
            return bad(format!("ip range {r} is not inside subnet {subnet}"));
        }
        Ok(Some(Subnet6 {
            subnet,
            gateway,
            ip_range: spec.ip_range6,
            last_allocated: None,
        }))
    }

    /// The IPv4 subnet and gateway of a new network: given (and checked
    /// against the others and the ingress subnet) or from the pools.
    pub(super) fn allocate_subnet4(
        &self,
        spec: &NetworkSpec,
        clash: impl Fn(&Network) -> bool,
        taken: Vec<IpNetwork>,
        ingress_reserved: Option<IpNetwork>,
    ) -> Result<(IpNetwork, IpAddr), StoreError> {
        let settings = &self
            .cluster
            .as_ref()
            .ok_or(StoreError::NotInitialised)?
            .settings;
        let subnet = match spec.subnet {
            Some(s) => {
                if let Some(o) = self
                    .networks
                    .values()
                    .filter(|n| clash(n))
                    .find(|n| ipam::overlaps(&n.subnet, &s))
                {
                    return Err(StoreError::SubnetOverlap {
                        subnet: s.to_string(),
                        other: o.subnet.to_string(),
                        network: o.name.clone(),
                    });
                }
                if let Some(r) = ingress_reserved.filter(|r| ipam::overlaps(r, &s)) {
                    return Err(StoreError::InvalidNetwork(format!(
                        "subnet {s} overlaps the ingress subnet {r}, kept for the routing mesh of \
                         published ports; choose another subnet, or move the ingress subnet with \
                         `weft cluster update --ingress-subnet CIDR`"
                    )));
                }
                s
            }
            None => ipam::pick_subnet(
                &settings.default_addr_pools,
                settings.default_addr_pool_mask_length,
                &taken,
            )
            .ok_or(StoreError::PoolExhausted(
                settings.default_addr_pool_mask_length,
            ))?,
        };
        let gateway = match spec.gateway {
            Some(g) => {
                if !ipam::is_host_addr(&subnet, g) {
                    return Err(StoreError::InvalidNetwork(format!(
                        "gateway {g} is not a usable address of subnet {subnet}"
                    )));
                }
                g
            }
            None => ipam::first_host(&subnet).ok_or_else(|| {
                StoreError::InvalidNetwork(format!(
                    "subnet {subnet} is too small: use a /30 or larger"
                ))
            })?,
        };
        if let Some(r) = &spec.ip_range
            && !(subnet.contains(r.network()) && r.prefix() >= subnet.prefix())
        {
            return Err(StoreError::InvalidNetwork(format!(
                "ip range {r} is not inside subnet {subnet}"
            )));
        }
        Ok((subnet, gateway))
    }

    pub(super) fn allocate_network(&self, spec: &NetworkSpec) -> Result<Network, StoreError> {
        let settings = &self
            .cluster
            .as_ref()
            .ok_or(StoreError::NotInitialised)?
            .settings;
        if RESERVED_NETWORK_NAMES.contains(&spec.name.as_str()) {
            return Err(StoreError::ReservedName(spec.name.clone()));
        }
        let local = match spec.driver.as_str() {
            "" | "overlay" => None,
            "bridge" => Some(self.check_local_spec(spec)?),
            d => {
                return Err(StoreError::InvalidNetwork(format!(
                    "unknown driver {d:?}: use overlay or bridge"
                )));
            }
        };
        // Names are unique among the networks a node can see: swarm
        // networks everywhere, a local one on its node.
        let clash = |n: &Network| match (local, n.node) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if self
            .networks
            .values()
            .any(|n| n.name == spec.name && clash(n))
        {
            return Err(StoreError::NetworkExists(spec.name.clone()));
        }
        if self.networks.contains_key(&spec.id) {
            return Err(StoreError::NetworkExists(spec.id.clone()));
        }
        // Subnets must not overlap where they could meet in one task:
        // a local network against swarm networks and its node's other
        // local networks; a swarm network against everything.
        let mut taken: Vec<IpNetwork> = self
            .networks
            .values()
            .filter(|n| clash(n))
            .map(|n| n.subnet)
            .collect();
        // The ingress subnet is kept free before the ingress network exists,
        // so the first published port never finds it taken (not in clusters
        // from before the setting: their logs must replay as they applied).
        let ingress_reserved = settings
            .ingress_subnet
            .filter(|_| self.ingress_network().is_none());
        taken.extend(ingress_reserved);
        let ipv6 = self.allocate_subnet6(spec, clash)?;
        let (subnet, gateway, ip_range, ipv6) = if spec.no_ipv4 {
            if spec.subnet.is_some() || spec.gateway.is_some() || spec.ip_range.is_some() {
                return Err(StoreError::InvalidNetwork(
                    "an IPv6-only network (--ipv4=false) takes no IPv4 --subnet, --gateway or \
                     --ip-range"
                        .into(),
                ));
            }
            let v6 =
                ipv6.ok_or_else(|| StoreError::InvalidNetwork("--ipv4=false needs --ipv6".into()))?;
            (v6.subnet, v6.gateway, v6.ip_range, None)
        } else {
            let (subnet, gateway) = self.allocate_subnet4(spec, clash, taken, ingress_reserved)?;
            (subnet, gateway, spec.ip_range, ipv6)
        };
        let vni = if local.is_some() {
            0
        } else {
            let used: BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
            ipam::next_vni(&used).ok_or(StoreError::VniExhausted)?
        };
        Ok(Network {
            id: spec.id.clone(),
            name: spec.name.clone(),
            driver: if local.is_some() { "bridge" } else { "overlay" }.into(),
            node: local,
            ingress: false,
            node_endpoints: Default::default(),
            node_endpoints6: Default::default(),
            last_allocated: None,
            aux_addresses: check_aux_addresses(spec, &subnet, gateway, ipv6.as_ref())?,
            ipv6,
            // Local networks take standalone tasks, as Docker's bridges do.
            attachable: spec.attachable || local.is_some(),
            subnet,
            gateway,
            ip_range,
            vni,
            internal: spec.internal,
            mtu: spec.mtu,
            labels: spec.labels.clone(),
            created_at_ms: spec.now_ms,
            encrypted: spec.encrypted,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate_task(
        &self,
        id: &str,
        name: &str,
        node: NodeId,
        spec: &TaskSpec,
        (networks, want6): NetworkRequests<'_>,
        standalone: bool,
        now_ms: u64,
    ) -> Result<Task, StoreError> {
        if self.cluster.is_none() {
            return Err(StoreError::NotInitialised);
        }
        if self.tasks.contains_key(id) || self.tasks.values().any(|t| t.name == name) {
            return Err(StoreError::TaskExists(name.to_string()));
        }
        self.node(node)?;
        let mut attachments = Vec::new();
        let mut internal_only = !networks.is_empty();
        for (net_id, want) in networks {
            let net = self
                .networks
                .get(net_id)
                .ok_or_else(|| StoreError::NetworkNotFound(net_id.clone()))?;
            if standalone && (!net.attachable || net.ingress) {
                return Err(StoreError::NotAttachable(net.name.clone()));
            }
            if !net.visible_on(node) {
                return Err(StoreError::NetworkNotFound(net.name.clone()));
            }
            if attachments
                .iter()
                .any(|a: &Attachment| &a.network == net_id)
            {
                return Err(StoreError::AlreadyConnected {
                    task: name.to_string(),
                    network: net.name.clone(),
                });
            }
            internal_only &= net.internal;
            let (want, want6) = super::netmodel::wants(net, *want, want6.get(net_id).copied());
            let ip = self.pick_address(net, want)?;
            let ip6 = self.pick_address6(net, want6)?;
            let ifname = format!("eth{}", attachments.len());
            attachments.push(Attachment {
                network: net_id.clone(),
                ip,
                ifname,
                aliases: Vec::new(),
                ip6,
            });
        }
        // Egress through the node's gateway bridge unless every network is
        // internal (a task with no network at all still gets a way out).
        let gateway_ip = if internal_only {
            None
        } else {
            Some(self.gateway_address(node)?)
        };
        Ok(Task {
            id: id.to_string(),
            name: name.to_string(),
            node,
            spec: spec.clone(),
            attachments,
            gateway_ip,
            desired: DesiredTaskState::Running,
            status: TaskStatus::new(TaskState::pending(), now_ms),
            created_at_ms: now_ms,
            service: None,
            network_mode: NetworkMode::Attached,
            ports: Vec::new(),
            restarts: 0,
            restart_history: Vec::new(),
            started_at_ms: None,
        })
    }

    /// Moves the serial allocation of each of `task`'s networks past the
    /// address it got there unasked (`networks`: what was asked).
    pub(super) fn allocated_for(
        &mut self,
        task: &Task,
        networks: &[(String, Option<IpAddr>)],
        want6: &BTreeMap<String, IpAddr>,
    ) {
        for a in &task.attachments {
            let (Some((_, want)), Some(net)) = (
                networks.iter().find(|(n, _)| *n == a.network),
                self.networks.get(&a.network),
            ) else {
                continue;
            };
            // What was asked for keeps the cursor where it is.
            let (want, want6) = super::netmodel::wants(net, *want, want6.get(&a.network).copied());
            if want.is_none() {
                self.allocated(&a.network, a.ip);
            }
            if let (None, Some(ip6)) = (want6, a.ip6) {
                self.allocated(&a.network, ip6);
            }
        }
    }

    /// Moves the serial allocation of each network of `vips` past the VIP
    /// newly given there (kept ones, in `old`, do not count).
    pub(super) fn allocated_vips(
        &mut self,
        vips: &BTreeMap<String, IpAddr>,
        old: &BTreeMap<String, IpAddr>,
    ) {
        for (net, ip) in vips {
            if old.get(net) != Some(ip) {
                self.allocated(net, *ip);
            }
        }
    }
}

/// A new task's networks in attachment order, each with the address asked
/// for, and the IPv6 addresses asked for by network.
pub(super) type NetworkRequests<'a> =
    (&'a [(String, Option<IpAddr>)], &'a BTreeMap<String, IpAddr>);

/// `--aux-address NAME=IP` of `spec` on `subnet` (gateway `gateway`):
/// each a usable address of the subnet, not the gateway, none twice, and
/// only with an explicit subnet (an allocated one is not known in advance).
fn check_aux_addresses(
    spec: &NetworkSpec,
    subnet: &IpNetwork,
    gateway: IpAddr,
    ipv6: Option<&Subnet6>,
) -> Result<BTreeMap<String, IpAddr>, StoreError> {
    let bad = |m: String| Err(StoreError::InvalidNetwork(m));
    if !spec.aux_addresses.is_empty() && spec.subnet.is_none() {
        return bad("--aux-address needs --subnet".into());
    }
    let mut seen = BTreeSet::new();
    for (name, ip) in &spec.aux_addresses {
        let (subnet, gateway) = match (ip, ipv6) {
            (IpAddr::V6(_), Some(v6)) => (&v6.subnet, v6.gateway),
            _ => (subnet, gateway),
        };
        if !ipam::is_host_addr(subnet, *ip) {
            return bad(format!(
                "aux address {name}={ip} is not a usable address of subnet {subnet}"
            ));
        }
        if *ip == gateway {
            return bad(format!("aux address {name}={ip} is the network's gateway"));
        }
        if !seen.insert(*ip) {
            return bad(format!("aux address {ip} is given twice"));
        }
    }
    Ok(spec.aux_addresses.clone())
}
