//! The manager on a member node: restarted when Raft stopped under it,
//! started, stopped or given a renewed certificate as the node's role
//! changes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use weft_manager::controlapi::CoreSlot;
use weft_manager::raft::RaftSettings;
use weft_manager::store::NodeId;
use weft_manager::{Manager, ManagerConfig};
use weft_worker::node_files::{NodeFiles, NodeRecord};

/// How often the supervisor checks Raft, and retries a manager that
/// stopped.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
const RESTART_EVERY: Duration = Duration::from_secs(5);

/// Restarts this node's manager when Raft stopped under it (a log write or
/// fsync that failed even after the log file was rewritten, as on a full or
/// failing disk). A stopped Raft acknowledges nothing, so the other managers
/// elect a leader without it; reopening the directory replays what is
/// durable, so once the disk works again the manager rejoins by itself.
/// Until then `weft info` says why it is down.
pub(super) async fn raft_supervisor(
    manager: Arc<Mutex<Option<Manager>>>,
    slot: CoreSlot,
    files: NodeFiles,
    problem: Arc<RwLock<String>>,
) {
    let set_problem = |p: String| *problem.write().expect("problem") = p;
    let mut pending: Option<ManagerConfig> = None;
    loop {
        tokio::time::sleep(if pending.is_some() {
            RESTART_EVERY
        } else {
            SUPERVISE_EVERY
        })
        .await;
        let mut m = manager.lock().await;
        if let Some(why) = m.as_ref().and_then(|cur| cur.core().raft().stopped()) {
            tracing::error!(
                error = %why,
                "Raft stopped on this manager; restarting it from what is on disk"
            );
            set_problem(format!(
                "manager stopped: {why}; restarting it every {} s (check the disk under {})",
                RESTART_EVERY.as_secs(),
                files.raft_dir().display()
            ));
            *slot.write().expect("slot") = None;
            if let Some(old) = m.take() {
                pending = Some(old.config().clone());
                old.stop().await;
            }
            continue;
        }
        let Some(cfg) = pending.clone() else {
            continue;
        };
        if m.is_some() {
            // The role watcher started it meanwhile (a renewal).
            pending = None;
            set_problem(String::new());
            continue;
        }
        let mut cfg = cfg;
        match files.load() {
            Ok((r, certs)) if r.role == "manager" => {
                // The certificate may have been renewed while it was down.
                cfg.ca_pem = certs.ca_pem;
                cfg.cert_pem = certs.cert_pem;
                cfg.key_pem = certs.key_pem;
            }
            _ => {
                // Demoted (or gone) meanwhile: nothing to restart, and the
                // Raft state (CA key, join secrets) goes, as on a demotion
                // of a running manager.
                pending = None;
                set_problem(String::new());
                if let Err(e) = std::fs::remove_dir_all(files.raft_dir())
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, "cannot remove the old Raft log");
                }
                continue;
            }
        }
        match Manager::start(cfg).await {
            Ok(started) => {
                tracing::info!("manager restarted after Raft stopped");
                *slot.write().expect("slot") = Some(started.core().clone());
                *m = Some(started);
                pending = None;
                set_problem(String::new());
            }
            Err(e) => {
                tracing::warn!(error = %e, "manager restart failed; retrying");
                set_problem(format!(
                    "manager stopped and cannot start again: {e}; retrying every {} s",
                    RESTART_EVERY.as_secs()
                ));
            }
        }
    }
}

/// Follows certificate changes: a manager certificate starts the manager, a
/// worker certificate stops it, a renewed one is hot-swapped in.
pub(super) async fn role_watcher(
    mut status: tokio::sync::watch::Receiver<weft_worker::agent::AgentStatus>,
    manager: Arc<Mutex<Option<Manager>>>,
    slot: CoreSlot,
    record: NodeRecord,
    files: NodeFiles,
) {
    let mut seen = status.borrow().cert_generation;
    while status.changed().await.is_ok() {
        let st = status.borrow().clone();
        if st.cert_generation == seen {
            continue;
        }
        seen = st.cert_generation;
        let (rec, certs) = match files.load() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the renewed certificate");
                continue;
            }
        };
        let mut m = manager.lock().await;
        match (st.cert_role.as_str(), m.is_some()) {
            ("manager", true) => {
                if let Err(e) = m
                    .as_mut()
                    .expect("checked")
                    .update_identity(&certs.cert_pem, &certs.key_pem)
                {
                    tracing::error!(error = %e, "cannot install the renewed certificate");
                }
            }
            ("manager", false) => {
                let listen: SocketAddr = match rec.listen_addr.parse() {
                    Ok(a) => a,
                    Err(_) => SocketAddr::new("0.0.0.0".parse().expect("literal"), 4377),
                };
                let node_id: NodeId = match record.node_id.parse() {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "bad node id");
                        continue;
                    }
                };
                match Manager::start(ManagerConfig {
                    node_id,
                    cluster_id: record.cluster_id.clone(),
                    raft_dir: files.raft_dir(),
                    listen_addr: listen,
                    ca_pem: certs.ca_pem.clone(),
                    cert_pem: certs.cert_pem.clone(),
                    key_pem: certs.key_pem.clone(),
                    raft: RaftSettings::default(),
                    unlock: files.unlock_holder().clone(),
                })
                .await
                {
                    Ok(started) => {
                        tracing::info!("promoted: manager started");
                        *slot.write().expect("slot") = Some(started.core().clone());
                        *m = Some(started);
                    }
                    Err(e) => tracing::error!(error = %e, "promoted, but the manager cannot start"),
                }
            }
            ("worker", true) => {
                tracing::info!("demoted: stopping the manager");
                *slot.write().expect("slot") = None;
                if let Some(old) = m.take() {
                    old.stop().await;
                }
                // Workers are never locked: the key file goes back to the
                // clear (see crate::autolock).
                files.unlock_holder().set(None);
                if let Err(e) = std::fs::remove_dir_all(files.raft_dir()) {
                    tracing::warn!(error = %e, "cannot remove the old Raft log");
                }
            }
            _ => {}
        }
    }
}
