//! A node whose certificate expired while it was offline rejoins with a
//! join token and keeps its node ID, tasks and addresses; what must not
//! rejoin is refused and changes nothing. And nodes refuse a demoted
//! manager's still-valid manager certificate.
//!
//! Certificates here live 20 s (the minimum is lowered for these tests
//! only, through `WEFT_TEST_MIN_CERT_EXPIRY_SECS`), so a node stopped for
//! one lifetime comes back with an expired one.

mod common;

use std::time::Duration;

use common::{Lab, in_host, wait_for};
use tonic::{Code, Status};
use weft_proto::identity::{NodeKey, PeerIdentity};
use weft_proto::token::JoinToken;
use weft_proto::v1 as pb;
use weft_proto::v1::join_client::JoinClient;

/// `host`'s whole daemon log.
fn log_of(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.host_dir(host).join("daemon.log")).unwrap_or_default()
}

/// The certificate `host` holds on disk.
fn cert_of(lab: &Lab, host: &str) -> PeerIdentity {
    let pem = std::fs::read_to_string(lab.data_dir(host).join("certs/node.pem")).expect("cert");
    PeerIdentity::from_pem(&pem).expect("node cert")
}

fn read_cert_files(lab: &Lab, host: &str) -> (String, String) {
    let dir = lab.data_dir(host).join("certs");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("cert file");
    (read("node.pem"), read("node-key.pem"))
}

/// Waits until `host`'s certificate on disk has expired.
fn wait_expired(lab: &Lab, host: &str) {
    let not_after = cert_of(lab, host).not_after;
    wait_for(
        &format!("{host}'s certificate to expire"),
        Duration::from_secs(60),
        || time::OffsetDateTime::now_utc() > not_after + time::Duration::seconds(1),
    );
}

/// What a rejoin would change: the nodes, their IDs and certificate
/// expiries as the manager lists them.
fn membership(lab: &Lab) -> Vec<(String, String, String)> {
    lab.node_ls("m1")
        .into_iter()
        // m1 renews its own short-lived certificate on its own schedule
        // while the test runs: its expiry is not the membership's.
        .map(|r| {
            let expiry = if r.hostname == "m1" {
                String::new()
            } else {
                r.cert_expiry
            };
            (r.id, r.hostname, expiry)
        })
        .collect()
}

/// A rejoin request made by hand from `host` to `via`: `cert_pem` as the
/// old certificate, the proof signed with `proof_key_pem`.
fn raw_rejoin(
    lab: &Lab,
    host: &str,
    via: &str,
    token: &str,
    cert_pem: &str,
    proof_key_pem: &str,
) -> Result<pb::JoinResponse, Status> {
    let addr = format!("{}:4377", lab.addr(via));
    let (token, cert_pem, key_pem) = (
        token.to_string(),
        cert_pem.to_string(),
        proof_key_pem.to_string(),
    );
    in_host(lab, host, async move || {
        let parsed: JoinToken = token.parse().expect("token");
        let ca = weft_proto::tls::fetch_trusted_ca(&addr, &parsed)
            .await
            .expect("the cluster's CA");
        let ch = weft_proto::tls::channel_to_manager(&addr, &ca, None)
            .await
            .expect("channel");
        let csr_pem = NodeKey::generate().unwrap().csr_pem().unwrap();
        let rejoin_proof = NodeKey::from_pem(&key_pem)
            .map(|k| weft_proto::tls::sign_proof(&k, &csr_pem).unwrap())
            .unwrap_or_else(|_| b"not a signature".to_vec());
        JoinClient::new(ch)
            .join(pb::JoinRequest {
                token,
                csr_pem,
                hostname: "rejoiner".into(),
                rejoin_cert_pem: cert_pem,
                rejoin_proof,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    })
}

/// `(task ID, address)` of the running tasks in `weft service ps` / `weft ps`
/// output whose line contains `what`.
fn tasks(out: &str, what: &str) -> Vec<(String, String)> {
    out.lines()
        .skip(1)
        .filter(|l| l.contains(what) && l.contains("running"))
        .map(|l| {
            let id = l.split_whitespace().next().unwrap_or_default().to_string();
            let addr = l
                .split_whitespace()
                .find(|f| f.contains('='))
                .unwrap_or_default()
                .to_string();
            (id, addr)
        })
        .collect()
}

#[test]
fn a_worker_whose_certificate_expired_offline_rejoins_as_itself() {
    // SAFETY: set before the lab starts any thread or daemon; the daemons
    // inherit it. nextest runs this test in a process of its own.
    unsafe { std::env::set_var("WEFT_TEST_MIN_CERT_EXPIRY_SECS", "10") };
    let mut lab = Lab::new("rejoin", &["m1", "w1", "w2"]);
    lab.start_all();
    // A long heartbeat period: w1 stays `Ready` (its service task stays
    // where it is) while it is offline for one certificate lifetime. A node
    // offline past three periods is marked down and its service tasks are
    // rescheduled, rejoin or not; its standalone tasks stay.
    let (wt, mt) = lab.init("m1", &["--cert-expiry", "20s", "--heartbeat-period", "30s"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    wait_for("every node ready", Duration::from_secs(30), || {
        let rows = lab.node_ls("m1");
        rows.len() == 3 && rows.iter().all(|r| r.status == "Ready")
    });
    lab.overlay_network("m1", "10.77.0.0/24", "appnet");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname==w1",
            "--",
            "sleep",
            "100000",
        ],
    );
    let standalone = lab.run_task("w1", &["--name", "solo", "--", "sleep", "100000"]);
    let mut web = Vec::new();
    wait_for(
        "web and solo running on w1",
        Duration::from_secs(30),
        || {
            web = tasks(&lab.weft("m1", &["service", "ps", "web"]), "w1");
            web.len() == 1 && !tasks(&lab.weft("w1", &["ps"]), "solo").is_empty()
        },
    );
    let solo = tasks(&lab.weft("w1", &["ps"]), "solo");
    assert_eq!(solo[0].0, standalone);
    let w1_id = cert_of(&lab, "w1").node_id;
    eprintln!("w1 = {w1_id}, web task {web:?}, standalone {solo:?}");

    // w1 and w2 go offline; w2 is removed meanwhile.
    lab.kill9("w1");
    lab.kill9("w2");
    lab.weft("m1", &["node", "rm", "--force", "w2"]);
    wait_expired(&lab, "w1");
    wait_expired(&lab, "w2");

    // Back with expired certificates: each says what to do.
    lab.start("w1");
    lab.start("w2");
    wait_for("w1 says it must rejoin", Duration::from_secs(20), || {
        lab.weft("w1", &["info"]).contains("weft join --token")
            && log_of(&lab, "w1").contains("expired at")
    });
    let remote = format!("{}:4377", lab.addr("m1"));
    let before = membership(&lab);
    let w1_files = read_cert_files(&lab, "w1");

    // What must not rejoin is refused, and changes nothing.
    let mut refused = 0;
    let mut refuse = |what: &str, err: String, words: &[&str]| {
        for w in words {
            assert!(err.contains(w), "{what}: {err:?} lacks {w:?}");
        }
        assert_eq!(membership(&lab), before, "{what} changed the membership");
        refused += 1;
        eprintln!("refused as expected: {what}: {}", err.trim());
    };
    refuse(
        "w1 with the manager token",
        lab.weft_err("w1", &["join", "--token", &mt, &remote]),
        &["worker join token"],
    );
    refuse(
        "w1 asking for another address",
        lab.weft_err(
            "w1",
            &[
                "join",
                "--token",
                &wt,
                "--advertise-addr",
                "198.18.0.99",
                &remote,
            ],
        ),
        &["keeps its addresses"],
    );
    refuse(
        "removed w2",
        lab.weft_err("w2", &["join", "--token", &wt, &remote]),
        &["was removed from the cluster"],
    );
    let (w1_cert, w1_key) = w1_files.clone();
    let thief = NodeKey::generate().unwrap().to_pem();
    let st = raw_rejoin(&lab, "w1", "m1", &wt, &w1_cert, &thief).unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    refuse(
        "w1's certificate with a proof by another key",
        st.message().into(),
        &["does not verify"],
    );
    // A certificate for w1's node ID and this cluster's ID, from another
    // CA (a forgery), and one of another cluster.
    let cluster_id = cert_of(&lab, "m1").cluster_id;
    for (what, cluster) in [
        ("forged", cluster_id.as_str()),
        ("other cluster", "othercluster"),
    ] {
        let ca = weft_manager::ca::ClusterCa::generate(cluster).unwrap();
        let (key, issued) = ca
            .issue_for_self(
                &w1_id,
                weft_proto::identity::Role::Worker,
                cluster,
                Duration::from_secs(3600),
            )
            .unwrap();
        let st = raw_rejoin(&lab, "w1", "m1", &wt, &issued.cert_pem, &key.to_pem()).unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied, "{what}: {st:?}");
        refuse(
            what,
            st.message().into(),
            &["not issued by this cluster's CA"],
        );
    }
    let st = raw_rejoin(&lab, "w1", "m1", &wt, "garbage", &w1_key).unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    refuse("garbage", st.message().into(), &["not one PEM certificate"]);
    assert_eq!(read_cert_files(&lab, "w1"), w1_files, "w1's files changed");

    // The rejoin: same node ID, a new certificate, the same tasks.
    let out = lab.weft("w1", &["join", "--token", &wt, &remote]);
    assert!(out.contains("rejoined"), "{out}");
    let now = cert_of(&lab, "w1");
    assert_eq!(now.node_id, w1_id);
    assert!(!now.expired(), "a fresh certificate");
    wait_for("w1 back in session", Duration::from_secs(30), || {
        lab.weft("w1", &["info"]).contains("Cluster: active")
    });
    let rows = lab.node_ls("m1");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = rows.iter().find(|r| r.hostname == "w1").expect("w1 listed");
    assert_eq!(row.id, w1_id, "same node ID in node ls");
    assert_eq!(row.status, "Ready");
    assert_eq!(
        tasks(&lab.weft("m1", &["service", "ps", "web"]), "w1"),
        web,
        "the same service task, same address"
    );
    assert_eq!(
        tasks(&lab.weft("w1", &["ps"]), "solo"),
        solo,
        "the same standalone task, same address"
    );
    assert!(
        log_of(&lab, "m1").contains("node rejoined with its own node ID"),
        "m1 logs the rejoin"
    );
    eprintln!("{refused} refusals, membership unchanged after each; w1 rejoined as {w1_id}");

    // A session stays open no longer than the certificate it was opened
    // with: one opened by hand with w1's current certificate (which w1
    // itself renews meanwhile) is ended by the manager at its expiry.
    let (cert, key) = read_cert_files(&lab, "w1");
    let not_after = PeerIdentity::from_pem(&cert).unwrap().not_after;
    let ca = std::fs::read_to_string(lab.data_dir("w1").join("certs/ca.pem")).expect("ca");
    let addr = remote.clone();
    let node_id = w1_id.clone();
    let ended = in_host(&lab, "w1", async move || {
        let ch = weft_proto::tls::channel_to_manager(&addr, &ca, Some((&cert, &key)))
            .await
            .expect("channel");
        let mut stream = pb::dispatcher_client::DispatcherClient::new(ch)
            .session(pb::SessionRequest {
                node_id,
                ..Default::default()
            })
            .await
            .expect("a session with a valid certificate")
            .into_inner();
        let mut messages = 0;
        let end = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => messages += 1,
                    Ok(None) => return Err("the stream ended without an error".to_string()),
                    Err(st) => return Ok(st),
                }
            }
        })
        .await
        .expect("the session ends within a minute");
        (end, messages, time::OffsetDateTime::now_utc())
    });
    let (end, messages, at) = ended;
    let st = end.expect("an error status");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("expired"), "{st:?}");
    assert!(messages >= 1, "the session was open");
    assert!(
        at >= not_after,
        "ended at {at}, before the expiry {not_after}"
    );
    eprintln!(
        "a session opened with a certificate expiring at {not_after} was ended at {at} ({messages} messages before)"
    );
}

/// `host`'s node.json.
fn record_of(lab: &Lab, host: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(lab.data_dir(host).join("node.json")).expect("node.json");
    serde_json::from_str(&text).expect("json")
}

/// Serves TLS on `addr` in the namespace pinned at `pin` with the manager
/// certificate `(cert, key)` of the cluster `ca`, as an attacker holding a
/// demoted manager's certificate would, until `stop` fires.
fn pose_as_manager(
    pin: std::path::PathBuf,
    addr: String,
    ca: String,
    (cert, key): (String, String),
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        common::in_netns(pin, async move || {
            let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
            let cert = weft_proto::tls::ReloadableCert::from_pem(&cert, &key).expect("cert");
            let config = weft_proto::tls::server_config(&ca, &cert, std::sync::Arc::new(|_| false))
                .expect("config");
            let _incoming = weft_proto::tls::tls_incoming(listener, config);
            let _ = tokio::time::timeout(Duration::from_secs(60), stop).await;
        })
    })
}

#[test]
fn managers_rejoin_and_nodes_refuse_a_demoted_manager() {
    // SAFETY: as above; nextest runs this test in a process of its own.
    unsafe { std::env::set_var("WEFT_TEST_MIN_CERT_EXPIRY_SECS", "10") };
    let mut lab = Lab::new("rejoin-mgr", &["m1", "m2", "m3", "w1"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &["--cert-expiry", "20s"]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    lab.join("w1", &wt, "m1");
    common::wait_voters(&lab, "m1", &["m1", "m2", "m3"]);
    let remote = format!("{}:4377", lab.addr("m1"));

    // A manager offline past its certificate's life: it is still a voter
    // of the Raft group, and rejoins with the manager token as itself.
    let m3_id = cert_of(&lab, "m3").node_id;
    lab.kill9("m3");
    wait_expired(&lab, "m3");
    lab.start("m3");
    wait_for("m3 says it must rejoin", Duration::from_secs(20), || {
        lab.weft("m3", &["info"]).contains("weft join --token")
    });
    assert!(
        log_of(&lab, "m3").contains("its manager stays stopped until the node rejoins"),
        "m3 does not run Raft on an expired certificate"
    );
    let err = lab.weft_err("m3", &["join", "--token", &wt, &remote]);
    assert!(err.contains("manager join token"), "{err}");
    let out = lab.weft("m3", &["join", "--token", &mt, &remote]);
    assert!(out.contains("rejoined"), "{out}");
    assert_eq!(cert_of(&lab, "m3").node_id, m3_id);
    assert!(!cert_of(&lab, "m3").expired());
    // Whole again: m3 is a reachable voter, serves the control API from
    // its store, and its writes commit.
    wait_for("m3 back in the cluster", Duration::from_secs(30), || {
        lab.node_ls("m1")
            .iter()
            .any(|r| r.id == m3_id && r.status == "Ready" && !r.manager.is_empty())
            && lab.try_weft("m3", &["node", "ls"]).status.success()
    });
    common::wait_voters(&lab, "m1", &["m3"]);
    lab.weft("m3", &["node", "update", "--label-add", "by=m3", "w1"]);
    wait_for("m3's write on m1", Duration::from_secs(10), || {
        lab.weft("m1", &["node", "inspect", "w1"])
            .contains("\"by\"")
    });
    eprintln!("m3 rejoined as {m3_id} and its writes commit");

    // m2 is demoted; its manager certificate (still valid for a while, as
    // a node that has not renewed yet holds it) is copied first.
    let m2_id = cert_of(&lab, "m2").node_id;
    // Copied right after a renewal, so it is still valid when served:
    // only its node's demotion may be what refuses it.
    let old = cert_of(&lab, "m2").not_after;
    wait_for("m2 renews", Duration::from_secs(30), || {
        cert_of(&lab, "m2").not_after > old
    });
    let stolen = read_cert_files(&lab, "m2");
    let ca = std::fs::read_to_string(lab.data_dir("m1").join("certs/ca.pem")).expect("ca");
    let leader = lab
        .node_ls("m1")
        .into_iter()
        .find(|r| r.manager == "Leader")
        .expect("a leader");
    assert_ne!(leader.id, m2_id, "m2 leads; the test demotes a follower");
    lab.weft("m1", &["node", "demote", "m2"]);
    wait_for("w1 learns the managers", Duration::from_secs(20), || {
        let ids = record_of(&lab, "w1")["manager_node_ids"].clone();
        ids.as_array()
            .is_some_and(|a| a.len() == 2 && !a.iter().any(|v| v == m2_id.as_str()))
    });
    wait_for("m2's manager stopped", Duration::from_secs(30), || {
        lab.weft("m2", &["info"]).contains("Role: worker")
    });
    // w1 is pointed at m2's address (an attacker who can redirect it
    // there), where the stolen certificate is served.
    lab.kill9("w1");
    let mut rec = record_of(&lab, "w1");
    let m2_addr = format!("{}:4377", lab.addr("m2"));
    rec["manager_addrs"] = serde_json::json!([m2_addr]);
    std::fs::write(
        lab.data_dir("w1").join("node.json"),
        serde_json::to_string(&rec).unwrap(),
    )
    .expect("node.json");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = pose_as_manager(lab.host_netns("m2"), m2_addr, ca, stolen, stopped);
    lab.start("w1");
    wait_for(
        "w1 refuses m2 as a manager",
        Duration::from_secs(20),
        || {
            log_of(&lab, "w1").contains(&format!(
            "node {m2_id} presents a manager certificate but is not a manager of the cluster now"
        ))
        },
    );
    wait_for("w1's info says why", Duration::from_secs(10), || {
        lab.weft("w1", &["info"])
            .contains("is not a manager of the cluster now")
    });
    assert!(
        !lab.weft("w1", &["info"]).contains("Cluster: active"),
        "w1 opened a session with the demoted manager"
    );
    let _ = stop.send(());
    server.join().expect("server thread");
    eprintln!("w1 refused demoted m2 ({m2_id}) as its session manager");
}

#[test]
fn a_lone_manager_offline_past_its_certificate_signs_itself_a_new_one() {
    // SAFETY: as above; nextest runs this test in a process of its own.
    unsafe { std::env::set_var("WEFT_TEST_MIN_CERT_EXPIRY_SECS", "10") };
    let mut lab = Lab::new("rejoin-alone", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--cert-expiry", "20s"]);
    lab.join("w1", &wt, "m1");
    wait_for("both nodes ready", Duration::from_secs(30), || {
        let rows = lab.node_ls("m1");
        rows.len() == 2 && rows.iter().all(|r| r.status == "Ready")
    });
    let m1_id = cert_of(&lab, "m1").node_id;
    let w1_id = cert_of(&lab, "w1").node_id;
    let expiry_of = |lab: &Lab| {
        lab.node_ls("m1")
            .into_iter()
            .find(|r| r.id == m1_id)
            .expect("m1 listed")
    };
    let before = expiry_of(&lab).cert_expiry;

    // The whole cluster is off for longer than a certificate lives: there
    // is no other manager to rejoin through.
    lab.kill9("w1");
    lab.kill9("m1");
    wait_expired(&lab, "m1");
    wait_expired(&lab, "w1");
    lab.start("m1");
    wait_for(
        "m1 serves again on a certificate it signed itself",
        Duration::from_secs(30),
        || !cert_of(&lab, "m1").expired() && lab.try_weft("m1", &["node", "ls"]).status.success(),
    );
    assert_eq!(cert_of(&lab, "m1").node_id, m1_id, "the same node ID");
    assert!(
        log_of(&lab, "m1").contains("signed itself a new certificate"),
        "{}",
        log_of(&lab, "m1")
    );
    let me = expiry_of(&lab);
    assert_eq!(me.manager, "Leader");
    assert_ne!(me.cert_expiry, before, "node ls shows the new expiry");

    // The worker, offline as long, rejoins through it with the worker token
    // and keeps its ID.
    lab.start("w1");
    wait_for("w1 says it must rejoin", Duration::from_secs(20), || {
        lab.weft("w1", &["info"]).contains("weft join --token")
    });
    let remote = format!("{}:4377", lab.addr("m1"));
    let out = lab.weft("w1", &["join", "--token", &wt, &remote]);
    assert!(out.contains("rejoined"), "{out}");
    assert_eq!(cert_of(&lab, "w1").node_id, w1_id);
    wait_for("w1 ready again", Duration::from_secs(30), || {
        lab.node_ls("m1")
            .iter()
            .any(|r| r.id == w1_id && r.status == "Ready")
    });
    // And the cluster takes writes.
    lab.weft("m1", &["node", "update", "--label-add", "back=1", "w1"]);
}
