//! `weft join` on a node whose certificate expired while it was offline:
//! rejoin with the same node ID, keeping its tasks, networks and Raft state.
//!
//! ```text
//!  certificate expired? ──no──▶ "already part of a cluster" (as before)
//!        │ yes
//!  addresses given differ from the node's? ──▶ refused (a rejoin keeps them)
//!  weft_worker::join::rejoin (token + old certificate + proof) ──▶ refused: nothing changed
//!        │ new certificate for the same node ID
//!  save certificate, then record ─▶ stop agent/manager loops (tasks and kernel
//!  state stay) ─▶ start them again with the new certificate, as at a restart
//!  (a manager demoted while it was offline rejoins as a worker: its Raft
//!  state is removed, as at a demotion)
//! ```

use tokio::sync::MutexGuard;
use tonic::Status;
use weft_proto::identity::PeerIdentity;
use weft_proto::v1 as pb;
use weft_worker::node_files::Certs;

use super::{Active, NodeService, join_error, status_of, validate_remote};

/// Whether the certificate in `certs` has expired (false when it cannot be
/// read: a rejoin would not fix that, see `NodeFiles::load`).
pub(super) fn cert_expired(certs: &Certs) -> bool {
    PeerIdentity::from_pem(&certs.cert_pem)
        .map(|p| p.expired())
        .unwrap_or(false)
}

impl NodeService {
    /// Rejoins the active node in `guard`, whose certificate has expired.
    pub(super) async fn rejoin(
        &self,
        guard: &mut MutexGuard<'_, Option<Active>>,
        r: pb::DaemonJoinRequest,
    ) -> Result<pb::DaemonJoinResponse, Status> {
        let active = guard.as_ref().expect("the caller checked");
        let kept = &active.record;
        // `IP` means the default port, as at the first join.
        let addr = |s: &str| {
            weft_manager::join::parse_host_port(s, weft_manager::join::DEFAULT_PORT)
                .map(|a| a.to_string())
                .unwrap_or_else(|_| s.to_string())
        };
        for (given, kept, flag) in [
            (
                addr(&r.advertise_addr),
                &kept.advertise_addr,
                "--advertise-addr",
            ),
            (addr(&r.listen_addr), &kept.listen_addr, "--listen-addr"),
            (
                r.data_path_addr.clone(),
                &kept.data_path_addr,
                "--data-path-addr",
            ),
        ] {
            if !given.is_empty() && given != *kept {
                return Err(Status::invalid_argument(format!(
                    "this node rejoins with its node ID and keeps its addresses ({flag} {kept:?}); \
                     run `weft join` without {flag}"
                )));
            }
        }
        let remote = validate_remote(&r.remote_addr)?;
        let old = active.agent.certs();
        let joined = weft_worker::join::rejoin(&remote, &r.token, &old)
            .await
            .map_err(join_error)?;
        // The agent kept node.json up to date (managers, removed nodes):
        // start from what is on disk.
        let (mut record, _) = self
            .files
            .load()
            .map_err(|e| status_of(e, tonic::Code::Internal))?;
        record.role = if joined.role == pb::NodeRole::Manager {
            "manager"
        } else {
            "worker"
        }
        .into();
        if !joined.manager_addrs.is_empty() {
            record.manager_addrs = joined.manager_addrs.clone();
        }
        if !joined.manager_node_ids.is_empty() {
            record.manager_node_ids = joined.manager_node_ids.clone();
        }
        self.files
            .save_certs(&joined.certs)
            .and_then(|()| self.files.save_record(&record))
            .map_err(|e| status_of(e, tonic::Code::Internal))?;
        tracing::info!(
            node = %record.node_id,
            role = %record.role,
            "rejoined the cluster with the same node ID; restarting the session"
        );
        // As at a daemon restart: the loops stop, tasks and kernel state
        // stay, and everything starts again with the new certificate.
        let old_active = guard.take().expect("checked above");
        let manager = old_active.stop_loops().await;
        *self.slot.write().expect("slot") = None;
        if let Some(m) = manager.lock().await.take() {
            m.stop().await;
        }
        if record.role != "manager" {
            // Demoted while it was offline: its Raft state (the CA key, the
            // join secrets) goes, as on the demotion of a running manager.
            if let Err(e) = std::fs::remove_dir_all(self.files.raft_dir())
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "cannot remove the old Raft log");
            }
        }
        let manager = if record.role == "manager" {
            Some(
                self.start_manager(&record, &joined.certs)
                    .await
                    .map_err(|e| {
                        status_of(
                            format!(
                                "rejoined, but the manager could not start: {e:#}; restart the \
                                 daemon"
                            ),
                            tonic::Code::FailedPrecondition,
                        )
                    })?,
            )
        } else {
            None
        };
        **guard = Some(self.activate(record, joined.certs, manager));
        Ok(pb::DaemonJoinResponse {
            node_id: joined.node_id,
            role: joined.role as i32,
            cluster_id: joined.cluster_id,
            rejoined: true,
        })
    }
}
