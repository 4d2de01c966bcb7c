//! A running manager: Raft on disk, the gRPC services on the manager port
//! (mutual TLS), and the leader loops.
//!
//! ```text
//!  TCP :4377 ──TLS 1.3 (client cert optional at TLS, required per service)──┐
//!     Join        anyone (token checked)                                     │
//!     Raft        manager certificates of this cluster                       │ tonic
//!     Dispatcher  any node certificate, for itself only                      │
//!     Control     manager certificates                                       ┘
//! ```
//!
//! Who may call what, and why the store is asked as well as the
//! certificate: [`crate::authz`]. How much a caller can make the server
//! hold before it is authenticated: [`limits`].

mod limits;

pub use limits::ManagerChecked;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_proto::tls::{self, ReloadableCert};

use crate::controlapi::{Caller, ControlService};
use crate::core::Core;
use crate::dispatcher::DispatcherService;
use crate::error::{Error, Result};
use crate::join::JoinService;
use crate::leader;
use crate::raft::{Authorize, ChannelFactory, RaftCall, RaftHandle, RaftSettings};
use crate::store::{Cluster, Command, Node, NodeId};

/// What a manager needs to start.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This node.
    pub node_id: NodeId,
    /// Its cluster (checked in every peer certificate).
    pub cluster_id: String,
    /// Where the Raft log lives.
    pub raft_dir: PathBuf,
    /// Where the manager port listens.
    pub listen_addr: SocketAddr,
    /// CA, PEM.
    pub ca_pem: String,
    /// This node's certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Raft timing.
    pub raft: RaftSettings,
    /// The autolock unlock key, shared with the node (which seals its own
    /// TLS key file with it).
    pub unlock: weft_proto::seal::KeyHolder,
}

/// A running manager.
pub struct Manager {
    /// What it was started with (its certificate kept current), to start it
    /// again after Raft stopped.
    config: ManagerConfig,
    core: Core,
    cert: ReloadableCert,
    identity: Arc<RwLock<(String, String)>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The manager port could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another weft (or something else) using that port? \
         Pick another with --listen-addr"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] weft_proto::tls::TlsError),
    /// The Raft directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Raft storage could not be opened.
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
}

impl Manager {
    /// Opens Raft, binds the manager port and starts serving.
    pub async fn start(cfg: ManagerConfig) -> Result<Manager, StartError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen_addr,
                source,
            })?;
        let cert = ReloadableCert::from_pem(&cfg.cert_pem, &cfg.key_pem)?;

        let identity = Arc::new(RwLock::new((cfg.cert_pem.clone(), cfg.key_pem.clone())));
        let channels: ChannelFactory = {
            let identity = identity.clone();
            let ca = cfg.ca_pem.clone();
            Arc::new(move |addr: &str| {
                let (cert, key) = identity.read().expect("identity lock").clone();
                tls::channel_to_manager_lazy(addr, &ca, Some((&cert, &key)))
            })
        };
        std::fs::create_dir_all(&cfg.raft_dir).map_err(|source| StartError::DataDir {
            path: cfg.raft_dir.clone(),
            source,
        })?;
        let raft = RaftHandle::open(
            &cfg.raft_dir,
            cfg.node_id,
            cfg.raft.clone(),
            channels.clone(),
        )
        .await?;
        // Spool files live only for the call that made them: any found
        // now were left by a manager that died during a load.
        let spool = cfg
            .raft_dir
            .with_file_name(crate::imagepush::SPOOL_DIR_NAME);
        if let Err(e) = std::fs::remove_dir_all(&spool)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %spool.display(), "cannot clear the image spool: {e}");
        }
        let core = Core::with_channels(cfg.node_id, raft.clone(), channels, cfg.unlock.clone())
            .with_spool_dir(spool)
            .with_raft_dir(cfg.raft_dir.clone());

        // Removed nodes are refused in the handshake, from the store as it
        // stands at that moment (see crate::authz).
        let is_revoked: tls::IsRevoked = {
            let core = core.clone();
            Arc::new(move |id| core.is_revoked(id))
        };
        let server_tls = tls::server_config(&cfg.ca_pem, &cert, is_revoked)?;
        let authorize: Authorize = {
            let core = core.clone();
            let cluster_id = cfg.cluster_id.clone();
            Arc::new(move |req, call| match call {
                RaftCall::Peer => core.authorize_raft_peer(req, &cluster_id),
                RaftCall::Propose | RaftCall::ReadIndex => core.authorize_manager(req).map(|_| ()),
            })
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shutdown = stop_rx.clone();
        let router = limits::server_builder()
            .add_service(limits::join(JoinService::new(core.clone())))
            .add_service(raft.grpc(authorize).into_server())
            .add_service(limits::dispatcher(
                DispatcherService::new(core.clone()),
                core.clone(),
            ))
            .add_service(limits::control(
                ControlService::new(core.clone(), Caller::Remote),
                core.clone(),
            ));
        let incoming = tls::tls_incoming(listener, server_tls);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = shutdown.changed().await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "manager port stopped");
            }
        });
        let tasks = vec![
            server,
            tokio::spawn(leader::liveness_loop(core.clone(), stop_rx.clone())),
            tokio::spawn(leader::membership_loop(core.clone(), stop_rx.clone())),
            tokio::spawn(leader::orchestrator_loop(core.clone(), stop_rx.clone())),
            tokio::spawn(crate::metrics::sample_runtime_lag(stop_rx.clone())),
            tokio::spawn(crate::autolock::keeper(core.clone(), stop_rx)),
            tokio::spawn(crate::metrics::count_leader_changes(
                core.raft().metrics_watch(),
            )),
        ];
        tracing::info!(node = %cfg.node_id, listen = %cfg.listen_addr, "manager started");
        Ok(Manager {
            config: cfg,
            core,
            cert,
            identity,
            stop: stop_tx,
            tasks,
        })
    }

    /// Creates the cluster on this (fresh) manager: a single-voter Raft
    /// group, then the cluster record and this node as its first member.
    pub async fn bootstrap(&self, cluster: Cluster, node: Node) -> Result<()> {
        let addr = node.addr.clone();
        self.core
            .raft()
            .initialize_single(&addr)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot start Raft: {e}")))?;
        self.core
            .propose(Command::InitCluster { cluster, node })
            .await?;
        Ok(())
    }

    /// Shared manager state.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Installs a renewed certificate for new connections, both served
    /// (manager port) and made (Raft peers).
    pub fn update_identity(&mut self, cert_pem: &str, key_pem: &str) -> Result<(), StartError> {
        self.cert.replace(cert_pem, key_pem)?;
        *self.identity.write().expect("identity lock") =
            (cert_pem.to_string(), key_pem.to_string());
        // Cached Raft channels would go on presenting the old certificate
        // (tonic reconnects a channel with the TLS config it was built
        // with) until it expired.
        self.core.raft().reset_channels();
        self.config.cert_pem = cert_pem.to_string();
        self.config.key_pem = key_pem.to_string();
        Ok(())
    }

    /// What this manager was started with, with its current certificate.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Stops serving and shuts Raft down.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.core.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
