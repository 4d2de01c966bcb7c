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

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::MutexGuard;
use tonic::Status;
use weft_manager::Manager;
use weft_manager::store::NodeId;
use weft_proto::identity::PeerIdentity;
use weft_proto::v1 as pb;
use weft_worker::node_files::{Certs, NodeRecord};

use super::{Active, NodeService, join_error, status_of, validate_remote};

/// How long a lone manager restarted with an expired certificate may take
/// to lead and apply its log before it gives up renewing itself.
const RENEW_ALONE_WITHIN: Duration = Duration::from_secs(20);

/// Whether the certificate in `certs` has expired (false when it cannot be
/// read: a rejoin would not fix that, see `NodeFiles::load`).
pub(super) fn cert_expired(certs: &Certs) -> bool {
    PeerIdentity::from_pem(&certs.cert_pem)
        .map(|p| p.expired())
        .unwrap_or(false)
}

impl NodeService {
    /// A manager whose certificate expired while it was offline, and that
    /// is the only voter of its group, signs itself a new certificate:
    /// nobody else could (a rejoin goes through another manager). Its Raft
    /// needs no peer, so it starts on the expired certificate, leads, and
    /// once its log is applied it checks itself in the store as a rejoin
    /// would (`weft_manager::rejoin::reissue_own`), saves the new
    /// certificate and serves it. `None` when it is not the only voter: then
    /// the node rejoins through another manager, as before.
    pub(super) async fn renew_alone(
        &self,
        record: &NodeRecord,
        certs: &Certs,
    ) -> anyhow::Result<Option<(Certs, Manager)>> {
        let me: NodeId = record.node_id.parse()?;
        let dir = self.files.raft_dir();
        let voters = tokio::task::spawn_blocking(move || weft_manager::raft::voters_on_disk(&dir))
            .await?
            .context("reading the Raft membership")?;
        if voters != BTreeSet::from([me]) {
            return Ok(None);
        }
        tracing::warn!(
            node = %me,
            "this manager's certificate expired while it was offline and it is the only voter: \
             it signs itself a new certificate"
        );
        let mut manager = self.start_manager(record, certs).await?;
        let core = manager.core().clone();
        let deadline = tokio::time::Instant::now() + RENEW_ALONE_WITHIN;
        let renewed = async {
            // Leading, with a read index taken: its whole log is applied.
            while !(core.is_leader() && core.linearize().await.is_ok()) {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "it did not lead within {}s (see the Raft messages above)",
                        RENEW_ALONE_WITHIN.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (key, issued) = weft_manager::rejoin::reissue_own(&core, &certs.cert_pem).await?;
            let renewed = Certs {
                ca_pem: certs.ca_pem.clone(),
                cert_pem: issued.cert_pem,
                key_pem: key.to_pem(),
            };
            self.files.save_certs(&renewed)?;
            manager.update_identity(&renewed.cert_pem, &renewed.key_pem)?;
            tracing::info!(node = %me, not_after = %issued.not_after, "signed itself a new certificate");
            Ok(renewed)
        }
        .await;
        match renewed {
            Ok(renewed) => Ok(Some((renewed, manager))),
            Err(e) => {
                *self.slot.write().expect("slot") = None;
                manager.stop().await;
                Err(e)
            }
        }
    }

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
