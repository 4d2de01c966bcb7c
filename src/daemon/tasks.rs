//! The daemon's local task commands: `weft run`, `ps`, `logs` and `rm` on
//! this node's socket.

use std::sync::Arc;

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::runtime::{RoutedRuntime, TaskRuntime, TaskState};

use super::{NodeService, not_member, worker_status};

/// The stream `weft logs` answers with.
pub(super) type LogsStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// Starts reading the log of local task `id` into `sink` (see
/// `weft_worker::logs::spawn_read`); a follow ends once the runtime reports
/// the task ended (its output is all written by then) or forgets it.
pub(super) fn read_task_log(
    runtime: &Arc<RoutedRuntime>,
    id: &str,
    opts: weft_worker::logs::reader::ReadOptions,
    sink: weft_worker::logs::LogSink,
) -> Result<(), Status> {
    let dir = runtime.log_path(id);
    if !dir.is_dir() {
        return Err(Status::not_found(format!(
            "task {id} has no log on this node (it never started here, or was removed)"
        )));
    }
    let rt = runtime.clone();
    let task = id.to_string();
    let finished = Box::new(move || rt.status(&task).is_none_or(|s| s.state.is_terminal()));
    weft_worker::logs::spawn_read(id.to_string(), dir, opts, finished, sink);
    Ok(())
}

impl NodeService {
    /// Resolves a task of this node by ID, ID prefix or name.
    pub(super) async fn local_task(&self, what: &str) -> Result<String, Status> {
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        let config = a.agent.config().borrow().clone();
        let found = config.and_then(|c| {
            let hits: Vec<String> = c
                .tasks
                .iter()
                .filter(|t| {
                    t.id == what || t.name == what || (!what.is_empty() && t.id.starts_with(what))
                })
                .map(|t| t.id.clone())
                .collect();
            (hits.len() == 1).then(|| hits[0].clone())
        });
        found.ok_or_else(|| {
            Status::not_found(format!("no task {what:?} on this node; see `weft ps -a`"))
        })
    }

    /// `weft run`: the task goes to the managers as this node's.
    pub(super) async fn run_task(&self, mut r: pb::RunTaskRequest) -> Result<pb::Task, Status> {
        self.locked.refuse()?;
        self.check_local_mounts(r.container.as_ref())?;
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        r.node_id = a.agent.node_id().to_string();
        let task = a
            .agent
            .call(|mut c| {
                let r = r.clone();
                async move { c.run_task(r).await }
            })
            .await
            .map_err(worker_status)?;
        Ok(task)
    }

    /// `weft run`'s mounts against this node's policy, before anything is
    /// asked of the managers: a bind the node refuses (or a source that
    /// does not exist) is refused up front, as Docker's `--mount` is.
    fn check_local_mounts(&self, c: Option<&pb::ContainerConfig>) -> Result<(), Status> {
        let Some(c) = c else { return Ok(()) };
        let mounts = weft_proto::isolation::mounts_from_wire(&c.mounts)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for m in mounts
            .iter()
            .filter(|m| m.kind == weft_proto::isolation::MountKind::Bind)
        {
            self.mounts.check_bind(&m.source).map_err(|e| {
                use weft_worker::runtime::containerd::mounts::MountError;
                match e {
                    MountError::Missing { .. } => Status::not_found(e.to_string()),
                    _ => Status::permission_denied(e.to_string()),
                }
            })?;
        }
        Ok(())
    }

    /// `weft ps`: this node's tasks as its runtime sees them.
    pub(super) async fn ps_tasks(&self, all: bool) -> Result<pb::ListTasksResponse, Status> {
        self.locked.refuse()?;
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        let config = a.agent.config().borrow().clone();
        let mut tasks = Vec::new();
        if let Some(c) = config {
            let names: std::collections::HashMap<&str, &str> = c
                .networks
                .iter()
                .map(|n| (n.id.as_str(), n.name.as_str()))
                .collect();
            for t in &c.tasks {
                // In the config but not in the runtime yet: pending.
                let status = match self.runtime.status(&t.id) {
                    Some(s) => weft_worker::reconcile::task_status(&s.state),
                    None => pb::TaskStatus {
                        state: pb::TaskState::Pending.into(),
                        ..Default::default()
                    },
                };
                if !all && crate::task_text::is_terminal(status.state()) {
                    continue;
                }
                tasks.push(pb::Task {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    node_id: a.record.node_id.clone(),
                    hostname: self.hostname.clone(),
                    command: t.command.clone(),
                    addresses: t
                        .attachments
                        .iter()
                        .map(|at| pb::TaskAddress {
                            ip6: at.ip6.clone(),
                            aliases: at.aliases.clone(),
                            network: names
                                .get(at.network_id.as_str())
                                .copied()
                                .unwrap_or("?")
                                .to_string(),
                            ip: at.ip.clone(),
                            mac: at.mac.clone(),
                        })
                        .collect(),
                    desired_state: pb::TaskState::Running.into(),
                    status: Some(status),
                    ports: t.ports.clone(),
                    network_mode: t.network_mode.clone(),
                    ..Default::default()
                });
            }
        }
        Ok(pb::ListTasksResponse { tasks })
    }

    /// `weft logs`: a local task's log, streamed.
    pub(super) async fn task_logs(&self, r: pb::LogsRequest) -> Result<LogsStream, Status> {
        self.locked.refuse()?;
        let id = self.local_task(&r.task).await?;
        // Bounded: the reader waits for the client; the client going away
        // drops the receiver, which ends the reader.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sink: weft_worker::logs::LogSink = Box::new(move |piece| {
            let chunk = match piece {
                Ok(lines) if lines.is_empty() => return !tx.is_closed(),
                Ok(lines) => Ok(pb::LogChunk {
                    lines,
                    ..Default::default()
                }),
                Err(e) => Err(Status::internal(format!("reading the task's log: {e}"))),
            };
            tx.blocking_send(chunk).is_ok()
        });
        read_task_log(
            &self.runtime,
            &id,
            weft_worker::logs::read_options(r.query.as_ref()),
            sink,
        )?;
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// `weft rm`: a local task, through the managers.
    pub(super) async fn rm_task(&self, r: pb::RmRequest) -> Result<pb::RemoveTaskResponse, Status> {
        self.locked.refuse()?;
        let id = self.local_task(&r.task).await?;
        if !r.force
            && matches!(
                self.runtime.status(&id).map(|s| s.state),
                Some(TaskState::Running { .. })
            )
        {
            return Err(Status::failed_precondition(format!(
                "task {} is running; remove it anyway with `weft rm -f {}`",
                r.task, r.task
            )));
        }
        remove_through_managers(&self.active, &id).await?;
        Ok(pb::RemoveTaskResponse {})
    }
}

/// Removes local task `id` through the managers (its node then stops it and
/// removes its container, log and addresses).
pub(super) async fn remove_through_managers(
    active: &tokio::sync::Mutex<Option<super::Active>>,
    id: &str,
) -> Result<(), Status> {
    let guard = active.lock().await;
    let a = guard.as_ref().ok_or_else(not_member)?;
    let node_id = a.agent.node_id().to_string();
    a.agent
        .call(|mut c| {
            let req = pb::NodeRemoveTaskRequest {
                node_id: node_id.clone(),
                task: id.to_string(),
            };
            async move { c.remove_task(req).await }
        })
        .await
        .map_err(worker_status)?;
    Ok(())
}
