//! Starts and removals in flight. They run as background jobs, so a task's
//! grace period (10 s by default) or a slow start never stalls the loop:
//! every other task keeps converging meanwhile.
//!
//! ```text
//!  converge ── task assigned, not known ──▶ start job ──┐
//!     │     ── task known, not assigned ──▶ remove job ─┤ (stop signal, grace,
//!     │                                                 │  SIGKILL, delete)
//!     ◀───────────── the loop wakes when one ends ◀─────┘
//! ```
//!
//! A task being removed keeps its network namespace and addresses until it
//! is gone (it was already taken out of its service's VIP and DNS by the
//! manager), unless a task that is assigned now needs one of its addresses
//! (the manager frees a removed task's addresses at once, and hands out the
//! lowest free one): then its networks go at once (or only its way out,
//! for its gateway address) and only its process is left to finish.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{Id, JoinSet};
use weft_proto::v1 as pb;

use crate::runtime::{NetworkReady, TaskRuntime, TaskSpec, TaskStatus};

/// How many tasks a node starts at once.
const PARALLEL_STARTS: usize = 8;
/// How long a stopping loop waits for starts under way to finish, so none
/// is left half made.
const START_DRAIN: Duration = Duration::from_secs(30);

/// How a job ended.
enum Done {
    Started(Result<TaskStatus, String>),
    Removed(Result<(), String>),
}

/// The jobs under way and what they leave for the loop to report.
pub(super) struct Inflight {
    starts: JoinSet<Done>,
    removals: JoinSet<Done>,
    /// Which task each job is for.
    job_task: HashMap<Id, String>,
    /// Tasks being started.
    starting: BTreeSet<String>,
    /// Tasks being stopped and removed, with the config they had when they
    /// were last assigned (absent for a task adopted but never assigned).
    removing: BTreeMap<String, Option<pb::TaskConfig>>,
    /// Tasks the runtime refused to start, with why; reported as failed
    /// while they stay assigned, and not tried again.
    refused: BTreeMap<String, String>,
    /// The last config of every assigned task.
    seen: BTreeMap<String, pb::TaskConfig>,
    limit: Arc<Semaphore>,
}

impl Inflight {
    pub(super) fn new() -> Self {
        Self {
            starts: JoinSet::new(),
            removals: JoinSet::new(),
            job_task: HashMap::new(),
            starting: BTreeSet::new(),
            removing: BTreeMap::new(),
            refused: BTreeMap::new(),
            seen: BTreeMap::new(),
            limit: Arc::new(Semaphore::new(PARALLEL_STARTS)),
        }
    }

    /// Notes the tasks `c` assigns and forgets what no longer matters: the
    /// config of a task neither assigned nor `known` to the runtime (a
    /// known one may be about to be removed, and keeps its network while
    /// it drains).
    pub(super) fn observe(&mut self, c: &pb::NodeConfig, known: &[TaskStatus]) {
        for t in &c.tasks {
            self.seen.insert(t.id.clone(), t.clone());
        }
        let assigned: BTreeSet<&str> = c.tasks.iter().map(|t| t.id.as_str()).collect();
        let known: BTreeSet<&str> = known.iter().map(|s| s.id.as_str()).collect();
        self.seen
            .retain(|id, _| assigned.contains(id.as_str()) || known.contains(id.as_str()));
        self.refused.retain(|id, _| assigned.contains(id.as_str()));
    }

    /// The jobs' part of the planner's snapshot: what is starting, being
    /// removed, or was refused.
    pub(super) fn view(&self) -> super::TaskView {
        super::TaskView {
            starting: self.starting.clone(),
            removing: self.removing.keys().cloned().collect(),
            refused: self.refused.clone(),
            ..Default::default()
        }
    }

    /// Starts `spec` in the background (at most [`PARALLEL_STARTS`] at
    /// once), its process run once `network` is ready.
    pub(super) fn start(
        &mut self,
        runtime: Arc<dyn TaskRuntime>,
        spec: TaskSpec,
        network: NetworkReady,
    ) {
        let id = spec.id.clone();
        let limit = self.limit.clone();
        let job = self.starts.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let t0 = std::time::Instant::now();
            let r = runtime
                .start_when(&spec, network)
                .await
                .map_err(|e| e.to_string());
            tracing::debug!(task = %spec.id, ms = t0.elapsed().as_millis() as u64, ok = r.is_ok(), "start job done");
            Done::Started(r)
        });
        self.job_task.insert(job.id(), id.clone());
        self.starting.insert(id);
    }

    /// Stops and removes task `id` in the background.
    pub(super) fn remove(&mut self, runtime: Arc<dyn TaskRuntime>, id: &str) {
        let config = self.seen.remove(id);
        let task = id.to_owned();
        let job = self.removals.spawn(async move {
            Done::Removed(runtime.remove(&task).await.map_err(|e| e.to_string()))
        });
        self.job_task.insert(job.id(), id.to_owned());
        self.removing.insert(id.to_owned(), config);
    }

    /// Waits for the next job to end and records how it did; pending
    /// forever when none runs (for `select!`).
    pub(super) async fn next(&mut self) {
        let done = tokio::select! {
            Some(r) = self.starts.join_next_with_id(), if !self.starts.is_empty() => r,
            Some(r) = self.removals.join_next_with_id(), if !self.removals.is_empty() => r,
            else => std::future::pending().await,
        };
        let (job, done) = match done {
            Ok((job, done)) => (job, Some(done)),
            Err(e) => (e.id(), None),
        };
        let Some(id) = self.job_task.remove(&job) else {
            return;
        };
        match done {
            Some(Done::Started(Ok(_))) => {
                self.starting.remove(&id);
            }
            Some(Done::Started(Err(e))) => {
                tracing::warn!(task = %id, error = %e, "task not started");
                self.starting.remove(&id);
                self.refused.insert(id, e);
            }
            Some(Done::Removed(r)) => {
                if let Err(e) = r {
                    // Still known to the runtime: the next pass tries again.
                    tracing::warn!(task = %id, error = %e, "could not remove task");
                }
                self.removing.remove(&id);
            }
            None => {
                tracing::warn!(task = %id, "a task job ended abnormally");
                self.starting.remove(&id);
                self.removing.remove(&id);
            }
        }
    }

    /// At the loop's end: starts under way finish (bounded), so none is
    /// left half made; removals are dropped, and their tasks stay until the
    /// next daemon adopts and removes them.
    pub(super) async fn shutdown(&mut self) {
        self.removals.abort_all();
        let drain = async { while self.starts.join_next().await.is_some() {} };
        if tokio::time::timeout(START_DRAIN, drain).await.is_err() {
            tracing::warn!("task starts still under way at shutdown: abandoned");
            self.starts.abort_all();
        }
    }

    /// The config the data plane gets: `c` plus the tasks being removed, so
    /// they keep their network until they are gone.
    pub(super) fn plane_config<'a>(
        &self,
        c: &'a pb::NodeConfig,
    ) -> std::borrow::Cow<'a, pb::NodeConfig> {
        draining_plane(c, self.removing.values().flatten())
    }
}

/// `c` plus the `draining` tasks that can keep their network: attached only
/// to networks `c` still has, with no address (or gateway address) that an
/// assigned task uses. What they keep is their namespace and addresses,
/// not their published ports (a replacement may need the port).
fn draining_plane<'a, 'b>(
    c: &'a pb::NodeConfig,
    draining: impl Iterator<Item = &'b pb::TaskConfig>,
) -> std::borrow::Cow<'a, pb::NodeConfig> {
    let assigned: BTreeSet<&str> = c.tasks.iter().map(|t| t.id.as_str()).collect();
    let mut used: BTreeSet<(&str, &str)> = c
        .tasks
        .iter()
        .flat_map(|t| t.attachments.iter())
        .map(|a| (a.network_id.as_str(), a.ip.as_str()))
        .collect();
    let mut gateways: BTreeSet<&str> = c
        .tasks
        .iter()
        .map(|t| t.gateway_ip.as_str())
        .filter(|g| !g.is_empty())
        .collect();
    let networks: BTreeSet<&str> = c.networks.iter().map(|n| n.id.as_str()).collect();
    let mut extra = Vec::new();
    for t in draining {
        if assigned.contains(t.id.as_str()) || t.network_mode == "host" {
            continue;
        }
        let keeps = t.attachments.iter().all(|a| {
            networks.contains(a.network_id.as_str())
                && !used.contains(&(a.network_id.as_str(), a.ip.as_str()))
        });
        if !keeps {
            continue;
        }
        used.extend(
            t.attachments
                .iter()
                .map(|a| (a.network_id.as_str(), a.ip.as_str())),
        );
        // Its way out goes if a new task has its gateway address.
        let keeps_gateway = !t.gateway_ip.is_empty() && gateways.insert(t.gateway_ip.as_str());
        extra.push(pb::TaskConfig {
            ports: Vec::new(),
            gateway_ip: if keeps_gateway {
                t.gateway_ip.clone()
            } else {
                String::new()
            },
            gateway_mac: if keeps_gateway {
                t.gateway_mac.clone()
            } else {
                String::new()
            },
            ..t.clone()
        });
    }
    if extra.is_empty() {
        return std::borrow::Cow::Borrowed(c);
    }
    let mut out = c.clone();
    out.tasks.extend(extra);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, net: &str, ip: &str, gw: &str) -> pb::TaskConfig {
        pb::TaskConfig {
            id: id.into(),
            attachments: vec![pb::TaskAttachment {
                network_id: net.into(),
                ip: ip.into(),
                ..Default::default()
            }],
            gateway_ip: gw.into(),
            ports: vec![pb::PortMapping {
                protocol: "tcp".into(),
                published: 8080,
                target: 80,
                mode: "host".into(),
            }],
            ..Default::default()
        }
    }

    fn config(tasks: Vec<pb::TaskConfig>) -> pb::NodeConfig {
        pb::NodeConfig {
            networks: vec![pb::NetworkConfig {
                id: "n1".into(),
                ..Default::default()
            }],
            tasks,
            ..Default::default()
        }
    }

    fn ids(c: &pb::NodeConfig) -> Vec<&str> {
        c.tasks.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn a_draining_task_keeps_its_network_but_not_its_ports() {
        let c = config(vec![task("a", "n1", "10.0.0.2/24", "172.18.0.2")]);
        let old = task("b", "n1", "10.0.0.3/24", "172.18.0.3");
        let plane = draining_plane(&c, [&old].into_iter());
        assert_eq!(ids(&plane), ["a", "b"]);
        assert!(plane.tasks[1].ports.is_empty(), "its ports are free");
        assert_eq!(plane.tasks[1].attachments, old.attachments);
    }

    #[test]
    fn a_draining_task_gives_way_to_assigned_ones() {
        // Its address went to a new task.
        let c = config(vec![task("a", "n1", "10.0.0.3/24", "172.18.0.2")]);
        let old = task("b", "n1", "10.0.0.3/24", "172.18.0.3");
        assert_eq!(ids(&draining_plane(&c, [&old].into_iter())), ["a"]);
        // Its gateway address did: it keeps its network, not its way out.
        let old = task("b", "n1", "10.0.0.4/24", "172.18.0.2");
        let plane = draining_plane(&c, [&old].into_iter());
        assert_eq!(ids(&plane), ["a", "b"]);
        assert_eq!(plane.tasks[1].gateway_ip, "");
        // Its network is gone.
        let old = task("b", "n2", "10.0.0.4/24", "");
        assert_eq!(ids(&draining_plane(&c, [&old].into_iter())), ["a"]);
        // It is assigned again (its own config wins).
        let old = task("a", "n1", "10.0.0.9/24", "");
        assert_eq!(ids(&draining_plane(&c, [&old].into_iter())), ["a"]);
        // Two draining tasks with one address: the first keeps it.
        let c = config(vec![]);
        let (x, y) = (
            task("x", "n1", "10.0.0.5/24", ""),
            task("y", "n1", "10.0.0.5/24", ""),
        );
        assert_eq!(ids(&draining_plane(&c, [&x, &y].into_iter())), ["x"]);
    }

    #[test]
    fn nothing_draining_borrows_the_config() {
        let c = config(vec![task("a", "n1", "10.0.0.2/24", "")]);
        assert!(matches!(
            draining_plane(&c, std::iter::empty()),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
