//! `weft doctor`, the cluster half: checks of what breaks overlays in
//! practice, each a row with a verdict and a hint that says what to do.
//!
//! ```text
//!  weft doctor ──unix socket──▶ daemon ── local checks (worker::doctor: nft, tables,
//!                                 │        gateway bridge vs routes, own certificate)
//!                                 ▼
//!            Control.Doctor (manager) / Dispatcher.NodeDoctor (worker)
//!                                 │  a follower forwards to the leader
//!                                 ▼
//!  leader: checks over the store and Raft (checks.rs, pure)
//!          ├─ duplicate advertise / data-path addresses
//!          ├─ Raft quorum, replication lag per manager
//!          └─ node certificate expiry
//!        + probes (probes.rs): one ProbeRequest per live node, on its session
//!                                 │
//!          node: manager ports over mTLS gRPC, VXLAN echo and MTU ladder
//!                through a probe VXLAN device (reserved VNI), ICMP through
//!                WireGuard, and its own checks ── Dispatcher.ReportProbe ──▶ leader
//!          leader: pairwise rows, clock skew from the answers' timestamps,
//!                  the nodes' own checks (one OK row, or one per node not OK)
//! ```
//!
//! Deciding is pure ([`checks`], [`probes::evaluate`]); asking the nodes is
//! [`run`]'s. A check that could not be made says so ("not checked: …",
//! WARN), never OK.

pub mod checks;
pub mod probes;

use std::time::Duration;

use weft_proto::v1 as pb;

use crate::core::{Core, now_ms};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works now, but something is off or could not be checked.
    Warn,
    /// Overlays break (or will) until the hint is followed.
    Fail,
}

/// One row of the doctor's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`vxlan`, `mtu`, `raft-quorum`, …).
    pub check: String,
    /// Which node, pair or object; empty: the cluster.
    pub subject: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (empty when OK).
    pub hint: String,
}

impl Check {
    /// A passed check.
    pub fn ok(check: &str, subject: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            subject: subject.into(),
            status: Status::Ok,
            detail: detail.into(),
            hint: String::new(),
        }
    }

    /// A warning, with what to do.
    pub fn warn(
        check: &str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::with(Status::Warn, check, subject, detail, hint)
    }

    /// A failure, with what to do.
    pub fn fail(
        check: &str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::with(Status::Fail, check, subject, detail, hint)
    }

    fn with(
        status: Status,
        check: &str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            status,
            hint: hint.into(),
            ..Check::ok(check, subject, detail)
        }
    }
}

impl From<Status> for pb::DoctorStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Ok => pb::DoctorStatus::Ok,
            Status::Warn => pb::DoctorStatus::Warn,
            Status::Fail => pb::DoctorStatus::Fail,
        }
    }
}

impl Status {
    /// A status from the wire; an unknown one is a warning (a newer node's).
    pub fn from_wire(v: i32) -> Status {
        match pb::DoctorStatus::try_from(v) {
            Ok(pb::DoctorStatus::Ok) => Status::Ok,
            Ok(pb::DoctorStatus::Fail) => Status::Fail,
            _ => Status::Warn,
        }
    }
}

impl From<Check> for pb::DoctorCheck {
    fn from(c: Check) -> Self {
        pb::DoctorCheck {
            check: c.check,
            subject: c.subject,
            status: pb::DoctorStatus::from(c.status) as i32,
            detail: c.detail,
            hint: c.hint,
        }
    }
}

/// How long nodes have to answer a probe request (their own probes wait
/// [`probes::NODE_TIMEOUT`] for answers, the rest is slack).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(12);

/// The cluster checks as this manager sees them; with `probe`, also the
/// pairwise probes, which only the leader (holder of every session) runs.
pub async fn run(core: &Core, probe: bool) -> Vec<Check> {
    let metrics = core.raft().metrics();
    let now = time::OffsetDateTime::now_utc();
    let mut out = core.read(|s| {
        let mut v = checks::addresses(s);
        v.extend(checks::raft(&metrics, s));
        v.extend(checks::certificates(s, now));
        v
    });
    if !probe {
        out.push(Check::warn(
            "probes",
            "",
            "not checked: the pairwise probes were not asked for",
            "run `weft doctor` without --no-probe",
        ));
        return out;
    }
    if !core.is_leader() {
        out.push(Check::warn(
            "probes",
            "",
            "not checked: this manager is not the leader and could not reach it",
            "run `weft doctor` again once the cluster has a leader (see the raft rows)",
        ));
        return out;
    }
    let plan = core.read(probes::plan);
    let answers = core.probe(plan.requests, ANSWER_TIMEOUT).await;
    out.extend(probes::evaluate(&plan.targets, &plan.context, &answers));
    out.extend(plan.skipped);
    out
}

/// When a node's report arrived, and what it said (or why it did not).
#[derive(Debug, Clone)]
pub struct Answer {
    /// Unix ms on this manager when the request went out.
    pub sent_ms: u64,
    /// Unix ms on this manager when the answer came (0: none).
    pub received_ms: u64,
    /// The node's report; `Err`: why there is none.
    pub report: Result<pb::ProbeReport, String>,
}

impl Answer {
    /// No answer, for `why`.
    pub fn missing(sent_ms: u64, why: impl Into<String>) -> Answer {
        Answer {
            sent_ms,
            received_ms: 0,
            report: Err(why.into()),
        }
    }

    /// An answer that arrived now.
    pub fn arrived(sent_ms: u64, report: pb::ProbeReport) -> Answer {
        Answer {
            sent_ms,
            received_ms: now_ms(),
            report: Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SessionPush;
    use crate::store::NodeId;

    #[tokio::test]
    async fn reports_count_only_from_the_node_asked_and_a_node_without_session_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raft = crate::testing::single_manager(dir.path()).await;
        let core = Core::new(NodeId(1), raft);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        core.session_opened(NodeId(1), tx);
        let answering = core.clone();
        let node = tokio::spawn(async move {
            let Some(SessionPush::Probe(req)) = rx.recv().await else {
                panic!("no probe request on the session");
            };
            let report = pb::ProbeReport {
                request_id: req.request_id,
                node_time_ms: 7,
                ..Default::default()
            };
            // Another node cannot answer for node 1, nor a stale request.
            assert!(!answering.probe_reported(NodeId(2), report.clone()));
            let stale = pb::ProbeReport {
                request_id: req.request_id ^ 1,
                ..report.clone()
            };
            assert!(!answering.probe_reported(NodeId(1), stale));
            assert!(answering.probe_reported(NodeId(1), report));
        });
        let req = pb::ProbeRequest::default();
        let answers = core
            .probe(
                vec![(NodeId(1), req.clone()), (NodeId(2), req)],
                Duration::from_secs(5),
            )
            .await;
        node.await.expect("the node's side");
        let one = answers[&NodeId(1)]
            .report
            .as_ref()
            .expect("node 1 answered");
        assert_eq!(one.node_time_ms, 7);
        assert!(answers[&NodeId(1)].received_ms >= answers[&NodeId(1)].sent_ms);
        let two = answers[&NodeId(2)]
            .report
            .as_ref()
            .expect_err("node 2 has no session");
        assert!(two.contains("no session"), "{two}");
    }
}
