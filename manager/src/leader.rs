//! The loops that run while this manager leads: liveness and membership.
//!
//! Both are level-triggered: they wake on every store change and on a
//! timer, ask a pure planner what the store or Raft membership needs, and
//! act only by proposing commands or changing membership. On a follower
//! they do nothing.

use std::time::Duration;

use tokio::sync::watch;

use crate::core::Core;
use crate::dispatcher::liveness::{Hold, MAX_HOLD_PERIODS, Plan};
use crate::membership::{self, MembershipOp};

/// How long a new manager may take to catch up before we try again.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(20);

/// Runs the liveness loop until `stop` flips to true.
pub async fn liveness_loop(core: Core, mut stop: watch::Receiver<bool>) {
    let mut changes = core.store().subscribe();
    let mut said_hold = false;
    loop {
        let settings = core.cluster().map(|c| c.settings.clone()).ok();
        let period = settings
            .as_ref()
            .map(|s| Duration::from_millis(s.heartbeat_period_ms))
            .unwrap_or(Duration::from_secs(1));
        let grace = settings
            .and_then(|s| s.disconnect_grace_ms)
            .map(Duration::from_millis);
        // A quarter of the shorter of the two: a node is marked down within
        // a quarter more than its deadline.
        let tick = (grace.map_or(period, |g| g.min(period)) / 4).max(Duration::from_millis(25));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {},
            r = changes.changed() => if r.is_err() { return },
        }
        if *stop.borrow() {
            return;
        }
        let leading = core.is_leader();
        core.set_leading(leading);
        if !leading {
            report_hold(&mut said_hold, None, period);
            continue;
        }
        // This manager heartbeats itself: it is alive if it is leading.
        core.seen(core.node_id());
        // All at once: Raft commits concurrent writes together, so a herd
        // of nodes coming up (or going down) costs a few commits, not one
        // each in turn.
        let plan = core.liveness_plan(period, grace);
        report_stall(&plan);
        report_hold(&mut said_hold, Some(&plan), period);
        let writes = plan.commands.into_iter().map(|cmd| {
            // A node marked down: which, and why (its tasks move).
            let down = match &cmd {
                crate::store::Command::SetNodeState {
                    id,
                    state: crate::store::NodeState::Down,
                    message,
                    ..
                } => Some((*id, message.clone())),
                _ => None,
            };
            let core = &core;
            async move { (down, core.propose(cmd).await) }
        });
        for (down, r) in futures::future::join_all(writes).await {
            match (r, down) {
                (Err(e), _) => {
                    tracing::warn!(error = %e, "could not record node liveness");
                    break;
                }
                (Ok(_), Some((node, reason))) => {
                    tracing::warn!(%node, %reason, "node marked down");
                    crate::metrics::METRICS.nodes_marked_down.inc();
                }
                (Ok(_), None) => {}
            }
        }
        core.liveness_awake();
    }
}

/// Says when this leader starts holding down marks back because most
/// nodes are silent at once (`liveness`'s doc) and when it stops; `said`:
/// whether it has said it started. `plan` is `None` once it no longer
/// leads.
fn report_hold(said: &mut bool, plan: Option<&Plan>, period: Duration) {
    let held = match plan.map(|p| p.hold) {
        Some(Hold::Holding { held }) => held,
        _ => 0,
    };
    crate::metrics::METRICS
        .down_marks_held
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    let Some(p) = plan else {
        if std::mem::take(said) {
            tracing::info!("no longer the leader: no down marks held back here");
        }
        return;
    };
    match p.hold {
        Hold::Holding { held } if held > 0 && !*said => {
            *said = true;
            tracing::warn!(
                silent = p.silent,
                ready = p.ready,
                held,
                up_to_secs = (period * MAX_HOLD_PERIODS).as_secs_f64(),
                "most ready nodes are silent at once: holding their down marks back, taking it \
                 for a fault on this leader's side (its network, its load)"
            );
        }
        Hold::Expired if std::mem::take(said) => tracing::warn!(
            silent = p.silent,
            ready = p.ready,
            "most ready nodes are still silent after the hold: marking them down"
        ),
        Hold::Ended if std::mem::take(said) => tracing::info!(
            silent = p.silent,
            ready = p.ready,
            "the hold ended: most nodes answer again, and those still silent have three \
             heartbeat periods from now"
        ),
        Hold::Off if std::mem::take(said) => tracing::info!(
            silent = p.silent,
            ready = p.ready,
            "the hold is over: most nodes answer again"
        ),
        _ => {}
    }
}

/// Says when this leader's liveness loop stalled (`liveness`'s doc).
fn report_stall(plan: &Plan) {
    if let Some(gap) = plan.stalled {
        crate::metrics::METRICS.liveness_stalls.inc();
        tracing::warn!(
            gap_ms = gap.as_millis() as u64,
            "this leader's liveness loop did not run for more than a heartbeat period (its \
             process paused or starved): nodes' silence counts from now"
        );
    }
}

/// Runs the membership loop until `stop` flips to true.
pub async fn membership_loop(core: Core, mut stop: watch::Receiver<bool>) {
    let mut changes = core.store().subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            r = changes.changed() => if r.is_err() { return },
        }
        if *stop.borrow() {
            return;
        }
        if !core.is_leader() {
            continue;
        }
        let m = core.raft().metrics();
        let voters = m.voters.keys().copied().collect();
        let up =
            |id| membership::caught_up(m.matched.get(&id).copied().flatten(), m.last_log_index);
        let op = core.read(|s| membership::plan(s, &voters, &m.learners, up));
        let Some(op) = op else { continue };
        tracing::info!(?op, "changing Raft membership");
        let result = match &op {
            MembershipOp::AddLearner { id, addr } => {
                match tokio::time::timeout(
                    LEARNER_CATCH_UP,
                    core.raft().add_learner(*id, addr, true),
                )
                .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("manager {id} at {addr} did not catch up in time")),
                }
            }
            MembershipOp::SetVoters(voters) => core
                .raft()
                .change_membership(voters.clone())
                .await
                .map_err(|e| e.to_string()),
            MembershipOp::RemoveLearners(learners) => core
                .raft()
                .remove_learners(learners.clone())
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(?op, error = %e, "membership change failed; will retry");
        }
    }
}

/// Runs the orchestrator loop until `stop` flips to true: services to
/// tasks (see [`crate::orchestrator`]).
pub async fn orchestrator_loop(core: Core, mut stop: watch::Receiver<bool>) {
    let mut changes = core.store().subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            r = changes.changed() => if r.is_err() { return },
        }
        if *stop.borrow() {
            return;
        }
        if !core.is_leader() {
            continue;
        }
        let now = crate::core::now_ms();
        let mut cmds = core.read(|s| crate::orchestrator::plan(s, now, crate::validate::random_id));
        cmds.extend(core.read(|s| key_rotations(s, now)));
        // Proposed together, so Raft commits them in one or two batches.
        let results = futures::future::join_all(cmds.into_iter().map(|c| core.propose(c))).await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            tracing::warn!(error = %e, "orchestrator could not apply a change; will retry");
        }
    }
}

/// Nodes whose WireGuard key is older than the rotation interval.
pub fn key_rotations(s: &crate::store::State, now_ms: u64) -> Vec<crate::store::Command> {
    let Some(c) = s.cluster.as_ref() else {
        return Vec::new();
    };
    let every = c.settings.wg_key_rotation_secs.saturating_mul(1000);
    if every == 0 {
        return Vec::new();
    }
    s.nodes
        .values()
        .filter(|n| !n.wg_public_key.is_empty())
        .filter(|n| now_ms.saturating_sub(n.wg_key_since_ms) >= every)
        .map(|n| crate::store::Command::RotateNodeKey { id: n.id, now_ms })
        .collect()
}
