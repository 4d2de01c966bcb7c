//! The Docker network plugin's calls on this node (`--docker-plugin`): a
//! Docker container joins a weft network as a task that stands for its
//! endpoint, wired into its sandbox by the same data plane as weft's own
//! tasks. The protocol side is `crate::docker_plugin`.
//!
//! ```text
//!  docker network create -d weft --ipam-driver weft --ipam-opt weft.network=NET NAME
//!    RequestPool  ─▶ the weft network (by name, or by --subnet): PoolID = its ID
//!    RequestAddress(gateway) ─▶ the network's gateway
//!    CreateNetwork ─▶ Docker network ID → weft network ID (kept in the data dir)
//!  docker run --network NAME …
//!    RequestAddress ─▶ RunTask{external docker, no namespace yet}: one Raft write;
//!                      the address weft's IPAM gave (task and MAC noted)
//!    CreateEndpoint ─▶ endpoint ID → that task (kept in the exec root); `-p` ports:
//!                      RunTask again with them (SetTaskPorts); answer: its MAC
//!    Join(sandbox)  ─▶ sandbox noted (Sandboxes, no interface name yet) ─▶ the pass
//!                      makes the veth: network side on br0, the other end
//!                      `weftdk<hash>` here ─▶ answer: SrcName weftdk…, DstPrefix eth,
//!                      DisableGatewayService (dockerd moves it into the container
//!                      once its namespace exists; no Docker gateway bridge)
//!                   ─▶ find_moved: the sandbox is a namespace with a link of that
//!                      MAC ─▶ its name noted ─▶ the pass adopts the namespace
//!                      (gw0 and the default route, VIP table, resolver at
//!                      127.0.0.12) ─▶ the task runs
//!    Leave ─▶ sandbox forgotten: the node unwires it · DeleteEndpoint / ReleaseAddress
//!    ─▶ RemoveTask (idempotent) · every 60 s: a task no endpoint claimed twice ─▶ removed
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::sandboxes::{DOCKER, Sandbox};

use super::NodeService;
use super::tasks::remove_through_managers;
use crate::docker_plugin::{
    ADDRESS_SPACE, AddressRequest, Backend, Call, EndpointRequest, JoinRequest, NETWORK_OPTION,
    NetworkRequest, POOL6_SUFFIX, PoolRequest,
};

/// The most endpoints of one network whose IPv6 address may be waited for.
const MAX_PENDING6: usize = 256;

/// How long an endpoint's IPv6 address waits to be asked for (dockerd
/// asks right after the IPv4 one).
const PENDING6_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A task whose IPv6 address dockerd may ask for next: (task, address,
/// when its IPv4 one was given).
type Pending6 = (String, String, std::time::Instant);

/// A string map kept as one JSON file, rewritten whole on each change.
struct JsonMap {
    path: PathBuf,
    map: Mutex<BTreeMap<String, String>>,
}

impl JsonMap {
    fn load(path: PathBuf) -> JsonMap {
        let map = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable Docker plugin state: starting empty");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        JsonMap {
            path,
            map: Mutex::new(map),
        }
    }

    fn get(&self, k: &str) -> Option<String> {
        self.map.lock().expect("map").get(k).cloned()
    }

    fn change(&self, f: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), String> {
        let mut m = self.map.lock().expect("map");
        let mut next = m.clone();
        f(&mut next);
        if next == *m {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&next).map_err(|e| e.to_string())?;
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
        }
        weft_overlay::durable::write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        *m = next;
        Ok(())
    }
}

/// The plugin's backend: the node, and what Docker's IDs stand for here.
pub(crate) struct DockerPlugin {
    node: Arc<NodeService>,
    /// Docker network ID → weft network ID (persistent: Docker keeps its
    /// networks across reboots).
    networks: JsonMap,
    /// Docker endpoint ID → task ID (per boot, as the endpoints are).
    endpoints: JsonMap,
    /// Tasks made by RequestAddress, by task ID: the node's config may not
    /// have them yet when CreateEndpoint and Join come a few ms later.
    made: Mutex<BTreeMap<String, Made>>,
    /// Docker tasks of this node that no endpoint claimed at the last
    /// sweep ([`DockerPlugin::sweep`]).
    unclaimed: Mutex<std::collections::BTreeSet<String>>,
    /// Per weft network, the tasks an IPv4 RequestAddress made whose IPv6
    /// address dockerd has not asked for yet, oldest first: dockerd asks
    /// for an endpoint's IPv4 address, then its IPv6 one, and the IPv6
    /// request does not say for which endpoint. Only weft networks that are
    /// `--ipv6` Docker networks here get entries; entries older than
    /// [`PENDING6_FOR`] are dropped (dockerd gave up on that endpoint).
    /// CreateEndpoint checks that the pair it gets is one task's.
    pending6: Mutex<BTreeMap<String, std::collections::VecDeque<Pending6>>>,
}

/// A task RequestAddress made.
#[derive(Clone)]
struct Made {
    /// `network ID/address`.
    at: String,
    /// Its IPv6 address on a dual-stack network.
    ip6: Option<String>,
    mac: String,
    /// What it was asked for with (CreateEndpoint asks again, with ports).
    external: pb::ExternalEndpoint,
}

fn msg(s: Status) -> String {
    s.message().to_owned()
}

/// The weft network ID of a Docker network's mapping (`ID`, or `ID/v6`
/// for an `--ipv6` one).
fn weft_id(mapped: &str) -> &str {
    mapped.strip_suffix(POOL6_SUFFIX).unwrap_or(mapped)
}

/// The address part of `a.b.c.d/len` (or of a bare address).
fn addr_part(a: &str) -> &str {
    a.split('/').next().unwrap_or(a)
}

impl DockerPlugin {
    /// The backend for `node`, its state under the node's data dir and
    /// exec root.
    pub(crate) fn new(node: Arc<NodeService>) -> DockerPlugin {
        DockerPlugin {
            networks: JsonMap::load(node.data_dir.join("docker/networks.json")),
            endpoints: JsonMap::load(node.exec_root.join("docker/endpoints.json")),
            made: Mutex::new(BTreeMap::new()),
            unclaimed: Mutex::new(std::collections::BTreeSet::new()),
            pending6: Mutex::new(BTreeMap::new()),
            node,
        }
    }

    /// Removes the Docker tasks of this node that no endpoint claimed at
    /// this sweep and the one before ([`SWEEP`] apart): an address that
    /// dockerd asked for and never used (it died between RequestAddress and
    /// CreateEndpoint, or its rollback failed).
    pub(crate) async fn sweep(&self) {
        let claimed: std::collections::BTreeSet<String> = self
            .endpoints
            .map
            .lock()
            .expect("map")
            .values()
            .cloned()
            .collect();
        let Ok(config) = self.node.pushed_config().await else {
            return;
        };
        let mine: Vec<String> = {
            config
                .map(|c| {
                    c.tasks
                        .iter()
                        .filter(|t| t.external.as_ref().is_some_and(|e| e.runtime == DOCKER))
                        .map(|t| t.id.clone())
                        .filter(|id| !claimed.contains(id))
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = std::mem::replace(
            &mut *self.unclaimed.lock().expect("unclaimed"),
            mine.iter().cloned().collect(),
        );
        for id in mine.iter().filter(|id| before.contains(*id)) {
            tracing::info!(task = %id, "a Docker address no endpoint used: released");
            if let Err(e) = self.remove(id).await {
                tracing::warn!(task = %id, error = %e, "cannot release an unused Docker address");
            }
        }
    }

    /// The weft network named (name or ID) `name`, as this node sees it.
    async fn network(&self, name: &str) -> Result<pb::Network, String> {
        let r = pb::GetNetworkRequest {
            network: name.to_owned(),
            verbose: false,
        };
        let d = self
            .node
            .dispatcher(|mut c| {
                let r = r.clone();
                async move { c.get_node_network(r).await }
            })
            .await
            .map_err(msg)?;
        d.network
            .ok_or_else(|| format!("weft network {name:?} has no details"))
    }

    /// The weft network whose subnet is `subnet`.
    async fn network_by_subnet(&self, subnet: &str) -> Result<pb::Network, String> {
        let all = self
            .node
            .dispatcher(
                |mut c| async move { c.list_node_networks(pb::ListNetworksRequest {}).await },
            )
            .await
            .map_err(msg)?;
        all.networks
            .into_iter()
            .find(|n| n.subnet == subnet)
            .ok_or_else(|| {
                format!(
                    "no weft network has subnet {subnet}: name one with --ipam-opt {NETWORK_OPTION}=NAME"
                )
            })
    }

    /// Checks that Docker containers may join `n`.
    fn usable(n: &pb::Network) -> Result<(), String> {
        if !n.attachable {
            return Err(format!(
                "weft network {} is not attachable: create it with `weft network create --attachable`",
                n.name
            ));
        }
        if n.ingress {
            return Err(format!(
                "weft network {} is the ingress network: containers do not join it",
                n.name
            ));
        }
        Ok(())
    }

    /// The Docker task on this node on network `network` with address `ip`.
    async fn task_by_ip(&self, network: &str, ip: &str) -> Result<Option<String>, String> {
        let at = format!("{network}/{ip}");
        let noted = (self.made.lock().expect("made").iter())
            .find(|(_, m)| m.at == at)
            .map(|(t, _)| t.clone());
        if noted.is_some() {
            return Ok(noted);
        }
        let config = self.node.pushed_config().await.map_err(msg)?;
        Ok(config.and_then(|c| {
            c.tasks
                .iter()
                .find(|t| {
                    t.external.as_ref().is_some_and(|e| e.runtime == DOCKER)
                        && t.attachments
                            .iter()
                            .any(|at| at.network_id == network && addr_part(&at.ip) == ip)
                })
                .map(|t| t.id.clone())
        }))
    }

    /// Task `id`'s MAC and the endpoint it was asked for with: as
    /// RequestAddress noted them, else from the node's config.
    async fn made(&self, id: &str) -> Result<(String, pb::ExternalEndpoint), String> {
        let noted =
            (self.made.lock().expect("made").get(id)).map(|m| (m.mac.clone(), m.external.clone()));
        if let Some(n) = noted {
            return Ok(n);
        }
        let config = self.node.pushed_config().await.map_err(msg)?;
        config
            .and_then(|c| {
                let t = c.tasks.iter().find(|t| t.id == id)?;
                Some((t.attachments.first()?.mac.clone(), t.external.clone()?))
            })
            .ok_or_else(|| format!("task {id} is not on this node"))
    }

    /// Whether weft network `id` is an `--ipv6` Docker network on this
    /// engine (`None`: no Docker network maps it).
    fn ipv6_mapped(&self, id: &str) -> Option<bool> {
        let m = self.networks.map.lock().expect("map");
        let mut found = m.values().filter(|w| weft_id(w) == id);
        found.next().map(|w| w.ends_with(POOL6_SUFFIX))
    }

    /// Task `id`'s IPv6 address: as RequestAddress noted it, else from the
    /// node's config.
    async fn made_ip6(&self, id: &str) -> Result<Option<String>, String> {
        if let Some(m) = self.made.lock().expect("made").get(id) {
            return Ok(m.ip6.clone());
        }
        let config = self.node.pushed_config().await.map_err(msg)?;
        Ok(config.and_then(|c| {
            let t = c.tasks.iter().find(|t| t.id == id)?;
            let a = t.attachments.first()?;
            Some(addr_part(&a.ip6).to_owned()).filter(|s| !s.is_empty())
        }))
    }

    async fn request_pool(&self, r: PoolRequest) -> Result<Value, String> {
        let n = match (&r.network, &r.pool) {
            (Some(name), _) => self.network(name).await?,
            (None, Some(pool)) => self.network_by_subnet(pool).await?,
            (None, None) => {
                return Err(format!(
                    "which weft network? docker network create -d weft --ipam-driver weft \
                     --ipam-opt {NETWORK_OPTION}=NAME …"
                ));
            }
        };
        Self::usable(&n)?;
        if r.v6 {
            if n.subnet6.is_empty() {
                return Err(format!(
                    "weft network {} has no IPv6 subnet: create it with `weft network create \
                     --ipv6`, or the Docker network without --ipv6",
                    n.name
                ));
            }
            if let Some(pool) = &r.pool
                && *pool != n.subnet6
            {
                return Err(format!(
                    "--subnet {pool} is not weft network {}'s IPv6 subnet {}",
                    n.name, n.subnet6
                ));
            }
            let id = format!("{}{POOL6_SUFFIX}", n.id);
            return Ok(json!({"PoolID": id, "Pool": n.subnet6, "Data": {}}));
        }
        if n.subnet.contains(':') {
            return Err(format!(
                "weft network {} is IPv6 only; dockerd needs an IPv4 subnet",
                n.name
            ));
        }
        if let Some(pool) = &r.pool
            && *pool != n.subnet
        {
            return Err(format!(
                "--subnet {pool} is not weft network {}'s subnet {}",
                n.name, n.subnet
            ));
        }
        Ok(json!({"PoolID": n.id, "Pool": n.subnet, "Data": {}}))
    }

    async fn request_address(&self, r: AddressRequest) -> Result<Value, String> {
        if let Some(id) = r.pool_id.strip_suffix(POOL6_SUFFIX) {
            return self.request_address6(id, &r).await;
        }
        let n = self.network(&r.pool_id).await?;
        let prefix = n.subnet.split('/').nth(1).unwrap_or("32").to_owned();
        if r.gateway {
            if let Some(a) = &r.address
                && addr_part(a) != n.gateway
            {
                return Err(format!(
                    "--gateway {a} is not weft network {}'s gateway {}",
                    n.name, n.gateway
                ));
            }
            return Ok(json!({"Address": format!("{}/{prefix}", n.gateway), "Data": {}}));
        }
        // The task is made now, before its container's sandbox exists: the
        // address has to be weft's (one allocator for every node).
        let external = pb::ExternalEndpoint {
            runtime: DOCKER.into(),
            container_id: format!("{:032x}", rand::random::<u128>()),
            ifname: "eth0".into(),
            netns: String::new(),
            container_name: String::new(),
        };
        let task = self
            .node
            .run_task(pb::RunTaskRequest {
                networks: vec![pb::NetworkRef {
                    ip6: String::new(),
                    aliases: Default::default(),
                    network: n.id.clone(),
                    ip: r.address.as_deref().map(addr_part).unwrap_or("").to_owned(),
                }],
                external: Some(external.clone()),
                ..Default::default()
            })
            .await
            .map_err(msg)?;
        let (ip, ip6, mac) = task
            .addresses
            .iter()
            .find(|a| a.network == n.id || a.network == n.name)
            .or(task.addresses.first())
            .map(|a| {
                let ip6 = Some(addr_part(&a.ip6).to_owned()).filter(|s| !s.is_empty());
                (addr_part(&a.ip).to_owned(), ip6, a.mac.clone())
            })
            .ok_or_else(|| format!("task {} got no address on {}", task.id, n.name))?;
        if let Some(ip6) = ip6
            .as_ref()
            .filter(|_| self.ipv6_mapped(&n.id) == Some(true))
        {
            let mut p = self.pending6.lock().expect("pending6");
            let queue = p.entry(n.id.clone()).or_default();
            queue.push_back((task.id.clone(), ip6.clone(), std::time::Instant::now()));
            // Keep the most recent ones.
            while queue.len() > MAX_PENDING6 {
                queue.pop_front();
            }
        }
        self.made.lock().expect("made").insert(
            task.id.clone(),
            Made {
                at: format!("{}/{ip}", n.id),
                ip6,
                mac,
                external,
            },
        );
        tracing::info!(task = %task.id, %ip, network = %n.name, "Docker endpoint address");
        Ok(json!({"Address": format!("{ip}/{prefix}"), "Data": {}}))
    }

    /// An IPv6 address on weft network `id` (a `--ipv6` Docker network's
    /// second pool): the gateway's, or the one weft gave the endpoint whose
    /// IPv4 address dockerd asked for last (see [`DockerPlugin::pending6`]).
    async fn request_address6(&self, id: &str, r: &AddressRequest) -> Result<Value, String> {
        let n = self.network(id).await?;
        let prefix = n.subnet6.split('/').nth(1).unwrap_or("64").to_owned();
        if r.gateway {
            if let Some(a) = &r.address
                && addr_part(a) != n.gateway6
            {
                return Err(format!(
                    "--gateway {a} is not weft network {}'s IPv6 gateway {}",
                    n.name, n.gateway6
                ));
            }
            return Ok(json!({"Address": format!("{}/{prefix}", n.gateway6), "Data": {}}));
        }
        if let Some(a) = &r.address {
            return Err(format!(
                "--ip6 {a} is not taken: weft gives a container's IPv6 address with its IPv4 one"
            ));
        }
        let next = (self.pending6.lock().expect("pending6"))
            .get_mut(&n.id)
            .and_then(|q| {
                q.retain(|(_, _, at)| at.elapsed() < PENDING6_FOR);
                q.pop_front()
            });
        let (task, ip6, _) = next.ok_or_else(|| {
            format!(
                "an IPv6 address on {} asked for before its endpoint's IPv4 one",
                n.name
            )
        })?;
        tracing::info!(%task, %ip6, network = %n.name, "Docker endpoint IPv6 address");
        Ok(json!({"Address": format!("{ip6}/{prefix}"), "Data": {}}))
    }

    /// Removes task `id` through the managers; one already gone is fine.
    async fn remove(&self, id: &str) -> Result<(), String> {
        self.made.lock().expect("made").remove(id);
        for q in self.pending6.lock().expect("pending6").values_mut() {
            q.retain(|(t, _, _)| t != id);
        }
        match remove_through_managers(&self.node.active, id).await {
            Err(s) if s.code() != tonic::Code::NotFound => Err(msg(s)),
            _ => Ok(()),
        }
    }

    async fn release_address(&self, pool: &str, address: &str) -> Result<Value, String> {
        // An endpoint's IPv6 address goes with its task, at the release of
        // its IPv4 one.
        if pool.ends_with(POOL6_SUFFIX) {
            return Ok(json!({}));
        }
        if let Some(task) = self.task_by_ip(pool, addr_part(address)).await? {
            self.unjoin(&task).await?;
            self.remove(&task).await?;
        }
        Ok(json!({}))
    }

    async fn create_network(&self, r: NetworkRequest) -> Result<Value, String> {
        let usage = format!(
            "docker network create -d weft --ipam-driver weft --ipam-opt {NETWORK_OPTION}=NET NAME"
        );
        let [(space, pool)] = r.pools.as_slice() else {
            return Err(format!("one IPv4 pool expected: {usage}"));
        };
        if space != ADDRESS_SPACE {
            return Err(format!(
                "the addresses must come from weft's IPAM (address space {space:?}): {usage}"
            ));
        }
        let n = self.network_by_subnet(pool).await?;
        match r.pools6.as_slice() {
            [] => {}
            [(space6, pool6)] if space6 == ADDRESS_SPACE && *pool6 == n.subnet6 => {}
            _ => {
                return Err(format!(
                    "the IPv6 addresses must be weft network {}'s (one pool, {}, from weft's \
                     IPAM): {usage} --ipv6",
                    n.name, n.subnet6
                ));
            }
        }
        if let Some(name) = &r.network
            && *name != n.name
            && *name != n.id
        {
            return Err(format!(
                "--opt {NETWORK_OPTION}={name} but the addresses are weft network {}'s",
                n.name
            ));
        }
        // One weft network is --ipv6 for all of this engine's Docker
        // networks on it or for none: an endpoint's IPv6 address is paired
        // with its IPv4 one only on --ipv6 ones (see `pending6`).
        let v6 = !r.pools6.is_empty();
        if let Some(other) = self.ipv6_mapped(&n.id)
            && other != v6
            && self
                .networks
                .get(&r.network_id)
                .is_none_or(|w| weft_id(&w) != n.id)
        {
            let (is, not) = if other { ("", "out") } else { ("out", "") };
            return Err(format!(
                "weft network {} is already a Docker network with{is} --ipv6 on this engine: \
                 create this one with{is} --ipv6 too (not with{not})",
                n.name
            ));
        }
        let mapped = if v6 {
            format!("{}{POOL6_SUFFIX}", n.id)
        } else {
            n.id.clone()
        };
        self.networks
            .change(|m| drop(m.insert(r.network_id.clone(), mapped)))?;
        tracing::info!(docker = %r.network_id, network = %n.name, ipv6 = v6, "Docker network mapped");
        Ok(json!({}))
    }

    async fn create_endpoint(&self, r: EndpointRequest) -> Result<Value, String> {
        let network = self
            .networks
            .get(&r.network_id)
            .map(|w| weft_id(&w).to_owned());
        let network = network.ok_or_else(|| {
            format!(
                "Docker network {} was not created through weft's plugin on this node",
                r.network_id
            )
        })?;
        let task = self
            .task_by_ip(&network, addr_part(&r.address))
            .await?
            .ok_or_else(|| {
                format!(
                    "{} was not given by weft's IPAM on this node (a network made with \
                     --ipam-driver weft)",
                    r.address
                )
            })?;
        if let Some(a6) = &r.address6 {
            let ip6 = self.made_ip6(&task).await?;
            if ip6.as_deref() != Some(addr_part(a6)) {
                return Err(format!(
                    "{a6} is not the IPv6 address weft gave the endpoint of {} (two endpoints \
                     asked for addresses at once: try again)",
                    r.address
                ));
            }
        }
        if !r.ports.is_empty() {
            self.publish(&network, &task, &r.ports).await?;
        }
        let mac = self.made(&task).await?.0;
        self.endpoints
            .change(|m| drop(m.insert(r.endpoint_id.clone(), task)))?;
        Ok(json!({"Interface": {"MacAddress": mac}}))
    }

    /// `docker run -p`: the endpoint's task is asked for again with its
    /// ports, which the managers publish on this node as `weft run -p`
    /// publishes a task's (the `weft-user` chain applies).
    async fn publish(
        &self,
        network: &str,
        task: &str,
        ports: &[(&'static str, u16, u16)],
    ) -> Result<(), String> {
        let (_, external) = self.made(task).await?;
        self.node
            .run_task(pb::RunTaskRequest {
                networks: vec![pb::NetworkRef {
                    ip6: String::new(),
                    aliases: Default::default(),
                    network: network.to_owned(),
                    ip: String::new(),
                }],
                external: Some(external),
                ports: ports
                    .iter()
                    .map(|(proto, published, target)| pb::PortMapping {
                        protocol: (*proto).to_owned(),
                        published: u32::from(*published),
                        target: u32::from(*target),
                        mode: "host".into(),
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .map_err(msg)?;
        Ok(())
    }

    async fn join(&self, r: JoinRequest) -> Result<Value, String> {
        let task = self
            .endpoints
            .get(&r.endpoint_id)
            .ok_or_else(|| format!("endpoint {} is not known here", r.endpoint_id))?;
        let sandbox = PathBuf::from(&r.sandbox);
        if let Some((other, _)) = self
            .node
            .sandboxes
            .all()
            .into_iter()
            .find(|(t, s)| *t != task && s.netns == sandbox)
        {
            return Err(format!(
                "this container is already on a weft network (task {other}): a container \
                 joins one weft network at a time"
            ));
        }
        let mac = self.made(&task).await?.0;
        self.node
            .sandboxes
            .set(
                &task,
                Sandbox {
                    netns: sandbox.clone(),
                    ifname: None,
                },
            )
            .map_err(|e| format!("cannot note the sandbox: {e}"))?;
        self.node.wake.notify_one();
        // The pass makes the veth with its inside end here, for dockerd to
        // move into the sandbox once the container's namespace exists.
        let src = weft_overlay::model::names::handover(&weft_overlay::model::TaskId(task.clone()));
        let made = tokio::time::timeout(super::cni::WIRE_TIMEOUT, async {
            while !links_here().contains(&src) {
                tokio::time::sleep(HANDOVER_POLL).await;
            }
        })
        .await;
        if made.is_err() {
            let _ = self.node.sandboxes.clear(&task);
            self.node.wake.notify_one();
            return Err(format!(
                "the interface was not made within {} s (see the daemon's log)",
                super::cni::WIRE_TIMEOUT.as_secs()
            ));
        }
        tokio::spawn(find_moved(
            self.node.clone(),
            task.clone(),
            sandbox,
            mac.to_ascii_lowercase(),
        ));
        tracing::info!(%task, sandbox = %r.sandbox, %src, "Docker endpoint joined");
        // weft is the way out (gw0, added once the container's namespace
        // is adopted) and publishes its ports: no Docker gateway bridge.
        Ok(json!({
            "InterfaceName": {"SrcName": src, "DstPrefix": "eth"},
            "DisableGatewayService": true,
        }))
    }

    /// Takes task `id` out of its sandbox (if it joined one) and waits
    /// until the node let the sandbox go.
    async fn unjoin(&self, id: &str) -> Result<(), String> {
        if self.node.sandboxes.get(id).is_none() {
            return Ok(());
        }
        self.node
            .sandboxes
            .clear(id)
            .map_err(|e| format!("cannot forget the sandbox: {e}"))?;
        self.node.wake.notify_one();
        self.node.wait_released(id).await.map_err(|_| {
            format!(
                "task {id}'s interface was not taken out within {} s (see the daemon's log)",
                super::cni::WIRE_TIMEOUT.as_secs()
            )
        })
    }

    async fn leave(&self, endpoint: &str) -> Result<Value, String> {
        if let Some(task) = self.endpoints.get(endpoint) {
            self.unjoin(&task).await?;
        }
        Ok(json!({}))
    }

    async fn delete_endpoint(&self, endpoint: &str) -> Result<Value, String> {
        if let Some(task) = self.endpoints.get(endpoint) {
            self.unjoin(&task).await?;
            self.remove(&task).await?;
            self.endpoints.change(|m| drop(m.remove(endpoint)))?;
        }
        Ok(json!({}))
    }
}

/// How often unused Docker addresses are looked for (one is released at
/// its second sighting).
pub(crate) const SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// How often Join looks for the interface it hands over, and then for it
/// in the sandbox.
const HANDOVER_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// How long dockerd may take to start the container after Join.
const MOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The interfaces of the calling thread's network namespace.
fn links_here() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .map(|t| {
            t.lines()
                .skip(2)
                .filter_map(|l| Some(l.split(':').next()?.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The interface with MAC `mac` (lower-case) in namespace `path`.
fn link_with_mac(path: &Path, mac: &str) -> Option<String> {
    let ns = weft_overlay::linux::Netns::open(path).ok()?;
    ns.run_in(|| {
        nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
            let a = i.address?;
            let l = a.as_link_addr()?.addr()?;
            let m = l.map(|b| format!("{b:02x}")).join(":");
            (m == mac).then_some(i.interface_name)
        })
    })
    .ok()
    .flatten()
}

/// Waits until dockerd moved task `task`'s interface into `sandbox` (the
/// container's namespace exists once its runtime set it up), then notes
/// the name dockerd gave it: the node then adopts the namespace and wires
/// the rest (VIP table, resolver). Gives up if the endpoint left first.
async fn find_moved(node: Arc<NodeService>, task: String, sandbox: PathBuf, mac: String) {
    let waiting = Sandbox {
        netns: sandbox.clone(),
        ifname: None,
    };
    let deadline = tokio::time::Instant::now() + MOVE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if node.sandboxes.get(&task).as_ref() != Some(&waiting) {
            return;
        }
        if weft_overlay::linux::Netns::exists(&sandbox) {
            if node.netns_is_weft(&sandbox) {
                tracing::warn!(%task, sandbox = %sandbox.display(), "a Docker sandbox that is weft's own namespace: not wired");
                return;
            }
            let (p, m) = (sandbox.clone(), mac.clone());
            let found = tokio::task::spawn_blocking(move || link_with_mac(&p, &m))
                .await
                .ok()
                .flatten();
            if let Some(ifname) = found {
                let joined = Sandbox {
                    netns: sandbox.clone(),
                    ifname: Some(ifname.clone()),
                };
                if let Err(e) = node.sandboxes.set(&task, joined) {
                    tracing::warn!(%task, error = %e, "cannot note the Docker endpoint's interface");
                    return;
                }
                tracing::info!(%task, %ifname, "Docker endpoint in its container");
                node.wake.notify_one();
                return;
            }
        }
        tokio::time::sleep(HANDOVER_POLL).await;
    }
    tracing::warn!(%task, sandbox = %sandbox.display(), "dockerd did not move the interface into the container in time");
}

#[tonic::async_trait]
impl Backend for DockerPlugin {
    async fn call(&self, call: Call) -> Result<Value, String> {
        self.node.locked.refuse().map_err(msg)?;
        match call {
            Call::RequestPool(r) => self.request_pool(r).await,
            Call::ReleasePool(_) => Ok(json!({})),
            Call::RequestAddress(r) => self.request_address(r).await,
            Call::ReleaseAddress(pool, a) => self.release_address(&pool, &a).await,
            Call::CreateNetwork(r) => self.create_network(r).await,
            Call::DeleteNetwork(id) => {
                self.networks.change(|m| drop(m.remove(&id)))?;
                Ok(json!({}))
            }
            Call::CreateEndpoint(r) => self.create_endpoint(r).await,
            Call::DeleteEndpoint(_, e) => self.delete_endpoint(&e).await,
            Call::Join(r) => self.join(r).await,
            Call::Leave(_, e) => self.leave(&e).await,
        }
    }
}
