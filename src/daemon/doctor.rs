//! `weft doctor` in the daemon: this node's local checks, the cluster's
//! (from its manager, or the leader through the dispatcher on a worker),
//! and the probes the leader asks of this node.

use std::path::Path;
use std::time::Duration;

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::agent::Agent;

use super::*;

/// How long the CLI's doctor waits for the cluster's part (the leader's
/// probes take a few seconds of it).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(25);

/// Answers the probe requests the managers send this node until its agent
/// stops (the channel closes with it).
pub(super) fn spawn_prober(
    agent: &Agent,
    exec_root: &Path,
    linux: Arc<weft_overlay::linux::LinuxDataplane>,
) {
    let Some(mut requests) = agent.take_probe_requests() else {
        return;
    };
    let caller = agent.caller();
    let config = agent.config();
    let node_id = agent.node_id().to_string();
    let pin = exec_root.join("doctor").join("probe");
    tokio::spawn(async move {
        // A probe namespace a stopped daemon left behind.
        weft_worker::doctor::clean_up(&pin);
        while let Some(req) = requests.recv().await {
            let env = weft_worker::doctor::ProbeEnv {
                node_id: node_id.clone(),
                pin: pin.clone(),
                caller: caller.clone(),
                config: config.borrow().clone(),
                linux: Some(linux.clone()),
            };
            // One run at a time: runs share the probe namespace.
            let report = weft_worker::doctor::probe(req, env).await;
            if !report.error.is_empty() {
                tracing::warn!(error = %report.error, "doctor probe failed");
            }
            if let Err(e) = caller
                .call(|mut c| {
                    let r = report.clone();
                    async move { c.report_probe(r).await }
                })
                .await
            {
                tracing::warn!(error = %e, "cannot send the doctor's probe report");
            }
        }
        // The agent stopped (leave, shutdown): no namespace stays behind.
        weft_worker::doctor::clean_up(&pin);
    });
}

impl NodeService {
    /// `weft doctor`: the local rows, then the cluster's.
    pub(super) async fn doctor(&self, r: pb::DoctorRequest) -> pb::DoctorReport {
        let (cert_pem, config) = {
            let guard = self.active.lock().await;
            match guard.as_ref() {
                Some(a) => (a.agent.certs().cert_pem, a.agent.config().borrow().clone()),
                None => (String::new(), None),
            }
        };
        let observed = weft_worker::doctor::local::observe(&self.linux, cert_pem, config).await;
        let mut checks =
            weft_worker::doctor::local::decide(&observed, time::OffsetDateTime::now_utc());
        match tokio::time::timeout(CLUSTER_TIMEOUT, self.cluster_doctor(r)).await {
            Ok(Ok(report)) => checks.extend(report.checks),
            Ok(Err(s)) => checks.push(unreachable_row(s.message())),
            Err(_) => checks.push(unreachable_row(&format!(
                "no answer in {} s",
                CLUSTER_TIMEOUT.as_secs()
            ))),
        }
        pb::DoctorReport { checks }
    }

    /// The cluster's rows: from this node's manager, else the leader's
    /// dispatcher.
    async fn cluster_doctor(&self, r: pb::DoctorRequest) -> Result<pb::DoctorReport, Status> {
        let core = self.slot.read().expect("slot").clone();
        if let Some(core) = core {
            let svc = weft_manager::controlapi::ControlService::new(
                core,
                weft_manager::controlapi::Caller::Local,
            );
            return weft_proto::v1::control_server::Control::doctor(&svc, Request::new(r))
                .await
                .map(Response::into_inner);
        }
        self.dispatcher(|mut c| async move { c.node_doctor(r).await })
            .await
    }
}

fn unreachable_row(why: &str) -> pb::DoctorCheck {
    pb::DoctorCheck {
        check: "cluster".into(),
        subject: String::new(),
        status: pb::DoctorStatus::Fail as i32,
        detail: format!("not checked: the managers did not answer: {why}"),
        hint: "check that this node is in a cluster (`weft info`) and reaches a manager; \
               run `weft doctor` on a manager"
            .into(),
    }
}
