//! Who may call what on the manager port, end to end: real daemons in
//! namespace hosts, real mTLS, every RPC of the Control, Raft and
//! Dispatcher services called by every kind of caller, and for every
//! refusal a check that the cluster's state did not change.
//!
//! The callers: a manager, a worker, a worker speaking for another node, a
//! demoted manager's stolen certificate, the same certificate once its node
//! is removed, no certificate, another cluster's certificate, and the local
//! socket as root and as an unprivileged user.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Lab, in_host, wait_for};
use tonic::transport::Channel;
use tonic::{Code, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::control_client::ControlClient;
use weft_proto::v1::dispatcher_client::DispatcherClient;
use weft_proto::v1::raft_client::RaftClient;

/// One call's outcome.
type Outcome = (&'static str, Result<(), Status>);

/// What a caller presents: the CA it trusts and its certificate, if any.
#[derive(Clone)]
struct Creds {
    ca: String,
    cert: Option<(String, String)>,
}

impl Creds {
    /// `host`'s own files, read from its data directory.
    fn of(lab: &Lab, host: &str) -> Creds {
        Creds::from_dir(&lab.data_dir(host).join("certs"))
    }

    fn from_dir(dir: &Path) -> Creds {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("cert file");
        Creds {
            ca: read("ca.pem"),
            cert: Some((read("node.pem"), read("node-key.pem"))),
        }
    }

    /// A channel to the manager at `addr`, presenting these credentials.
    async fn connect(&self, addr: &str) -> Result<Channel, weft_proto::tls::TlsError> {
        let identity = self.cert.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        weft_proto::tls::channel_to_manager(addr, &self.ca, identity).await
    }

    /// The node ID in the certificate (CN).
    fn node_id(&self) -> String {
        let (cert, _) = self.cert.as_ref().expect("a certificate");
        weft_proto::identity::PeerIdentity::from_pem(cert)
            .expect("node certificate")
            .node_id
    }
}

/// Which calls to make.
#[derive(Clone, Copy, PartialEq)]
enum Set {
    /// Every RPC, writes included, with requests that would change the
    /// cluster if they were let through (for callers that must be refused).
    All,
    /// Reads only (for callers that must get through).
    Reads,
}

macro_rules! call {
    ($out:ident, $client:ident . $rpc:ident($req:expr)) => {
        $out.push((stringify!($rpc), $client.$rpc($req).await.map(|_| ())))
    };
}

async fn control_calls(ch: Channel, set: Set) -> Vec<Outcome> {
    let mut c = ControlClient::new(ch);
    let mut out = Vec::new();
    call!(out, c.get_cluster(pb::GetClusterRequest::default()));
    call!(out, c.list_nodes(pb::ListNodesRequest::default()));
    call!(out, c.list_networks(pb::ListNetworksRequest::default()));
    call!(out, c.list_tasks(pb::ListTasksRequest::default()));
    call!(out, c.list_services(pb::ListServicesRequest::default()));
    call!(out, c.get_join_tokens(pb::GetJoinTokensRequest::default()));
    call!(
        out,
        c.list_cluster_images(pb::ListClusterImagesRequest::default())
    );
    call!(out, c.events(pb::EventsRequest::default()));
    call!(out, c.doctor(pb::DoctorRequest { probe: false }));
    if set == Set::Reads {
        return out;
    }
    let node = || "w1".to_string();
    call!(out, c.update_cluster(pb::UpdateClusterRequest::default()));
    call!(out, c.get_node(pb::GetNodeRequest { node: node() }));
    call!(
        out,
        c.update_node(pb::UpdateNodeRequest {
            node: node(),
            label_add: [("pwned".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.set_node_role(pb::SetNodeRoleRequest {
            node: node(),
            role: pb::NodeRole::Manager as i32,
            ..Default::default()
        })
    );
    call!(
        out,
        c.remove_node(pb::RemoveNodeRequest {
            node: node(),
            force: true,
        })
    );
    call!(
        out,
        c.rotate_join_token(pb::RotateJoinTokenRequest {
            role: pb::NodeRole::Manager as i32,
        })
    );
    call!(
        out,
        c.create_network(pb::CreateNetworkRequest {
            name: "pwned".into(),
            driver: "overlay".into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.get_network(pb::GetNetworkRequest {
            network: "ingress".into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.remove_network(pb::RemoveNetworkRequest {
            network: "appnet".into(),
        })
    );
    call!(out, c.connect_network(pb::ConnectNetworkRequest::default()));
    call!(
        out,
        c.disconnect_network(pb::DisconnectNetworkRequest::default())
    );
    call!(out, c.remove_task(pb::RemoveTaskRequest::default()));
    call!(
        out,
        c.create_service(pb::CreateServiceRequest {
            spec: Some(pb::ServiceSpecMsg {
                name: "pwned".into(),
                mode: "global".into(),
                command: vec!["true".into()],
                ..Default::default()
            }),
        })
    );
    call!(
        out,
        c.update_service(pb::UpdateServiceRequest {
            service: "web".into(),
            set_replicas: true,
            replicas: 0,
            ..Default::default()
        })
    );
    call!(
        out,
        c.get_service(pb::GetServiceRequest {
            service: "web".into(),
        })
    );
    call!(
        out,
        c.remove_service(pb::RemoveServiceRequest {
            service: "web".into(),
        })
    );
    call!(out, c.service_logs(pb::ServiceLogsRequest::default()));
    call!(out, c.rotate_node_key(pb::RotateNodeKeyRequest::default()));
    call!(out, c.unlock_key(pb::UnlockKeyRequest { rotate: true }));
    call!(
        out,
        c.load_image(tokio_stream::iter(vec![pb::LoadImageRequest {
            data: b"not an archive".to_vec(),
            ..Default::default()
        }]))
    );
    out
}

async fn raft_calls(ch: Channel, set: Set) -> Vec<Outcome> {
    let mut c = RaftClient::new(ch);
    let mut out = Vec::new();
    let empty = || pb::RaftPayload {
        json: b"{}".to_vec(),
    };
    call!(out, c.ping(empty()));
    if set == Set::Reads {
        return out;
    }
    call!(out, c.append_entries(empty()));
    call!(out, c.vote(empty()));
    call!(out, c.install_snapshot(empty()));
    call!(out, c.propose(empty()));
    out
}

/// Dispatcher calls in the name of `node`.
async fn dispatcher_calls(ch: Channel, node: &str, set: Set) -> Vec<Outcome> {
    let mut c = DispatcherClient::new(ch);
    let mut out = Vec::new();
    let node_id = node.to_string();
    call!(
        out,
        c.heartbeat(pb::HeartbeatRequest {
            node_id: node_id.clone(),
            stopping: false,
        })
    );
    // The stream of heartbeats: one beat, and its answer (a beat naming
    // another node than the certificate's is refused there).
    let beat = pb::HeartbeatRequest {
        node_id: node_id.clone(),
        stopping: false,
    };
    let answered = match c.heartbeats(tokio_stream::iter(vec![beat])).await {
        Ok(r) => match r.into_inner().message().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Status::internal("the heartbeat went unanswered")),
            Err(st) => Err(st),
        },
        Err(st) => Err(st),
    };
    out.push(("heartbeats", answered));
    call!(
        out,
        c.list_node_networks(pb::ListNetworksRequest::default())
    );
    // No such fetch: NOT_FOUND once past authorization (which node a fetch
    // targets is checked in weft_manager::imagepush's tests).
    call!(
        out,
        c.fetch_image(pb::ImageFetchRequest {
            node_id: node_id.clone(),
            fetch_id: "0".repeat(32),
        })
    );
    call!(
        out,
        c.report_image_fetch(pb::ImageFetchReport {
            node_id: node_id.clone(),
            fetch_id: "0".repeat(32),
            ..Default::default()
        })
    );
    // A report nobody asked for: acknowledged and dropped.
    call!(
        out,
        c.report_probe(pb::ProbeReport {
            node_id: node_id.clone(),
            request_id: 1,
            ..Default::default()
        })
    );
    call!(out, c.node_doctor(pb::DoctorRequest { probe: false }));
    if set == Set::Reads {
        return out;
    }
    call!(
        out,
        c.session(pb::SessionRequest {
            node_id: node_id.clone(),
            accepts_deltas: true,
            ..Default::default()
        })
    );
    call!(
        out,
        c.renew_certificate(pb::RenewCertificateRequest {
            node_id: node_id.clone(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.report_status(pb::StatusReport {
            node_id: node_id.clone(),
            bridge_subnet: "0.0.0.0/0".into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.run_task(pb::RunTaskRequest {
            node_id: node_id.clone(),
            command: vec!["true".into()],
            ..Default::default()
        })
    );
    call!(
        out,
        c.remove_task(pb::NodeRemoveTaskRequest {
            node_id: node_id.clone(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.publish_log_stream(tokio_stream::iter(vec![pb::PublishLogsRequest {
            node_id: node_id.clone(),
            ..Default::default()
        }]))
    );
    call!(
        out,
        c.get_node_network(pb::GetNetworkRequest {
            network: "bridge".into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.create_local_network(pb::CreateNetworkRequest {
            name: "pwned".into(),
            driver: "bridge".into(),
            ..Default::default()
        })
    );
    call!(
        out,
        c.remove_local_network(pb::RemoveNetworkRequest {
            network: "bridge".into(),
        })
    );
    call!(out, c.connect_task(pb::ConnectNetworkRequest::default()));
    call!(
        out,
        c.disconnect_task(pb::DisconnectNetworkRequest::default())
    );
    call!(
        out,
        c.leave(pb::LeaveRequest {
            node_id: node_id.clone(),
            force: true,
        })
    );
    out
}

/// Connects with `creds` and makes the calls of `set` on each service;
/// `claim` is the node the dispatcher calls speak for (`None`: no
/// dispatcher calls). A connection the manager refuses counts as a refusal
/// of every call.
async fn probe(addr: String, creds: Creds, claim: Option<String>, set: Set) -> Vec<Outcome> {
    let ch = match creds.connect(&addr).await {
        Ok(ch) => ch,
        Err(e) => {
            let st = Status::unavailable(format!("connect: {e}"));
            return vec![("connect", Err(st))];
        }
    };
    let mut out = control_calls(ch.clone(), set).await;
    out.extend(raft_calls(ch.clone(), set).await);
    if let Some(claim) = claim {
        out.extend(dispatcher_calls(ch, &claim, set).await);
    }
    out
}

/// How a caller must be treated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Past authorization (the call may still fail on its input).
    Through,
    /// PERMISSION_DENIED or UNAUTHENTICATED.
    Denied,
    /// Refused in the TLS handshake. With TLS 1.3 the client finishes its
    /// side of the handshake before the server has checked the client
    /// certificate, so the refusal reaches it as a transport error on the
    /// first call (broken pipe, connection closed, or the alert itself);
    /// the test checks the manager's log for the refusal as well.
    TlsRefused,
}

/// Whether `st` is what `e` asks for.
fn matches(e: Expect, st: &Status) -> bool {
    let denied = matches!(st.code(), Code::PermissionDenied | Code::Unauthenticated);
    match e {
        Expect::Through => !denied,
        Expect::Denied => denied,
        Expect::TlsRefused => {
            matches!(
                st.code(),
                Code::Unknown | Code::Unavailable | Code::Cancelled
            ) && format!("{st:?}").contains("transport")
        }
    }
}

/// Whether `host`'s daemon log has a line with all of `words`.
fn logged(lab: &Lab, host: &str, words: &[&str]) -> bool {
    lab.daemon_log(host)
        .lines()
        .any(|l| words.iter().all(|w| l.contains(w)))
}

/// Checks every outcome against `e`; returns how many calls were made.
fn expect(who: &str, outcomes: &[Outcome], e: Expect) -> usize {
    for (rpc, r) in outcomes {
        match r {
            Ok(()) => assert_eq!(e, Expect::Through, "{who}: {rpc} succeeded"),
            Err(st) => assert!(matches(e, st), "{who}: {rpc}: expected {e:?}, got {st:?}"),
        }
    }
    eprintln!("{who}: {} call(s), all {e:?}", outcomes.len());
    outcomes.len()
}

/// What the cluster holds, as the operator sees it on `host`.
fn digest(lab: &Lab, host: &str) -> String {
    let mut d = String::new();
    for args in [
        &["node", "ls"][..],
        &["node", "inspect", "w1"],
        &["network", "ls"],
        &["service", "ls"],
        &["join-token", "-q", "worker"],
        &["join-token", "-q", "manager"],
        &["info"],
    ] {
        d.push_str(&lab.weft(host, args));
    }
    // Raft's indexes move with the cluster's own bookkeeping (the leader's
    // liveness and membership loops), not with the calls under test.
    d.lines()
        .filter(|l| !l.contains(" index: ") && !l.trim_start().starts_with("Term:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A copy of `host`'s certificate files, as an attacker would take them.
fn steal(lab: &Lab, host: &str, to: &Path) -> PathBuf {
    let dir = to.join(format!("stolen-{host}"));
    std::fs::create_dir_all(&dir).expect("dir");
    for f in ["ca.pem", "node.pem", "node-key.pem"] {
        std::fs::copy(lab.data_dir(host).join("certs").join(f), dir.join(f)).expect("copy");
    }
    dir
}

/// The attack of the issue: a global service, root on every node.
const CREATE_GLOBAL: &[&str] = &[
    "service", "create", "--name", "pwned", "--mode", "global", "--", "true",
];

/// Three managers and a worker, and x1, a cluster of its own (its
/// certificate chains to another CA).
fn matrix_lab() -> Lab {
    let mut lab = Lab::new("authz", &["m1", "m2", "m3", "w1", "x1"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &[]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    lab.join("w1", &wt, "m1");
    lab.init("x1", &[]);
    wait_for("four nodes ready", Duration::from_secs(30), || {
        let rows = lab.node_ls("m1");
        rows.len() == 4 && rows.iter().all(|r| r.status == "Ready")
    });
    lab
}

#[test]
fn authorization_matrix() {
    let lab = matrix_lab();
    let leader = "m1";
    let addr = format!("{}:4377", lab.addr(leader));
    let scratch = tempfile::tempdir().expect("scratch");
    let stolen = steal(&lab, "m3", scratch.path());
    let ca = Creds::of(&lab, "m1").ca;
    let mut tried = 0;
    let mut refusals = 0;

    // Let through: a manager for everything it may read, a worker on the
    // dispatcher for itself.
    let m1 = Creds::of(&lab, "m1");
    let m1_id = m1.node_id();
    let out = in_host(&lab, "w1", {
        let (addr, m1, claim) = (addr.clone(), m1.clone(), m1_id.clone());
        async move || probe(addr, m1, Some(claim), Set::Reads).await
    });
    tried += expect("manager m1", &out, Expect::Through);
    let w1 = Creds::of(&lab, "w1");
    let w1_id = w1.node_id();
    let out = in_host(&lab, "w1", {
        let (addr, w1, claim) = (addr.clone(), w1.clone(), w1_id.clone());
        async move || {
            let ch = w1.connect(&addr).await.expect("w1 connects");
            dispatcher_calls(ch, &claim, Set::Reads).await
        }
    });
    tried += expect(
        "worker w1 on the dispatcher, for itself",
        &out,
        Expect::Through,
    );
    // The stolen certificate works while m3 is a manager: the attack's
    // starting point is real.
    let out = lab.weft_over_tcp("x1", leader, &stolen, &["node", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tried += 1;

    // Refused, and nothing changes: each caller's whole set of calls.
    let mut refused_set =
        |who: &str, from: &str, creds: Creds, claim: Option<String>, e: Expect| {
            let before = digest(&lab, leader);
            let out = in_host(&lab, from, {
                let addr = addr.clone();
                async move || probe(addr, creds, claim, Set::All).await
            });
            tried += expect(who, &out, e);
            refusals += out.len();
            assert_eq!(
                digest(&lab, leader),
                before,
                "{who}: refused calls changed the cluster"
            );
        };
    // (A worker's dispatcher calls for itself are let through, above.)
    refused_set("worker w1", "w1", w1.clone(), None, Expect::Denied);
    refused_set(
        "no certificate",
        "x1",
        Creds {
            ca: ca.clone(),
            cert: None,
        },
        Some(w1_id.clone()),
        Expect::Denied,
    );
    refused_set(
        "another cluster's manager",
        "x1",
        Creds {
            ca: ca.clone(),
            ..Creds::of(&lab, "x1")
        },
        Some(Creds::of(&lab, "x1").node_id()),
        Expect::TlsRefused,
    );
    assert!(
        logged(&lab, leader, &["TLS handshake failed", "UnknownIssuer"]),
        "the leader logs the foreign certificate's handshake refusal"
    );

    // Demoted: m3's stolen manager certificate is refused at once, though
    // it still says `manager`, and Raft lets it go once it left the group.
    lab.weft(leader, &["node", "demote", "m3"]);
    wait_for("m3 out of the managers", Duration::from_secs(20), || {
        lab.node_ls(leader)
            .iter()
            .any(|r| r.hostname == "m3" && r.manager.is_empty())
    });
    let stolen_creds = Creds::from_dir(&stolen);
    let m3_id = stolen_creds.node_id();
    refused_set(
        "demoted manager m3 (stolen certificate)",
        "x1",
        stolen_creds.clone(),
        // m3 itself is still a member (a worker now): its dispatcher calls
        // for itself are a member's, renewal to a worker certificate included.
        None,
        Expect::Denied,
    );

    // Removed: the same certificate now fails in the TLS handshake.
    lab.weft(leader, &["node", "rm", "--force", "m3"]);
    wait_for("m3 removed", Duration::from_secs(20), || {
        !lab.node_ls(leader).iter().any(|r| r.hostname == "m3")
    });
    refused_set(
        "removed manager m3 (stolen certificate)",
        "x1",
        stolen_creds,
        Some(m3_id.clone()),
        Expect::TlsRefused,
    );
    assert!(
        logged(
            &lab,
            leader,
            &["refused the certificate of a removed node", &m3_id]
        ),
        "the leader refuses m3's certificate in the handshake"
    );
    // Nodes learn the removal too, and keep it across restarts: their own
    // client check refuses m3's certificate if it ever poses as a manager.
    wait_for("w1 records m3 as removed", Duration::from_secs(10), || {
        std::fs::read_to_string(lab.data_dir("w1").join("node.json"))
            .is_ok_and(|r| r.contains("removed_node_ids") && r.contains(&m3_id))
    });
    let (t, r) = removed_manager_creates_nothing(&lab, &stolen);
    tried += t;
    refusals += r;
    let (t, r) = worker_speaking_for_another_node(&lab, leader, &addr, &w1, &m1_id);
    tried += t;
    refusals += r;
    let (t, r) = only_root_reaches_the_local_socket(&lab);
    tried += t;
    refusals += r;
    eprintln!(
        "authorization matrix: {tried} calls tried, {refusals} refused as expected, state unchanged after every refused set"
    );
}

/// The reproduction, through the CLI, on every manager: the
/// removed manager's stolen certificate creates no service. (Calls tried,
/// refused.)
fn removed_manager_creates_nothing(lab: &Lab, stolen: &std::path::Path) -> (usize, usize) {
    let (mut tried, mut refusals) = (0, 0);
    for m in ["m1", "m2"] {
        let out = lab.weft_over_tcp("x1", m, stolen, CREATE_GLOBAL);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{m}: the removed manager's certificate created a service"
        );
        eprintln!(
            "{m} refuses the removed manager's certificate: {}",
            err.trim()
        );
        assert!(!lab.weft(m, &["service", "ls"]).contains("pwned"));
        tried += 1;
        refusals += 1;
    }
    (tried, refusals)
}

/// A worker speaking for another node: refused on every dispatcher call,
/// nothing changes. (Calls tried, refused.)
fn worker_speaking_for_another_node(
    lab: &Lab,
    leader: &str,
    addr: &str,
    w1: &Creds,
    m1_id: &str,
) -> (usize, usize) {
    let before = digest(lab, leader);
    let out = in_host(lab, "w1", {
        let (addr, w1, claim) = (addr.to_string(), w1.clone(), m1_id.to_string());
        async move || {
            let ch = w1.connect(&addr).await.expect("w1 connects");
            // Heartbeat and ListNodeNetworks aside (the latter takes the
            // node from the certificate, as NodeDoctor does), every call
            // names m1.
            dispatcher_calls(ch, &claim, Set::All)
                .await
                .into_iter()
                .filter(|(rpc, _)| {
                    !matches!(
                        *rpc,
                        "list_node_networks" | "get_node_network" | "node_doctor"
                    )
                })
                .filter(|(rpc, _)| {
                    !matches!(
                        *rpc,
                        "create_local_network"
                            | "remove_local_network"
                            | "connect_task"
                            | "disconnect_task"
                    )
                })
                .collect::<Vec<_>>()
        }
    });
    let tried = expect("worker w1 speaking for m1", &out, Expect::Denied);
    assert_eq!(digest(lab, leader), before);
    (tried, out.len())
}

/// The local socket: root may, anyone else may not even connect. (Calls
/// tried, refused.)
fn only_root_reaches_the_local_socket(lab: &Lab) -> (usize, usize) {
    let sock = lab.host_dir("m1").join("weft.sock");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::WEFT)
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(["node", "ls"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ermission denied"),
        "a non-root user reached the local socket: {err}"
    );
    assert!(lab.weft("m1", &["node", "ls"]).contains("w1"));
    (2, 1)
}

/// Files under `dir` (recursively, not crossing into other filesystems)
/// whose mode gives the group or others any access.
fn open_to_others(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let root_dev = std::fs::metadata(dir).expect("dir").dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // gone meanwhile (a temporary file renamed)
        };
        if meta.dev() != root_dev || meta.file_type().is_symlink() {
            continue;
        }
        if meta.mode() & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), meta.mode() & 0o7777));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir").flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_daemon_started_with_umask_022_keeps_its_files_private() {
    // As a daemon started by hand from a login shell would be.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut lab = Lab::new("modes", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "s",
            "--replicas",
            "2",
            "-e",
            "SECRET=x",
            "--",
            "sleep",
            "300",
        ],
    );
    let id = lab.run_task("w1", &["-e", "TOKEN=y", "--", "sleep", "300"]);
    // Where the replicas land depends on when w1 turns Ready; each host
    // runs at least one task either way (w1 its standalone one).
    wait_for(
        "tasks running on both hosts",
        Duration::from_secs(20),
        || {
            ["m1", "w1"]
                .iter()
                .all(|h| lab.weft(h, &["ps"]).contains("running"))
        },
    );
    for host in ["m1", "w1"] {
        let data = lab.data_dir(host);
        assert!(data.join("certs/node-key.pem").exists());
        let open = open_to_others(&data);
        assert!(open.is_empty(), "{host}: readable by others: {open:?}");
        let tasks = lab.host_dir(host).join("run/tasks");
        let open = open_to_others(&tasks);
        assert!(
            open.is_empty(),
            "{host}: task files readable by others: {open:?}"
        );
    }
    let spec = lab
        .host_dir("w1")
        .join("run/tasks")
        .join(&id)
        .join("spec.json");
    assert!(
        std::fs::read_to_string(&spec).is_ok_and(|s| s.contains("TOKEN")),
        "the task spec {} holds the environment",
        spec.display()
    );
}
