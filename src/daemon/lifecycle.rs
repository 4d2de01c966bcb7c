//! `weft stop`, `weft start` (and so `weft restart`) and `weft inspect` of
//! this node's tasks.
//!
//! A standalone task (`weft run`) stays in the store with desired state
//! RUNNING all along: stopping it is this node's business (its runtime
//! stops the container, whose status becomes EXITED, and a standalone task
//! is never restarted by anyone), and so is starting it again (the runtime
//! forgets the ended container, and the node's loop, which sees a task it
//! is assigned and does not run, starts it anew with the same spec and
//! addresses). Tasks of services belong to their orchestrator: both are
//! refused with a pointer to `weft service scale/update`.

use std::time::{Duration, SystemTime};

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::runtime::{TaskRuntime, TaskState};

use super::{NodeService, not_member};

/// How long `weft start` waits for the node's loop to start the task again.
const START_WAIT: Duration = Duration::from_secs(60);

fn unix_ms(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Refuses tasks of services: their orchestrator decides whether they run.
fn standalone(t: &pb::TaskConfig, verb: &str) -> Result<(), Status> {
    if t.service.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "task {} belongs to service {:?}: its orchestrator decides whether it runs; use \
         `weft service scale {}=N` or `weft service update` instead of `weft {verb}`",
        t.name, t.service, t.service
    )))
}

impl NodeService {
    /// The config of local task `what` (ID, unique ID prefix or name).
    pub(super) async fn local_task_config(&self, what: &str) -> Result<pb::TaskConfig, Status> {
        let id = self.local_task(what).await?;
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        let config = a.agent.config().borrow().clone();
        config
            .and_then(|c| c.tasks.iter().find(|t| t.id == id).cloned())
            .ok_or_else(|| Status::not_found(format!("task {what:?} has just left this node")))
    }

    /// `weft stop`: see the module header. Returns once the task has ended.
    pub(super) async fn stop_task(&self, r: pb::StopRequest) -> Result<pb::StopResponse, Status> {
        self.locked.refuse()?;
        let t = self.local_task_config(&r.task).await?;
        standalone(&t, "stop")?;
        if r.grace_ms
            .is_some_and(|g| g > weft_manager::validate::MAX_STOP_GRACE_MS)
        {
            return Err(Status::invalid_argument(format!(
                "a stop timeout of at most {} s",
                weft_manager::validate::MAX_STOP_GRACE_MS / 1000
            )));
        }
        if self.runtime.status(&t.id).is_none() {
            // Not started yet (or refused): nothing runs to stop.
            return Ok(pb::StopResponse {});
        }
        self.runtime
            .stop(&t.id, r.grace_ms.map(Duration::from_millis))
            .await
            .map_err(|e| Status::internal(format!("stopping task {}: {e}", t.name)))?;
        // Its exit is noted by the runtime's exit watcher a moment after
        // the process ended: `weft ps` right after shows it exited.
        match tokio::time::timeout(Duration::from_secs(10), self.runtime.wait(&t.id)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => tracing::warn!(task = %t.id, "stopped, but no exit noted within 10 s"),
        }
        Ok(pb::StopResponse {})
    }

    /// `weft start`: see the module header. Returns once the task runs
    /// again (or has ended again, or failed to start).
    pub(super) async fn start_task(
        &self,
        r: pb::StartRequest,
    ) -> Result<pb::StartResponse, Status> {
        self.locked.refuse()?;
        let t = self.local_task_config(&r.task).await?;
        standalone(&t, "start")?;
        let before = match self.runtime.status(&t.id) {
            None => {
                return Err(Status::failed_precondition(format!(
                    "task {} has not started on this node yet (or could not start); see \
                     `weft ps -a`",
                    t.name
                )));
            }
            Some(s) if !s.state.is_terminal() => {
                return Ok(pb::StartResponse {
                    status: Some(weft_worker::reconcile::task_status(&s.state)),
                });
            }
            Some(s) => s,
        };
        self.runtime
            .remove(&t.id)
            .await
            .map_err(|e| Status::internal(format!("clearing task {}'s last run: {e}", t.name)))?;
        self.wake.notify_one();
        let mut events = self.runtime.subscribe();
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            match self.runtime.status(&t.id) {
                Some(s) if s.started_at != before.started_at || s.state.is_terminal() => {
                    return Ok(pb::StartResponse {
                        status: Some(weft_worker::reconcile::task_status(&s.state)),
                    });
                }
                _ => {}
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Status::deadline_exceeded(format!(
                        "task {} was not started again within {} s; see `weft ps -a` and the \
                         daemon's log",
                        t.name,
                        START_WAIT.as_secs()
                    )));
                }
            }
        }
    }

    /// `weft inspect`: the task's config, status and addresses here.
    pub(super) async fn inspect_task(
        &self,
        r: pb::InspectRequest,
    ) -> Result<pb::InspectResponse, Status> {
        self.locked.refuse()?;
        let t = self.local_task_config(&r.task).await?;
        let ps = self.ps_tasks(true).await?;
        let listed = ps.tasks.into_iter().find(|x| x.id == t.id);
        let run = self.runtime.status(&t.id);
        let status = match &run {
            Some(s) => weft_worker::reconcile::task_status(&s.state),
            None => listed
                .as_ref()
                .and_then(|x| x.status.clone())
                .unwrap_or_default(),
        };
        let node_id = {
            let guard = self.active.lock().await;
            let a = guard.as_ref().ok_or_else(not_member)?;
            a.agent.node_id().to_string()
        };
        Ok(pb::InspectResponse {
            status: Some(status),
            started_at_ms: unix_ms(run.as_ref().and_then(|s| s.started_at)),
            finished_at_ms: unix_ms(
                run.as_ref()
                    .filter(|s| matches!(s.state, TaskState::Exited { .. }))
                    .and_then(|s| s.finished_at),
            ),
            addresses: listed.map(|x| x.addresses).unwrap_or_default(),
            node_id,
            hostname: self.hostname.clone(),
            log_path: self.runtime.log_path(&t.id).display().to_string(),
            config: Some(t),
        })
    }
}
