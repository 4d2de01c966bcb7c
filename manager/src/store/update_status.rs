//! A service's spec replaced (`service update`, `service rollback`) and
//! the status of the update that follows: counted failures, the failure
//! action (pause, continue, roll back) and completion.
//!
//! ```text
//!            failure past the ratio (pause)
//!  updating ─────────────────────────────▶ paused ──(service update)──▶ updating
//!     │  └── failure past the ratio (rollback) ──▶ rollback_started ──▶ rollback_completed
//!     │                                                   └─ failure (pause) ─▶ rollback_paused
//!     └── every task replaced and watched ──▶ completed
//! ```
//!
//! Every transition is a command applied in log order, so every manager
//! holds the same status and a new leader goes on from it.

use super::{
    Applied, CommandResult, FailureAction, PublishMode, Service, ServiceMode, ServiceSpec, State,
    StoreError, UpdatePolicy, UpdateState, UpdateStatus,
};

/// At most this many failed tasks are remembered per update (a crashing
/// version under `--update-failure-action continue` makes new ones).
pub const MAX_COUNTED_FAILURES: usize = 1000;

/// Why a spec is replaced.
pub(super) enum UpdateKind {
    /// `service update`.
    Update,
    /// Back to the previous spec, and why (Docker's status message).
    Rollback(String),
}

impl Service {
    /// The settings the update under way follows: the spec's `--update-*`,
    /// or for a rollback the `--rollback-*` of the spec it left.
    pub fn rollout_policy(&self) -> UpdatePolicy {
        match &self.update_status {
            Some(st) if st.state.is_rollback() => self
                .previous_spec
                .as_ref()
                .map_or(self.spec.rollback, |p| p.rollback),
            _ => self.spec.update,
        }
    }

    /// How many tasks the service has when it is whole: its replicas, or
    /// for a global service the nodes it has tasks on (at least 1).
    fn whole(&self, state: &State) -> u64 {
        match self.spec.mode {
            ServiceMode::Replicated { replicas } => replicas.max(1),
            ServiceMode::Global => {
                let nodes: std::collections::BTreeSet<_> = state
                    .tasks
                    .values()
                    .filter(|t| t.service.as_ref().is_some_and(|r| r.service == self.id))
                    .map(|t| t.node)
                    .collect();
                (nodes.len() as u64).max(1)
            }
        }
    }
}

impl State {
    /// Replaces service `id`'s spec: VIPs and published ports follow, the
    /// version goes up when the tasks must be replaced (their spec,
    /// networks, endpoint mode or ingress changed, or `force`), and such
    /// an update (or rollback) starts a new [`UpdateStatus`]. An update
    /// that replaces no task resumes a paused one.
    pub(super) fn replace_service_spec(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        force: bool,
        now_ms: u64,
        kind: UpdateKind,
    ) -> CommandResult {
        let old = self
            .services
            .get(id)
            .ok_or_else(|| StoreError::ServiceNotFound(id.to_string()))?;
        if spec.name != old.spec.name && self.services.values().any(|x| x.spec.name == spec.name) {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
        self.check_service_names(id, spec)?;
        // Tasks of the version that ran this spec before are its own again.
        let adopt = (matches!(kind, UpdateKind::Rollback(_))
            && old.previous_spec.as_deref() == Some(spec))
        .then_some(old.previous_version)
        .filter(|v| *v != 0);
        let vips = self.allocate_vips(spec, Some(old))?;
        let vips6 = self.allocate_vips6(Some(old), &vips)?;
        let had_ingress = old.ports.iter().any(|p| p.mode == PublishMode::Ingress);
        let keep = old.ports.clone();
        let old_spec = old.spec.clone();
        let old_version = old.version;
        let old_vips = old.vips.clone();
        let old_vips6 = old.vips6.clone();
        // Refused, this changes nothing.
        let ports = self.service_ports(spec, id, &keep, now_ms)?;
        self.allocated_vips(&vips, &old_vips);
        self.allocated_vips(&vips6, &old_vips6);
        let has_ingress = ports.iter().any(|p| p.mode == PublishMode::Ingress);
        let tasks_change = force
            || spec.task != old_spec.task
            || spec.networks != old_spec.networks
            || spec.endpoint_mode != old_spec.endpoint_mode
            || had_ingress != has_ingress;
        let version = old_version + u64::from(tasks_change);
        let changed_spec = *spec != old_spec;
        let svc = self.services.get_mut(id).expect("checked above");
        if changed_spec {
            svc.previous_spec = Some(Box::new(old_spec));
            svc.previous_version = old_version;
        }
        svc.spec = spec.clone();
        svc.vips = vips;
        svc.vips6 = vips6;
        svc.ports = ports;
        svc.version = version;
        svc.updated_at_ms = now_ms;
        let (state, message) = match kind {
            UpdateKind::Update => (UpdateState::Updating, String::new()),
            UpdateKind::Rollback(why) => (UpdateState::RollbackStarted, why),
        };
        if tasks_change && let Some(adopted) = adopt {
            for t in self.tasks.values_mut() {
                if let Some(r) = t.service.as_mut()
                    && r.service == id
                    && r.version == adopted
                {
                    r.version = version;
                }
            }
        }
        let svc = self.services.get_mut(id).expect("checked above");
        if tasks_change {
            svc.update_status = Some(UpdateStatus {
                state,
                started_at_ms: now_ms,
                completed_at_ms: 0,
                message,
                failures: Vec::new(),
                changed_spec,
            });
        } else if state == UpdateState::RollbackStarted {
            // Back to a spec whose tasks are the same: nothing to replace.
            svc.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackCompleted,
                started_at_ms: now_ms,
                completed_at_ms: now_ms,
                message,
                failures: Vec::new(),
                changed_spec,
            });
        } else if let Some(st) = svc.update_status.as_mut() {
            let resumed = match st.state {
                UpdateState::Paused => UpdateState::Updating,
                UpdateState::RollbackPaused => UpdateState::RollbackStarted,
                other => other,
            };
            if resumed != st.state {
                st.state = resumed;
                st.completed_at_ms = 0;
                st.message.clear();
                st.failures.clear();
            }
        }
        Ok(Applied::Done)
    }

    /// `service rollback`: the previous spec back.
    pub(super) fn rollback_service(&mut self, id: &str, now_ms: u64) -> CommandResult {
        let svc = self
            .services
            .get(id)
            .ok_or_else(|| StoreError::ServiceNotFound(id.to_string()))?;
        let previous = svc
            .previous_spec
            .clone()
            .ok_or_else(|| StoreError::NoPreviousSpec(svc.spec.name.clone()))?;
        let why = UpdateKind::Rollback("manually requested rollback".into());
        self.replace_service_spec(id, &previous, false, now_ms, why)
    }

    /// Counts `task`'s end against the update of `service`'s `version`
    /// under way, and takes the failure action once the failures pass
    /// `--update-max-failure-ratio` of the service's tasks. A no-op when
    /// that update is over, the task is gone or already counted.
    pub(super) fn count_update_failure(
        &mut self,
        service: &str,
        version: u64,
        task: &str,
        now_ms: u64,
    ) -> CommandResult {
        let (Some(svc), Some(t)) = (self.services.get(service), self.tasks.get(task)) else {
            return Ok(Applied::Done);
        };
        let Some(st) = svc.update_status.as_ref() else {
            return Ok(Applied::Done);
        };
        if svc.version != version
            || !st.state.in_progress()
            || st.failures.iter().any(|f| f == task)
            || st.failures.len() >= MAX_COUNTED_FAILURES
        {
            return Ok(Applied::Done);
        }
        let whole = svc.whole(self);
        let policy = svc.rollout_policy();
        let why = format!("failure or early termination of task {}", t.name);
        let rollback_to = svc
            .previous_spec
            .as_deref()
            .filter(|_| st.changed_spec)
            .cloned();
        let failed = st.failures.len() as u128 + 1;
        let over =
            failed * 1_000_000 > u128::from(whole) * u128::from(policy.max_failure_ratio_ppm);
        let state = st.state;
        let svc = self.services.get_mut(service).expect("read above");
        let st = svc.update_status.as_mut().expect("read above");
        st.failures.push(task.to_string());
        if !over {
            return Ok(Applied::Done);
        }
        let pause = |st: &mut UpdateStatus, to: UpdateState, message: String| {
            st.state = to;
            st.message = message;
            st.completed_at_ms = now_ms;
        };
        match (state, policy.failure_action) {
            (_, FailureAction::Continue) => {}
            (UpdateState::Updating, FailureAction::Rollback) => match rollback_to {
                Some(previous) => {
                    let back = UpdateKind::Rollback(format!("update rolled back due to {why}"));
                    // A refused replacement changes nothing (only the count).
                    if let Err(e) =
                        self.replace_service_spec(service, &previous, false, now_ms, back)
                    {
                        let st = self.update_status_mut(service);
                        let msg = format!("update paused due to {why}; its rollback failed: {e}");
                        pause(st, UpdateState::Paused, msg);
                    }
                }
                None => {
                    let msg =
                        format!("update paused due to {why} (no previous spec to roll back to)");
                    pause(st, UpdateState::Paused, msg);
                }
            },
            (UpdateState::Updating, _) => {
                pause(
                    st,
                    UpdateState::Paused,
                    format!("update paused due to {why}"),
                );
            }
            (_, _) => {
                let msg = format!("rollback paused due to {why}");
                pause(st, UpdateState::RollbackPaused, msg);
            }
        }
        Ok(Applied::Done)
    }

    /// The update (or rollback) of `service`'s `version` completed; a no-op
    /// when it is not the one under way.
    pub(super) fn complete_update(
        &mut self,
        service: &str,
        version: u64,
        now_ms: u64,
    ) -> CommandResult {
        if let Some(svc) = self.services.get_mut(service)
            && svc.version == version
            && let Some(st) = svc.update_status.as_mut()
            && st.state.in_progress()
        {
            st.state = if st.state.is_rollback() {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            st.completed_at_ms = now_ms;
        }
        Ok(Applied::Done)
    }

    /// The status of a service known to have one.
    fn update_status_mut(&mut self, service: &str) -> &mut UpdateStatus {
        self.services
            .get_mut(service)
            .and_then(|s| s.update_status.as_mut())
            .expect("an update under way")
    }
}
