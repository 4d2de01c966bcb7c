//! The node's session with the cluster.
//!
//! ```text
//!        ┌──────────── pick a manager (leader hint first, then the list) ◀──────┐
//!        ▼                                                                     │
//!  Session(node_id) ──FAILED_PRECONDITION + weft-leader──▶ hint = leader ──────┤
//!        │ stream of SessionMessage                                            │
//!        ├─▶ remember managers (persisted), leader                             │
//!        ├─▶ role in store ≠ role in certificate ─▶ RenewCertificate ──────────┤
//!        ├─▶ renewal time reached (crate::renewal) ─▶ RenewCertificate ────────┤
//!        └─▶ Heartbeat every period ── error / stream ends ────────────────────┘
//! ```
//!
//! Renewal runs on its own timer, whatever the session carries: an idle
//! cluster sends no message that would otherwise prompt it. A certificate
//! that expired (the node was offline past its life) cannot be renewed:
//! the agent then stops trying managers and says to rejoin.
//!
//! Every channel to a manager (the session, [`Agent::call`],
//! [`Agent::leave`]) accepts only the managers the cluster last named
//! (`tls::ManagerTrust`, from the session's manager and removed node IDs).
//!
//! The agent never tears anything down because a manager is unreachable: it
//! only keeps trying, and reports what it sees through [`AgentStatus`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;
use weft_proto::identity::{NodeKey, PeerIdentity};
use weft_proto::tls;
use weft_proto::v1 as pb;
use weft_proto::v1::dispatcher_client::DispatcherClient;

use crate::error::{Error, Result};
use crate::node_files::{Certs, NodeFiles, NodeRecord};
use crate::renewal;

mod heartbeats;
use heartbeats::Beats;
pub use heartbeats::{Beat, heartbeats};

/// How long a certificate renewal may take before it counts as failed.
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping daemon waits for the leader to take its notice.
const STOPPING_NOTICE: Duration = Duration::from_millis(500);

/// Metadata key a follower uses to point at the leader.
pub const LEADER_METADATA: &str = "weft-leader";

/// What the agent currently knows; the daemon watches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Manager the session is open with.
    pub connected_to: Option<String>,
    /// Leader address as last reported.
    pub leader_addr: String,
    /// Managers as last reported.
    pub manager_addrs: Vec<String>,
    /// Role the store wants for this node.
    pub desired_role: Option<pb::NodeRole>,
    /// Role of the certificate in use (`worker` / `manager`).
    pub cert_role: String,
    /// Bumped each time a new certificate is installed.
    pub cert_generation: u64,
    /// The cluster removed this node.
    pub removed: bool,
    /// Last failure, for `weft info`.
    pub last_error: String,
    /// Heartbeat period in ms.
    pub heartbeat_period_ms: u64,
}

/// Starts reading a local task's log (`crate::logs::spawn_read`) into the
/// sink. `Err`: there is no such log.
pub type LogReader = Arc<
    dyn Fn(
            &str,
            crate::logs::reader::ReadOptions,
            crate::logs::LogSink,
        ) -> std::result::Result<(), String>
        + Send
        + Sync,
>;

/// One piece of a log stream to the manager.
fn publish_piece(r: std::result::Result<Vec<pb::LogLine>, String>) -> pb::PublishLogsRequest {
    match r {
        Ok(lines) => pb::PublishLogsRequest {
            lines,
            ..Default::default()
        },
        Err(error) => pb::PublishLogsRequest {
            error,
            ..Default::default()
        },
    }
}

/// A running agent.
pub struct Agent {
    node_id: String,
    certs: Arc<RwLock<Certs>>,
    trust: Arc<RwLock<tls::ManagerTrust>>,
    status: watch::Receiver<AgentStatus>,
    config: watch::Receiver<Option<Arc<pb::NodeConfig>>>,
    report: watch::Sender<Option<pb::StatusReport>>,
    images: watch::Sender<Option<pb::ImageInventory>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The doctor's probe requests from the session, until taken.
    probes: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<pb::ProbeRequest>>>,
}

/// The agent's credentials and view of the managers, for node-scoped
/// dispatcher calls made by tasks that outlive a borrow of the [`Agent`]
/// (the image fetcher). Cheap to clone; sees certificate renewals.
#[derive(Clone)]
pub struct ManagerCaller {
    certs: Arc<RwLock<Certs>>,
    trust: Arc<RwLock<tls::ManagerTrust>>,
    status: watch::Receiver<AgentStatus>,
}

impl ManagerCaller {
    fn certs(&self) -> Certs {
        self.certs.read().expect("certs lock").clone()
    }

    fn manager_trust(&self) -> tls::ManagerTrust {
        self.trust.read().expect("trust lock").clone()
    }

    /// Managers to try for a node-scoped call: the leader first.
    fn manager_candidates(&self) -> Vec<String> {
        let st = self.status.borrow().clone();
        let mut addrs = Vec::new();
        if !st.leader_addr.is_empty() {
            addrs.push(st.leader_addr.clone());
        }
        for a in st.manager_addrs {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }

    /// The node's certificate in use (PEM).
    pub fn cert_pem(&self) -> String {
        self.certs().cert_pem
    }

    /// Whether the manager port at `addr` answers a gRPC call over mTLS
    /// with this node's certificate (the doctor's probe): the handshake
    /// checks both certificates, then `Join.GetCaCert` must answer.
    pub async fn reach(&self, addr: &str) -> Result<()> {
        let certs = self.certs();
        let ch = tls::channel_to_manager_checked(
            addr,
            &certs.ca_pem,
            (&certs.cert_pem, &certs.key_pem),
            self.manager_trust(),
        )
        .await?;
        weft_proto::v1::join_client::JoinClient::new(ch)
            .get_ca_cert(pb::GetCaCertRequest {})
            .await
            .map_err(|status| Error::Rpc {
                addr: addr.to_string(),
                status,
            })?;
        Ok(())
    }

    /// Calls a node-scoped dispatcher RPC on the leader (following a
    /// redirect once), as [`Agent::call`].
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(DispatcherClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let certs = self.certs();
        let trust = self.manager_trust();
        let mut addrs = self.manager_candidates();
        let mut last = None;
        let mut i = 0;
        while i < addrs.len() {
            let addr = addrs[i].clone();
            i += 1;
            let ch = match tls::channel_to_manager_checked(
                &addr,
                &certs.ca_pem,
                (&certs.cert_pem, &certs.key_pem),
                trust.clone(),
            )
            .await
            {
                Ok(ch) => ch,
                Err(e) => {
                    last = Some(Error::from(e));
                    continue;
                }
            };
            match f(DispatcherClient::new(ch)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    if let Some(leader) = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .filter(|l| !l.is_empty() && !addrs[..i].iter().any(|a| a == l))
                    {
                        addrs.insert(i, leader.to_string());
                        continue;
                    }
                    if status.code() == Code::Unavailable {
                        last = Some(Error::Rpc { addr, status });
                        continue;
                    }
                    return Err(Error::Rpc { addr, status });
                }
            }
        }
        Err(last.unwrap_or(Error::BadAnswer {
            addr: String::new(),
            what: "no manager address known".into(),
        }))
    }
}

struct Run {
    node_id: String,
    files: NodeFiles,
    record: NodeRecord,
    certs: Arc<RwLock<Certs>>,
    /// The managers this node accepts, from `record`; shared with
    /// [`Agent::call`] and [`Agent::leave`].
    trust: Arc<RwLock<tls::ManagerTrust>>,
    /// The expiry of the certificate in use was already reported.
    expiry_reported: bool,
    status: watch::Sender<AgentStatus>,
    config: watch::Sender<Option<Arc<pb::NodeConfig>>>,
    report: watch::Receiver<Option<pb::StatusReport>>,
    /// The node's image inventory ([`crate::image_inventory`]): added to
    /// a report when the leader has not acknowledged it on this session.
    images: watch::Receiver<Option<pb::ImageInventory>>,
    /// Which inventory the leader acknowledged on the current session.
    image_tracker: crate::image_inventory::Tracker,
    logs: LogReader,
    /// Where the doctor's probe requests go ([`Agent::take_probe_requests`]).
    probes: tokio::sync::mpsc::UnboundedSender<pb::ProbeRequest>,
    stop: watch::Receiver<bool>,
    /// When the certificate in use is to be renewed next.
    renew_at: time::OffsetDateTime,
    /// Renewals that failed in a row.
    renew_failures: u32,
}

enum End {
    Redirect(String),
    Renewed,
    /// A config delta did not apply to the config held: a new session on
    /// the same manager starts with a whole config.
    Resync(String),
    Removed(String),
    Failed(String),
    Stopped,
}

impl Agent {
    /// Starts the session loop for the node described by `record`.
    pub fn start(files: NodeFiles, record: NodeRecord, certs: Certs, logs: LogReader) -> Agent {
        let cert_role = PeerIdentity::from_pem(&certs.cert_pem)
            .map(|p| p.role.as_str().to_string())
            .unwrap_or_default();
        let (status_tx, status_rx) = watch::channel(AgentStatus {
            manager_addrs: record.manager_addrs.clone(),
            cert_role,
            heartbeat_period_ms: 1000,
            ..Default::default()
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (config_tx, config_rx) = watch::channel(None);
        let (report_tx, report_rx) = watch::channel(None);
        let (images_tx, images_rx) = watch::channel(None);
        let (probes_tx, probes_rx) = tokio::sync::mpsc::unbounded_channel();
        let certs = Arc::new(RwLock::new(certs));
        let trust = Arc::new(RwLock::new(record.manager_trust()));
        let run = Run {
            node_id: record.node_id.clone(),
            files,
            record,
            certs: certs.clone(),
            trust: trust.clone(),
            expiry_reported: false,
            status: status_tx,
            config: config_tx,
            report: report_rx,
            images: images_rx,
            image_tracker: Default::default(),
            logs,
            probes: probes_tx,
            stop: stop_rx,
            renew_at: time::OffsetDateTime::now_utc(),
            renew_failures: 0,
        };
        let mut run = run;
        run.schedule_renewal();
        let node_id = run.node_id.clone();
        let task = tokio::spawn(run.main());
        Agent {
            node_id,
            certs,
            trust,
            status: status_rx,
            config: config_rx,
            report: report_tx,
            images: images_tx,
            stop: stop_tx,
            task,
            probes: std::sync::Mutex::new(Some(probes_rx)),
        }
    }

    /// The doctor's probe requests the managers send on the session (once:
    /// the first caller gets the receiver).
    pub fn take_probe_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<pb::ProbeRequest>> {
        self.probes.lock().expect("probes lock").take()
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Watch the node's config as the cluster last pushed it. It is kept
    /// across lost sessions: the data plane survives the control plane.
    pub fn config(&self) -> watch::Receiver<Option<Arc<pb::NodeConfig>>> {
        self.config.clone()
    }

    /// Publishes the node's status; the latest report is sent on the
    /// current session, and again on every new one.
    pub fn report(&self, report: pb::StatusReport) {
        self.report.send_replace(Some(report));
    }

    /// A handle to publish reports from another task.
    pub fn report_handle(&self) -> watch::Sender<Option<pb::StatusReport>> {
        self.report.clone()
    }

    /// Where the node's image inventory is published
    /// ([`crate::image_inventory::run`]); the session sends it with the
    /// next report when the leader does not have it.
    pub fn images_handle(&self) -> watch::Sender<Option<pb::ImageInventory>> {
        self.images.clone()
    }

    /// A handle for node-scoped dispatcher calls from another task.
    pub fn caller(&self) -> ManagerCaller {
        ManagerCaller {
            certs: self.certs.clone(),
            trust: self.trust.clone(),
            status: self.status.clone(),
        }
    }

    /// Calls a node-scoped dispatcher RPC on the leader (following a
    /// redirect once), e.g. `RunTask` / `RemoveTask`.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(DispatcherClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.caller().call(f).await
    }

    /// Watch what the agent knows.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// The certificate material currently in use.
    pub fn certs(&self) -> Certs {
        self.certs.read().expect("certs lock").clone()
    }

    /// The managers this node accepts now.
    pub fn manager_trust(&self) -> tls::ManagerTrust {
        self.trust.read().expect("trust lock").clone()
    }

    /// Asks the cluster to remove this node. Tries the known leader first,
    /// then every manager.
    pub async fn leave(&self, force: bool) -> Result<()> {
        let st = self.status.borrow().clone();
        let mut addrs = Vec::new();
        if !st.leader_addr.is_empty() {
            addrs.push(st.leader_addr.clone());
        }
        addrs.extend(st.manager_addrs.iter().cloned());
        leave(
            &self.node_id,
            &self.certs(),
            &self.manager_trust(),
            &addrs,
            force,
        )
        .await
    }

    /// Stops the session loop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Asks the managers at `addrs`, in order, to remove node `node_id`,
/// talking only to those `trust` accepts.
pub async fn leave(
    node_id: &str,
    certs: &Certs,
    trust: &tls::ManagerTrust,
    addrs: &[String],
    force: bool,
) -> Result<()> {
    let mut last = None;
    for addr in addrs {
        let ch = match tls::channel_to_manager_checked(
            addr,
            &certs.ca_pem,
            (&certs.cert_pem, &certs.key_pem),
            trust.clone(),
        )
        .await
        {
            Ok(ch) => ch,
            Err(e) => {
                last = Some(Error::from(e));
                continue;
            }
        };
        let req = pb::LeaveRequest {
            node_id: node_id.to_string(),
            force,
        };
        match DispatcherClient::new(ch).leave(req).await {
            Ok(_) => return Ok(()),
            // A refusal (quorum, removed, last manager) is final; anything
            // else may work on another manager.
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::PermissionDenied
                ) && status.metadata().get(LEADER_METADATA).is_none() =>
            {
                return Err(Error::Rpc {
                    addr: addr.clone(),
                    status,
                });
            }
            Err(status) => {
                last = Some(Error::Rpc {
                    addr: addr.clone(),
                    status,
                })
            }
        }
    }
    Err(last.unwrap_or(Error::BadAnswer {
        addr: String::new(),
        what: "no manager address known".into(),
    }))
}

impl Run {
    async fn main(mut self) {
        let mut hint: Option<String> = None;
        let mut next = 0usize;
        let mut failures = 0u32;
        loop {
            if *self.stop.borrow() {
                return;
            }
            if self.expired() {
                if self.pause(EXPIRED_RECHECK).await {
                    return;
                }
                continue;
            }
            let addr = match hint.take() {
                Some(a) => a,
                None => {
                    let list = &self.record.manager_addrs;
                    if list.is_empty() {
                        self.set_error("no manager address known".into());
                        if self.pause(Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                    next = next.wrapping_add(1);
                    list[next % list.len()].clone()
                }
            };
            match self.session(&addr).await {
                End::Stopped => return,
                End::Redirect(leader) => {
                    hint = Some(leader);
                    failures = 0;
                }
                End::Resync(why) => {
                    tracing::warn!(manager = %addr, error = %why, "config delta refused; reopening the session for a whole config");
                    hint = Some(addr);
                    failures = 0;
                }
                End::Renewed => {
                    hint = Some(addr);
                    failures = 0;
                }
                End::Removed(msg) => {
                    self.status.send_modify(|s| {
                        s.removed = true;
                        s.connected_to = None;
                        s.last_error = msg;
                    });
                    if self.pause(Duration::from_secs(5)).await {
                        return;
                    }
                }
                End::Failed(msg) => {
                    tracing::debug!(manager = %addr, error = %msg, "session ended");
                    self.status.send_modify(|s| s.connected_to = None);
                    self.set_error(format!("{addr}: {msg}"));
                    failures += 1;
                    // Walk the whole manager list quickly, then back off.
                    let round = self.record.manager_addrs.len().max(1) as u32;
                    let delay = if failures < round {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_millis(200 * u64::from((failures / round).min(10)))
                    };
                    if self.pause(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps unless stopped; true when stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => *self.stop.borrow(),
            _ = self.stop.changed() => true,
        }
    }

    fn set_error(&self, e: String) {
        self.status.send_modify(|s| s.last_error = e);
    }

    async fn session(&mut self, addr: &str) -> End {
        let certs = self.certs.read().expect("certs lock").clone();
        let trust = self.trust.read().expect("trust lock").clone();
        let ch = match tls::channel_to_manager_checked(
            addr,
            &certs.ca_pem,
            (&certs.cert_pem, &certs.key_pem),
            trust,
        )
        .await
        {
            Ok(ch) => ch,
            Err(e) if revoked(&e) => return End::Removed(REVOKED.into()),
            Err(e) => return End::Failed(e.to_string()),
        };
        let mut client = DispatcherClient::new(ch)
            .max_decoding_message_size(weft_proto::SESSION_RECEIVE_LIMIT_BYTES);
        // The sources this node holds: the manager leaves them out of the
        // first config when it has the same.
        let held_sources = self
            .config
            .borrow()
            .as_ref()
            .map(|c| weft_proto::config_delta::sources_digest(&c.vxlan_allowed_sources))
            .unwrap_or_default();
        let mut stream = match client
            .session(pb::SessionRequest {
                node_id: self.node_id.clone(),
                accepts_deltas: true,
                sources_digest: held_sources,
                accepts_source_parts: true,
                accepts_port_deltas: true,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(st) => return self.classify(st),
        };
        self.status.send_modify(|s| {
            s.connected_to = Some(addr.to_string());
            s.removed = false;
            s.last_error.clear();
        });
        tracing::info!(manager = %addr, "session established");
        // A new session gets the latest report at once, with the image
        // inventory in full.
        self.report.mark_changed();
        self.image_tracker.new_session();
        let mut period = Duration::from_millis(self.status.borrow().heartbeat_period_ms.max(100));
        // A whole config whose VXLAN sources come in parts waits here.
        let mut parts = weft_proto::config_delta::SourceParts::default();
        let (period_tx, period_rx) = watch::channel(period);
        let mut beats = Beats(tokio::spawn(heartbeats(
            client.clone(),
            self.node_id.clone(),
            period_rx,
            |_| {},
        )));
        loop {
            let renewal = tokio::time::sleep(self.until_renewal());
            tokio::select! {
                _ = self.stop.changed() => {
                    beats.0.abort();
                    // Said before the session ends, so the leader does not
                    // take the end for a crash (the disconnect grace).
                    let req = pb::HeartbeatRequest { node_id: self.node_id.clone(), stopping: true };
                    if tokio::time::timeout(STOPPING_NOTICE, client.heartbeat(req)).await.is_err() {
                        tracing::debug!("the leader did not take the stopping notice in time");
                    }
                    return End::Stopped;
                }
                msg = stream.message() => match msg {
                    Ok(Some(mut m)) => {
                        // A part of a config's sources carries nothing else.
                        if let Some(part) = m.sources_part.take() {
                            if let Some(end) = self.on_sources_part(&mut parts, part) {
                                return end;
                            }
                            continue;
                        }
                        let new_period = Duration::from_millis(m.heartbeat_period_ms.max(100));
                        if new_period != period {
                            period = new_period;
                            period_tx.send_replace(period);
                        }
                        if let Some(end) = self.on_message(&mut client, m, &mut parts).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Failed("session closed by the manager".into()),
                    Err(st) => return self.classify(st),
                },
                r = self.report.changed() => {
                    if r.is_err() {
                        return End::Stopped;
                    }
                    if let Err(st) = self.send_report(&mut client).await {
                        return self.classify(st);
                    }
                }
                r = self.images.changed() => {
                    if r.is_err() {
                        return End::Stopped;
                    }
                    // An inventory that changed goes with the latest report
                    // at once, not at the next pass.
                    if let Err(st) = self.send_report(&mut client).await {
                        return self.classify(st);
                    }
                }
                _ = renewal => {
                    match self.renew(&mut client).await {
                        Ok(()) => return End::Renewed,
                        Err(e) => self.renewal_failed(&e),
                    }
                }
                r = &mut beats.0 => match r {
                    Ok(Beat::Refused(st)) => return self.classify(st),
                    Ok(Beat::TimedOut) | Err(_) => return End::Failed("heartbeat timed out".into()),
                },
            }
        }
    }

    /// Sends the latest report (none yet: nothing), with the image
    /// inventory when the leader has not acknowledged it on this session.
    async fn send_report(
        &mut self,
        client: &mut DispatcherClient<tonic::transport::Channel>,
    ) -> std::result::Result<(), tonic::Status> {
        let Some(mut report) = self.report.borrow_and_update().clone() else {
            return Ok(());
        };
        let inventory = self
            .image_tracker
            .pending(self.images.borrow_and_update().as_ref());
        report.images = inventory.clone();
        client.report_status(report).await?;
        if let Some(sent) = inventory {
            self.image_tracker.acknowledged(sent);
        }
        Ok(())
    }

    fn classify(&self, st: tonic::Status) -> End {
        if let Some(leader) = st
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            return End::Redirect(leader.to_string());
        }
        match st.code() {
            Code::PermissionDenied if st.message().contains("removed") => {
                End::Removed(st.message().to_string())
            }
            _ if revoked(&st) => End::Removed(REVOKED.into()),
            _ => End::Failed(st.message().to_string()),
        }
    }

    /// Answers a log request: streams the task's log to the manager until
    /// it is all sent or the manager ends the call (nobody reads any more),
    /// which drops the channel and so ends the reader.
    fn publish_logs(
        &self,
        client: &DispatcherClient<tonic::transport::Channel>,
        req: &pb::LogRequest,
    ) {
        let first = pb::PublishLogsRequest {
            node_id: self.node_id.clone(),
            request_id: req.request_id,
            task_id: req.task_id.clone(),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let opts = crate::logs::read_options(req.query.as_ref());
        let sink_tx = tx.clone();
        let sink: crate::logs::LogSink = Box::new(move |r| match r {
            Ok(lines) if lines.is_empty() => !sink_tx.is_closed(),
            r => sink_tx.blocking_send(publish_piece(r)).is_ok(),
        });
        // The channel is empty: the first message (and an error after it)
        // always fit, ahead of anything the reader sends.
        let _ = tx.try_send(first);
        if let Err(error) = (self.logs)(&req.task_id, opts, sink) {
            let _ = tx.try_send(publish_piece(Err(error)));
        }
        drop(tx);
        let request = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut c = client.clone();
        tokio::spawn(async move {
            match c.publish_log_stream(request).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::Cancelled => {}
                Err(e) => tracing::warn!(error = %e, "could not send task logs"),
            }
        });
    }

    /// A part of the VXLAN sources of the config the session sent last:
    /// the config is applied with the last one.
    fn on_sources_part(
        &mut self,
        parts: &mut weft_proto::config_delta::SourceParts,
        part: pb::SourcesPart,
    ) -> Option<End> {
        match parts.part(part) {
            Ok(Some(config)) => {
                tracing::debug!(
                    version = config.version,
                    sources = config.vxlan_allowed_sources.len(),
                    "config's sources complete"
                );
                self.config.send_replace(Some(Arc::new(config)));
                None
            }
            Ok(None) => None,
            Err(e) => Some(End::Resync(e.to_string())),
        }
    }

    async fn on_message(
        &mut self,
        client: &mut DispatcherClient<tonic::transport::Channel>,
        mut m: pb::SessionMessage,
        parts: &mut weft_proto::config_delta::SourceParts,
    ) -> Option<End> {
        for req in &m.log_requests {
            self.publish_logs(client, req);
        }
        for req in &m.probe_requests {
            // Nobody takes them (a test's agent): no probes, and the
            // doctor says the node did not answer.
            let _ = self.probes.send(req.clone());
        }
        let asks = !m.log_requests.is_empty() || !m.probe_requests.is_empty();
        if asks && m.config.is_none() && m.config_delta.is_none() {
            return None;
        }
        let desired = pb::NodeRole::try_from(m.role).ok();
        if let Some(config) = m.config.take() {
            tracing::debug!(
                version = config.version,
                tasks = config.tasks.len(),
                sources_follow = config.sources_follow,
                "config received"
            );
            let held = self.config.borrow().clone();
            let config = weft_proto::config_delta::with_kept_sources(config, held.as_deref());
            match parts.config(config) {
                Ok(Some(config)) => {
                    self.config.send_replace(Some(Arc::new(config)));
                }
                Ok(None) => {}
                Err(e) => return Some(End::Resync(e.to_string())),
            }
        } else if let Some(delta) = &m.config_delta {
            if parts.waiting() {
                return Some(End::Resync(
                    weft_proto::config_delta::DeltaError::Parts.to_string(),
                ));
            }
            let held = self.config.borrow().clone().unwrap_or_default();
            match weft_proto::config_delta::apply(&held, delta) {
                Ok(config) => {
                    tracing::debug!(
                        version = config.version,
                        base = delta.base_version,
                        tasks = config.tasks.len(),
                        "config delta received"
                    );
                    self.config.send_replace(Some(Arc::new(config)));
                }
                Err(e) => return Some(End::Resync(e.to_string())),
            }
        }
        let managers_changed =
            !m.manager_addrs.is_empty() && m.manager_addrs != self.record.manager_addrs;
        // The removed set only grows; an empty list is an older manager's.
        let removed_changed =
            !m.removed_node_ids.is_empty() && m.removed_node_ids != self.record.removed_node_ids;
        if managers_changed {
            self.record.manager_addrs = m.manager_addrs.clone();
        }
        if removed_changed {
            self.record.removed_node_ids = m.removed_node_ids.clone();
        }
        // Never empty in a cluster (it has a manager); empty is an older
        // manager's message, which says nothing about the set.
        let manager_ids_changed =
            !m.manager_node_ids.is_empty() && m.manager_node_ids != self.record.manager_node_ids;
        if manager_ids_changed {
            self.record.manager_node_ids = m.manager_node_ids.clone();
        }
        if removed_changed || manager_ids_changed {
            *self.trust.write().expect("trust lock") = self.record.manager_trust();
        }
        if (managers_changed || removed_changed || manager_ids_changed)
            && let Err(e) = self.files.save_record(&self.record)
        {
            tracing::warn!(error = %e, "could not persist the manager list");
        }
        self.status.send_modify(|s| {
            s.leader_addr = m.leader_addr.clone();
            s.manager_addrs = m.manager_addrs.clone();
            s.desired_role = desired;
            s.heartbeat_period_ms = m.heartbeat_period_ms;
        });
        let cert_role = self.status.borrow().cert_role.clone();
        let want = match desired {
            Some(pb::NodeRole::Manager) => "manager",
            Some(pb::NodeRole::Worker) => "worker",
            _ => return None,
        };
        if want != cert_role {
            match self.renew(client).await {
                Ok(()) => return Some(End::Renewed),
                Err(e) => self.renewal_failed(&e),
            }
        }
        None
    }

    /// The validity of the certificate in use.
    fn validity(&self) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        let certs = self.certs.read().expect("certs lock");
        let p = PeerIdentity::from_pem(&certs.cert_pem).ok()?;
        Some((p.not_before, p.not_after))
    }

    /// Whether the certificate in use has expired: then no manager accepts
    /// it, renewal cannot work, and only a rejoin helps. Says so (loudly
    /// once, and in `weft info`) instead of knocking on every manager.
    fn expired(&mut self) -> bool {
        let Some((_, not_after)) = self.validity() else {
            return false;
        };
        if not_after > time::OffsetDateTime::now_utc() {
            self.expiry_reported = false;
            return false;
        }
        let msg = expired_message(&self.node_id, not_after);
        if !self.expiry_reported {
            tracing::error!("{msg}");
            self.expiry_reported = true;
        }
        self.status.send_modify(|s| {
            s.connected_to = None;
            s.last_error = msg;
        });
        true
    }

    /// Picks the next renewal time for the certificate in use.
    fn schedule_renewal(&mut self) {
        self.renew_failures = 0;
        if let Some((from, to)) = self.validity() {
            // Never sooner than the first retry delay: a clock far ahead of
            // the CA's would make every new certificate due at once.
            let earliest = time::OffsetDateTime::now_utc() + renewal::RETRY_MIN;
            self.renew_at = renewal::renew_at(from, to, renewal::random_fraction()).max(earliest);
            tracing::debug!(at = %self.renew_at, expires = %to, "certificate renewal scheduled");
        }
    }

    /// How long until the scheduled renewal.
    fn until_renewal(&self) -> Duration {
        renewal::until(time::OffsetDateTime::now_utc(), self.renew_at)
    }

    /// Schedules a retry after a failed renewal, louder as expiry nears.
    fn renewal_failed(&mut self, e: &Error) {
        self.renew_failures = self.renew_failures.saturating_add(1);
        let now = time::OffsetDateTime::now_utc();
        let Some((from, to)) = self.validity() else {
            return;
        };
        let wait = renewal::retry_after(self.renew_failures, now, to);
        self.renew_at = now + wait;
        if renewal::nearly_expired(now, from, to) {
            tracing::error!(
                error = %e,
                expires = %to,
                retry_in_s = wait.as_secs(),
                "certificate renewal failed and the certificate expires soon: \
                 this node loses the cluster when it does"
            );
        } else {
            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "certificate renewal failed");
        }
        self.set_error(format!("certificate renewal failed: {e}"));
    }

    async fn renew(
        &mut self,
        client: &mut DispatcherClient<tonic::transport::Channel>,
    ) -> Result<()> {
        let key = NodeKey::generate()?;
        let req = pb::RenewCertificateRequest {
            node_id: self.node_id.clone(),
            csr_pem: key.csr_pem()?,
        };
        // The session's other work waits while this runs: do not let a
        // stuck leader hold it for the server's whole deadline.
        let rpc_error = |status| Error::Rpc {
            addr: "dispatcher".into(),
            status,
        };
        let resp = tokio::time::timeout(RENEW_TIMEOUT, client.renew_certificate(req))
            .await
            .map_err(|_| rpc_error(tonic::Status::deadline_exceeded("renewal timed out")))?
            .map_err(rpc_error)?
            .into_inner();
        let peer = PeerIdentity::from_pem(&resp.cert_pem)?;
        let mut certs = self.certs.read().expect("certs lock").clone();
        certs.cert_pem = resp.cert_pem;
        certs.key_pem = key.to_pem();
        self.files.save_certs(&certs)?;
        self.record.role = peer.role.as_str().to_string();
        self.files.save_record(&self.record)?;
        *self.certs.write().expect("certs lock") = certs;
        self.status.send_modify(|s| {
            s.cert_role = peer.role.as_str().to_string();
            s.cert_generation += 1;
        });
        self.schedule_renewal();
        tracing::info!(
            role = peer.role.as_str(),
            expires = %peer.not_after,
            "new node certificate installed"
        );
        Ok(())
    }
}

/// How often an agent whose certificate has expired looks again (a rejoin
/// restarts the agent, so this only matters for a clock that was wrong).
const EXPIRED_RECHECK: Duration = Duration::from_secs(5);

/// What to do about a certificate that expired while the node was offline.
pub fn expired_message(node_id: &str, not_after: time::OffsetDateTime) -> String {
    format!(
        "the certificate of node {node_id} expired at {not_after}: no manager accepts it and it \
         cannot be renewed. Rejoin with the same node ID, keeping its tasks and networks: run \
         `weft join --token TOKEN MANAGER:4377` on this node with the join token of its role \
         (`weft join-token worker` or `manager` on a manager)"
    )
}

/// What a node is told when managers refuse its certificate in the
/// handshake: they do that only for removed nodes.
const REVOKED: &str = "this node was removed from the cluster (the managers refuse its \
                       certificate); run `weft leave --force`, then join again with a fresh token";

/// Whether `e` (or what caused it) is a manager's TLS alert saying this
/// node's certificate is revoked.
fn revoked(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.to_string().contains("CertificateRevoked") {
            return true;
        }
        cur = e.source();
    }
    false
}
