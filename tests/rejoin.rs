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
        .map(|r| (r.id, r.hostname, r.cert_expiry))
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
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.77.0.0/24",
            "appnet",
        ],
    );
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
}
