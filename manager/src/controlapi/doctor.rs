//! `Control.Doctor` (`weft doctor`): the leader runs the cluster checks and
//! the probes (it holds every node's session); a follower asks it, and
//! answers from its own view when it cannot.

use std::time::Duration;

use weft_proto::v1 as pb;

use crate::core::Core;
use crate::doctor::{self, Check};

/// How long a follower waits for the leader's report (the probes take a
/// few seconds of it).
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// The doctor's report as this manager can make it.
pub(super) async fn report(core: &Core, r: pb::DoctorRequest) -> pb::DoctorReport {
    if !core.is_leader() {
        match from_leader(core, r).await {
            Ok(report) => return report,
            Err(why) => {
                let mut checks = doctor::run(core, false).await;
                checks.retain(|c| c.check != "probes");
                checks.push(Check::warn(
                    "probes",
                    "",
                    format!("not checked: the leader did not answer ({why})"),
                    "run `weft doctor` again once the cluster has a leader (see the raft rows)",
                ));
                return wire(checks);
            }
        }
    }
    wire(doctor::run(core, r.probe).await)
}

async fn from_leader(core: &Core, r: pb::DoctorRequest) -> Result<pb::DoctorReport, String> {
    let ch = core.leader_channel().ok_or("no leader known")?;
    let mut client = weft_proto::v1::control_client::ControlClient::new(ch);
    let call = client.doctor(r);
    match tokio::time::timeout(LEADER_TIMEOUT, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer in {} s", LEADER_TIMEOUT.as_secs())),
    }
}

fn wire(checks: Vec<Check>) -> pb::DoctorReport {
    pb::DoctorReport {
        checks: checks.into_iter().map(Into::into).collect(),
    }
}
