//! The CNI plugin's calls on this node's socket: a foreign runtime's
//! container joins a weft network as a task that stands for it.
//!
//! ```text
//!  ADD   netns is a namespace? ─▶ RunTask{external} (managers: one Raft write)
//!        ─▶ wait for the task to run (the pass that wired the namespace went
//!           through) ─▶ interfaces, addresses, gateway from the node's config
//!        failed or too slow: the task is removed again, the error returned
//!  DEL   the task for (runtime, container, ifname)? none: done (idempotent)
//!        ─▶ RemoveTask ─▶ wait until the node let the namespace go
//!  CHECK the task runs and its namespace is still the container's
//! ```

use std::path::Path;
use std::time::Duration;

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::runtime::{TaskRuntime, TaskState};

use super::NodeService;
use super::tasks::remove_through_managers;

/// How long ADD waits for the interface, and DEL for its removal.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often DEL looks whether the namespace was let go.
const RELEASE_POLL: Duration = Duration::from_millis(20);

impl NodeService {
    /// The task standing for `r`'s (runtime, container, interface) in this
    /// node's config, if any.
    async fn cni_task(&self, r: &pb::CniRequest) -> Result<Option<pb::TaskConfig>, Status> {
        let config = self.pushed_config().await?;
        let runtime = if r.runtime.is_empty() {
            "cni"
        } else {
            &r.runtime
        };
        Ok(config.and_then(|c| {
            c.tasks
                .iter()
                .find(|t| {
                    t.external.as_ref().is_some_and(|e| {
                        e.runtime == runtime
                            && e.container_id == r.container_id
                            && e.ifname == r.ifname
                    })
                })
                .cloned()
        }))
    }

    /// What the runtime is told of task `id`'s interfaces, from the node's
    /// config.
    async fn cni_result(&self, id: &str) -> Result<pb::CniResult, Status> {
        let config = self.pushed_config().await?;
        let c = config.ok_or_else(|| Status::unavailable("this node has no config yet"))?;
        let t = c
            .tasks
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| Status::not_found(format!("task {id} is not on this node")))?;
        let mut interfaces = Vec::new();
        let mut result = pb::CniResult {
            task_id: id.to_owned(),
            ..Default::default()
        };
        for at in &t.attachments {
            let net = c.networks.iter().find(|n| n.id == at.network_id);
            result.network_id = at.network_id.clone();
            result.network_subnet = net.map(|n| n.subnet.clone()).unwrap_or_default();
            interfaces.push(pb::CniInterface {
                name: t
                    .external
                    .as_ref()
                    .map_or_else(|| at.ifname.clone(), |e| e.ifname.clone()),
                mac: at.mac.clone(),
                address: at.ip.clone(),
                address6: at.ip6.clone(),
            });
        }
        if !t.gateway_ip.is_empty() {
            let gw = weft_worker::reconcile::gateway_of(&c.gateway_subnet);
            result.gateway = gw.map(|g| g.to_string()).unwrap_or_default();
            let address = if t.gateway_ip.contains('/') {
                t.gateway_ip.clone()
            } else {
                let prefix = c.gateway_subnet.split('/').nth(1).unwrap_or("16");
                format!("{}/{prefix}", t.gateway_ip)
            };
            // A task with an IPv6 address gets one on the gateway bridge
            // too, and an IPv6 default route (as the data plane wires it).
            let has6 = t
                .attachments
                .iter()
                .any(|a| !a.ip6.is_empty() || a.ip.contains(':'));
            let six = |a: &str| {
                let net: ipnetwork::IpNetwork = a.parse().ok()?;
                weft_overlay::GatewayBridge::ipv6_of(net)
            };
            let address6 = has6.then(|| six(&address)).flatten();
            if address6.is_some()
                && let Some(gw) = gw
            {
                let bridge = format!("{gw}/{}", address.split('/').nth(1).unwrap_or("16"));
                result.gateway6 = six(&bridge).map(|g| g.ip().to_string()).unwrap_or_default();
            }
            interfaces.push(pb::CniInterface {
                name: weft_overlay::model::names::TASK_GW_IF.to_owned(),
                mac: t.gateway_mac.clone(),
                address,
                address6: address6.map(|a| a.to_string()).unwrap_or_default(),
            });
        }
        result.interfaces = interfaces;
        Ok(result)
    }

    /// Waits until task `id` runs (the pass that wired its namespace went
    /// through), watching `events` (subscribed before the task was asked
    /// for); why not, when it failed, ended or took over [`WIRE_TIMEOUT`].
    pub(super) async fn wait_wired(
        &self,
        id: &str,
        mut events: tokio::sync::broadcast::Receiver<weft_worker::runtime::TaskStatus>,
    ) -> Result<(), String> {
        tokio::time::timeout(WIRE_TIMEOUT, async {
            loop {
                match self.runtime.status(id).map(|s| s.state) {
                    Some(TaskState::Running { .. }) => return Ok(()),
                    Some(TaskState::Failed { error }) => return Err(error),
                    Some(other) => return Err(format!("it ended before it was wired: {other:?}")),
                    None => {}
                }
                match events.recv().await {
                    // A lag only means: look again.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Err("the node's task runtime stopped".to_owned());
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "its interface was not in within {} s (see the daemon's log)",
                WIRE_TIMEOUT.as_secs()
            ))
        })
    }

    /// Waits until the node forgot task `id` and let its namespace go;
    /// `Err` after [`WIRE_TIMEOUT`].
    pub(super) async fn wait_released(&self, id: &str) -> Result<(), tokio::time::error::Elapsed> {
        let pin = weft_overlay::linux::dataplane::task_netns_path(
            &self.exec_root,
            &weft_overlay::model::TaskId(id.to_owned()),
        );
        tokio::time::timeout(WIRE_TIMEOUT, async {
            while weft_overlay::linux::Netns::exists(&pin) || self.runtime.status(id).is_some() {
                tokio::time::sleep(RELEASE_POLL).await;
            }
        })
        .await
    }

    /// CNI ADD: see the module doc.
    pub(super) async fn cni_add(&self, r: pb::CniRequest) -> Result<pb::CniResult, Status> {
        self.locked.refuse()?;
        if !weft_overlay::linux::Netns::exists(&r.netns) {
            return Err(Status::failed_precondition(format!(
                "{:?} is not a network namespace (CNI_NETNS)",
                r.netns
            )));
        }
        if self.netns_is_weft(Path::new(&r.netns)) {
            return Err(Status::invalid_argument(format!(
                "{:?} is this daemon's own network namespace or one weft made: a container's \
                 namespace must be its own",
                r.netns
            )));
        }
        let events = self.runtime.subscribe();
        let task = self
            .run_task(pb::RunTaskRequest {
                networks: vec![pb::NetworkRef {
                    ip6: String::new(),
                    aliases: Default::default(),
                    network: r.network.clone(),
                    ip: String::new(),
                }],
                ports: r.ports.clone(),
                external: Some(pb::ExternalEndpoint {
                    runtime: if r.runtime.is_empty() {
                        "cni".into()
                    } else {
                        r.runtime.clone()
                    },
                    container_id: r.container_id.clone(),
                    ifname: r.ifname.clone(),
                    netns: r.netns.clone(),
                    container_name: r.container_name.clone(),
                }),
                ..Default::default()
            })
            .await?;
        let wired = self.wait_wired(&task.id, events).await;
        if let Err(why) = wired {
            if let Err(e) = remove_through_managers(&self.active, &task.id).await {
                tracing::warn!(task = %task.id, error = %e, "a failed CNI ADD's task could not be removed");
            }
            return Err(Status::failed_precondition(format!(
                "container {} could not join network {}: {why}",
                r.container_id, r.network
            )));
        }
        self.cni_result(&task.id).await
    }

    /// Whether `netns` is the daemon's own namespace or one weft made (a
    /// network's, or one of its own tasks').
    pub(super) fn netns_is_weft(&self, netns: &Path) -> bool {
        use weft_worker::runtime::external::same_netns;
        if same_netns(netns, Path::new("/proc/self/ns/net")) {
            return true;
        }
        // Adopted namespaces (other containers', or this one's on a retried
        // ADD) are noted under netns-foreign and are not weft's.
        let foreign = self.exec_root.join("netns-foreign");
        std::fs::read_dir(self.exec_root.join("netns"))
            .map(|d| {
                d.flatten()
                    .any(|e| !foreign.join(e.file_name()).exists() && same_netns(netns, &e.path()))
            })
            .unwrap_or(false)
    }

    /// CNI DEL: see the module doc.
    pub(super) async fn cni_del(&self, r: pb::CniRequest) -> Result<pb::CniDelResponse, Status> {
        self.locked.refuse()?;
        let Some(t) = self.cni_task(&r).await? else {
            return Ok(pb::CniDelResponse {});
        };
        match remove_through_managers(&self.active, &t.id).await {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        self.wait_released(&t.id).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "container {}'s interface {} was not taken out within {} s (see the daemon's log)",
                r.container_id,
                r.ifname,
                WIRE_TIMEOUT.as_secs()
            ))
        })?;
        Ok(pb::CniDelResponse {})
    }

    /// CNI GC: this node's CNI endpoints on the network that the runtime no
    /// longer lists are removed (as DELs would).
    pub(super) async fn cni_gc(&self, r: pb::CniGcRequest) -> Result<pb::CniGcResponse, Status> {
        self.locked.refuse()?;
        let stale: Vec<String> = {
            let config = self.pushed_config().await?;
            let Some(c) = config else {
                return Ok(pb::CniGcResponse::default());
            };
            let on_network: std::collections::BTreeSet<&str> = c
                .networks
                .iter()
                .filter(|n| n.name == r.network || n.id == r.network)
                .map(|n| n.id.as_str())
                .collect();
            c.tasks
                .iter()
                .filter(|t| {
                    t.attachments
                        .iter()
                        .any(|a| on_network.contains(a.network_id.as_str()))
                })
                .filter(|t| {
                    t.external.as_ref().is_some_and(|e| {
                        e.runtime == "cni"
                            && !r
                                .valid
                                .iter()
                                .any(|v| v.container_id == e.container_id && v.ifname == e.ifname)
                    })
                })
                .map(|t| t.id.clone())
                .collect()
        };
        for id in &stale {
            match remove_through_managers(&self.active, id).await {
                Ok(()) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s),
            }
        }
        Ok(pb::CniGcResponse {
            removed_task_ids: stale,
        })
    }

    /// CNI CHECK: see the module doc.
    pub(super) async fn cni_check(&self, r: pb::CniRequest) -> Result<pb::CniResult, Status> {
        self.locked.refuse()?;
        let t = self.cni_task(&r).await?.ok_or_else(|| {
            Status::not_found(format!(
                "container {} has no interface {} on a weft network here",
                r.container_id, r.ifname
            ))
        })?;
        let pin = weft_overlay::linux::dataplane::task_netns_path(
            &self.exec_root,
            &weft_overlay::model::TaskId(t.id.clone()),
        );
        let running = matches!(
            self.runtime.status(&t.id).map(|s| s.state),
            Some(TaskState::Running { .. })
        );
        if !running || !weft_worker::runtime::external::same_netns(Path::new(&r.netns), &pin) {
            return Err(Status::failed_precondition(format!(
                "container {}'s interface {} is not wired into {:?} (task {})",
                r.container_id, r.ifname, r.netns, t.id
            )));
        }
        self.cni_result(&t.id).await
    }
}
