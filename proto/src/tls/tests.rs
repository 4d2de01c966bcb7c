//! End-to-end tests of the transport: a real tonic server on 127.0.0.1 with
//! the rustls config and accept loop from `server`, real clients from
//! `client`, and the unix socket from `local`.

use std::net::SocketAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};

use super::*;
use crate::identity::{NodeKey, Role, ca_fingerprint};
use crate::token::JoinToken;
use crate::v1::join_client::JoinClient;
use crate::v1::join_server::{Join, JoinServer};
use crate::v1::{GetCaCertRequest, GetCaCertResponse, JoinRequest, JoinResponse, NodeRole};

/// A stand-in for the cluster CA (the real one is in weft-manager, which
/// depends on this crate): same subject layout, SANs chosen by the test.
pub(super) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub(super) pem: String,
}

impl TestCa {
    pub(super) fn new(cluster: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weft-ca-{cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// (cert_pem, key_pem) for `node` with the given role, cluster and SANs.
    fn issue(&self, node: &str, role: Role, cluster: &str, sans: &[&str]) -> (String, String) {
        self.issue_with(node, role, cluster, sans, |_| {})
    }

    /// As [`TestCa::worker`] or `manager` (by `role`), valid for an hour
    /// that ended an hour ago.
    pub(super) fn issue_expired(&self, node: &str, role: Role, cluster: &str) -> (String, String) {
        let own = format!("{node}.nodes.weft");
        let mut sans = vec![own.as_str()];
        if role == Role::Manager {
            sans.push("manager.weft");
        }
        self.issue_with(node, role, cluster, &sans, |p| {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(2);
            p.not_after = now - time::Duration::hours(1);
        })
    }

    fn issue_with(
        &self,
        node: &str,
        role: Role,
        cluster: &str,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster);
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::DnsName((*s).try_into().unwrap()))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        adjust(&mut params);
        let cert = params.signed_by(key.key_pair(), &self.issuer).unwrap();
        (cert.pem(), key.to_pem())
    }

    pub(super) fn manager(&self, node: &str, cluster: &str) -> (String, String) {
        let own = format!("{node}.nodes.weft");
        self.issue(node, Role::Manager, cluster, &[&own, "manager.weft"])
    }

    pub(super) fn worker(&self, node: &str, cluster: &str) -> (String, String) {
        let own = format!("{node}.nodes.weft");
        self.issue(node, Role::Worker, cluster, &[&own])
    }
}

pub(super) const CLUSTER: &str = "c1";

/// Join service whose `join` runs the authorization helpers:
/// hostname `manager` → `require_manager`, `is-local` → reports
/// `is_local`, anything else → `require_node(hostname)`.
struct TestJoin {
    ca_pem: String,
}

#[tonic::async_trait]
impl Join for TestJoin {
    async fn get_ca_cert(
        &self,
        _req: Request<GetCaCertRequest>,
    ) -> Result<Response<GetCaCertResponse>, Status> {
        Ok(Response::new(GetCaCertResponse {
            ca_pem: self.ca_pem.clone(),
            wg_port: 0,
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let claimed = req.get_ref().hostname.clone();
        if claimed == "is-local" {
            return Ok(Response::new(JoinResponse {
                node_id: is_local(&req).to_string(),
                ..Default::default()
            }));
        }
        let id = if claimed == "manager" {
            require_manager(&req, CLUSTER)?
        } else {
            require_node(&req, CLUSTER, &claimed)?
        };
        // peer_identity agrees with what the require_* helpers saw.
        assert_eq!(peer_identity(&req).as_ref(), Some(&id));
        Ok(Response::new(JoinResponse {
            node_id: id.node_id,
            role: NodeRole::from(id.role) as i32,
            cluster_id: id.cluster_id,
            ..Default::default()
        }))
    }
}

struct TestServer {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start_server(ca: &TestCa, cert: &ReloadableCert) -> TestServer {
    start_server_revoking(ca, cert, std::sync::Arc::new(|_| false)).await
}

async fn start_server_revoking(
    ca: &TestCa,
    cert: &ReloadableCert,
    is_revoked: IsRevoked,
) -> TestServer {
    install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tls_incoming(listener, server_config(&ca.pem, cert, is_revoked).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = JoinServer::new(TestJoin {
        ca_pem: ca.pem.clone(),
    });
    tokio::spawn(
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    TestServer {
        addr: addr.to_string(),
        stop: Some(stop),
    }
}

fn join_req(hostname: &str) -> JoinRequest {
    JoinRequest {
        hostname: hostname.to_owned(),
        ..Default::default()
    }
}

async fn call_join(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    hostname: &str,
) -> Result<JoinResponse, Status> {
    let ch = channel_to_manager(addr, ca_pem, identity)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    JoinClient::new(ch)
        .join(join_req(hostname))
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn revoked_nodes_are_refused_at_the_handshake() {
    let ca = TestCa::new(CLUSTER);
    let (scert, skey) = ca.manager("m0", CLUSTER);
    let revoked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let list = revoked.clone();
    let server = start_server_revoking(
        &ca,
        &ReloadableCert::from_pem(&scert, &skey).unwrap(),
        std::sync::Arc::new(move |id| list.lock().unwrap().contains(&id.node_id)),
    )
    .await;
    let addr = server.addr.as_str();
    let (mc, mk) = ca.manager("m1", CLUSTER);
    let (wc, wk) = ca.worker("w1", CLUSTER);
    call_join(addr, &ca.pem, Some((&mc, &mk)), "manager")
        .await
        .expect("m1 is not revoked yet");

    // Revoked from now on: every new connection with m1's certificate fails
    // in the handshake, before any request is read; others are unaffected.
    revoked.lock().unwrap().push("m1".into());
    let err = call_join(addr, &ca.pem, Some((&mc, &mk)), "manager")
        .await
        .expect_err("a revoked certificate must not get through");
    assert_ne!(err.code(), Code::Ok);
    call_join(addr, &ca.pem, Some((&wc, &wk)), "w1")
        .await
        .expect("w1 is not revoked");
    // Callers without a certificate (joining nodes) still reach Join.
    let none = call_join(addr, &ca.pem, None, "manager").await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn nodes_refuse_a_removed_or_demoted_managers_certificate() {
    let ca = TestCa::new(CLUSTER);
    // m2's manager certificate, serving as if m2 still were a manager.
    let (scert, skey) = ca.manager("m2", CLUSTER);
    let server = start_server(&ca, &ReloadableCert::from_pem(&scert, &skey).unwrap()).await;
    let (wc, wk) = ca.worker("w1", CLUSTER);
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let call = |trust: ManagerTrust| {
        let (addr, ca_pem, wc, wk) = (server.addr.clone(), ca.pem.clone(), wc.clone(), wk.clone());
        async move {
            let ch = channel_to_manager_checked(&addr, &ca_pem, (&wc, &wk), trust).await?;
            JoinClient::new(ch)
                .join(join_req("w1"))
                .await
                .map_err(|st| TlsError::Rpc {
                    addr,
                    rpc: "Join",
                    status: Box::new(st),
                })
        }
    };
    // A manager now: the session opens. Managers not known yet (first
    // join, an old node.json): the chain and the SAN decide.
    call(ManagerTrust::new(ids(&["m1", "m2"]), ids(&["m9"])))
        .await
        .expect("m2 is a manager: the session opens");
    call(ManagerTrust::default())
        .await
        .expect("no manager list yet: the chain decides");
    // Removed: refused, whatever the manager list says.
    let err = call(ManagerTrust::new(ids(&["m2"]), ids(&["m2"])))
        .await
        .expect_err("a removed manager must be refused");
    assert!(chain(&err).contains("Revoked"), "{}", chain(&err));
    let err = call(ManagerTrust::new(vec![], ids(&["m2"])))
        .await
        .expect_err("a removed manager must be refused");
    assert!(chain(&err).contains("Revoked"), "{}", chain(&err));
    // Demoted (not a manager now, not removed): refused too.
    let err = call(ManagerTrust::new(ids(&["m1", "m3"]), vec![]))
        .await
        .expect_err("a demoted manager must be refused");
    assert!(
        chain(&err).contains("is not a manager of the cluster now"),
        "{}",
        chain(&err)
    );
}

#[tokio::test]
async fn mtls_roles_are_enforced() {
    let ca = TestCa::new(CLUSTER);
    let (scert, skey) = ca.manager("m0", CLUSTER);
    let server = start_server(&ca, &ReloadableCert::from_pem(&scert, &skey).unwrap()).await;
    let addr = server.addr.as_str();

    // A manager certificate passes require_manager; peer_certs() is populated.
    let (mc, mk) = ca.manager("m1", CLUSTER);
    let resp = call_join(addr, &ca.pem, Some((&mc, &mk)), "manager")
        .await
        .unwrap();
    assert_eq!(resp.node_id, "m1");
    assert_eq!(resp.cluster_id, CLUSTER);
    assert_eq!(resp.role, NodeRole::Manager as i32);

    // A worker certificate: PERMISSION_DENIED for manager-only calls...
    let (wc, wk) = ca.worker("w1", CLUSTER);
    let st = call_join(addr, &ca.pem, Some((&wc, &wk)), "manager")
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(
        st.message()
            .contains("this call needs a manager certificate; node w1 is a worker"),
        "{}",
        st.message()
    );
    // ...may speak for itself...
    let resp = call_join(addr, &ca.pem, Some((&wc, &wk)), "w1")
        .await
        .unwrap();
    assert_eq!(resp.node_id, "w1");
    assert_eq!(resp.role, NodeRole::Worker as i32);
    // ...but not for another node.
    let st = call_join(addr, &ca.pem, Some((&wc, &wk)), "w2")
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("only for itself"), "{}", st.message());

    // TCP callers are not local.
    let resp = call_join(addr, &ca.pem, Some((&mc, &mk)), "is-local")
        .await
        .unwrap();
    assert_eq!(resp.node_id, "false");

    // No client certificate: the TLS layer lets it in (Join must work), the
    // handler says UNAUTHENTICATED.
    let st = call_join(addr, &ca.pem, None, "manager").await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    let ch = channel_to_manager(addr, &ca.pem, None).await.unwrap();
    let got = JoinClient::new(ch)
        .get_ca_cert(GetCaCertRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ca_pem, ca.pem);

    // Same CA, but a certificate naming another cluster.
    let (oc, ok) = ca.manager("m9", "other");
    let st = call_join(addr, &ca.pem, Some((&oc, &ok)), "manager")
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("cluster other"), "{}", st.message());

    // A certificate from another CA fails the handshake, so the RPC fails
    // (with TLS 1.3 the client may only learn of it at the first RPC).
    let rogue = TestCa::new(CLUSTER);
    let (rc, rk) = rogue.manager("m1", CLUSTER);
    let st = call_join(addr, &ca.pem, Some((&rc, &rk)), "manager")
        .await
        .unwrap_err();
    assert!(
        !matches!(
            st.code(),
            Code::PermissionDenied | Code::Unauthenticated | Code::Ok
        ),
        "expected a transport failure, got {st:?}"
    );
}

#[tokio::test]
async fn client_requires_manager_san_and_sees_hot_swapped_cert() {
    let ca = TestCa::new(CLUSTER);
    // The server starts with a worker certificate: right CA, no manager.weft.
    let (wc, wk) = ca.worker("w0", CLUSTER);
    let cert = ReloadableCert::from_pem(&wc, &wk).unwrap();
    let server = start_server(&ca, &cert).await;
    let addr = server.addr.as_str();

    let err = channel_to_manager(addr, &ca.pem, None).await.unwrap_err();
    assert!(matches!(err, TlsError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(addr), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the reason should be in the message: {err}"
    );

    // Swap in a manager certificate without restarting the server.
    let (mc, mk) = ca.manager("m0", CLUSTER);
    cert.replace(&mc, &mk).unwrap();
    assert_eq!(
        cert.current_leaf().as_ref(),
        crate::identity::certs_from_pem(&mc, "t").unwrap()[0].as_ref()
    );
    let ch = channel_to_manager(addr, &ca.pem, None).await.unwrap();
    JoinClient::new(ch)
        .get_ca_cert(GetCaCertRequest {})
        .await
        .unwrap();

    // A mismatched cert/key pair is refused and the old certificate stays.
    let (_, other_key) = ca.manager("m5", CLUSTER);
    assert!(cert.replace(&mc, &other_key).is_err());
    channel_to_manager(addr, &ca.pem, None).await.unwrap();
}

#[tokio::test]
async fn stalled_client_does_not_block_accept() {
    let ca = TestCa::new(CLUSTER);
    let (scert, skey) = ca.manager("m0", CLUSTER);
    let server = start_server(&ca, &ReloadableCert::from_pem(&scert, &skey).unwrap()).await;
    // Connections that never start a handshake, or send garbage.
    let _silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let ch = channel_to_manager(&server.addr, &ca.pem, None)
        .await
        .unwrap();
    JoinClient::new(ch)
        .get_ca_cert(GetCaCertRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn fetch_ca_then_check_fingerprint() {
    let ca = TestCa::new(CLUSTER);
    // Even a server whose certificate a verified client would refuse hands
    // out the CA: the fingerprint check is what establishes trust.
    let (wc, wk) = ca.worker("w0", CLUSTER);
    let server = start_server(&ca, &ReloadableCert::from_pem(&wc, &wk).unwrap()).await;
    let addr = server.addr.as_str();

    let fetched = fetch_ca_insecure(addr).await.unwrap();
    assert_eq!(fetched, ca.pem);

    let good = JoinToken::generate(ca_fingerprint(&ca.pem).unwrap());
    verify_ca_against_token(addr, &fetched, &good).unwrap();
    assert_eq!(fetch_trusted_ca(addr, &good).await.unwrap(), ca.pem);

    let wrong = JoinToken::generate(ca_fingerprint(&TestCa::new("x").pem).unwrap());
    let err = fetch_trusted_ca(addr, &wrong).await.unwrap_err();
    assert!(matches!(err, TlsError::CaMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(addr) && msg.contains("the token was not sent"),
        "{msg}"
    );
}

#[tokio::test]
async fn unreachable_manager_fails_fast_with_address() {
    install_crypto_provider();
    let ca = TestCa::new(CLUSTER);
    // Bind then drop: a port on which nothing listens.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let started = std::time::Instant::now();
    let err = channel_to_manager(&addr, &ca.pem, None).await.unwrap_err();
    assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(3));
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(matches!(
        channel_to_manager("not an address", &ca.pem, None).await,
        Err(TlsError::BadAddress { .. })
    ));
    // A lazy channel does not connect until used.
    channel_to_manager_lazy(&addr, &ca.pem, None).unwrap();
}

#[tokio::test]
async fn unix_socket_round_trip() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/weft.sock");

    // Nothing there yet: a distinguishable "no daemon" error.
    assert!(matches!(
        connect_unix(&path).await,
        Err(TlsError::NoDaemon { .. })
    ));

    let (stop, stopped) = oneshot::channel::<()>();
    let router = Server::builder().add_service(JoinServer::new(TestJoin {
        ca_pem: "local".into(),
    }));
    let serve_path = path.clone();
    let served = tokio::spawn(async move {
        serve_unix(
            &serve_path,
            router,
            async {
                let _ = stopped.await;
            },
            || {},
        )
        .await
    });

    // Wait (bounded) until the daemon answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ch = loop {
        match connect_unix(&path).await {
            Ok(ch) => break ch,
            Err(TlsError::NoDaemon { .. }) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut client = JoinClient::new(ch);
    let got = client.get_ca_cert(GetCaCertRequest {}).await.unwrap();
    assert_eq!(got.into_inner().ca_pem, "local");
    let local = client.join(join_req("is-local")).await.unwrap();
    assert_eq!(local.into_inner().node_id, "true");
    // Unix callers have no certificate.
    let st = client.join(join_req("manager")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);

    // A second daemon must not take over the socket.
    assert!(matches!(
        bind_unix(&path),
        Err(TlsError::SocketInUse { .. })
    ));

    drop(client);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    assert!(!path.exists(), "socket removed on shutdown");

    // A stale socket (daemon crashed) reads as "no daemon" and is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(matches!(
        connect_unix(&path).await,
        Err(TlsError::NoDaemon { .. })
    ));
    drop(bind_unix(&path).unwrap());

    // Not a socket: left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(bind_unix(&file), Err(TlsError::NotASocket { .. })));
    assert!(file.exists());
}

#[tokio::test]
async fn bad_client_identity_is_reported_before_connecting() {
    let ca = TestCa::new(CLUSTER);
    let (c, _) = ca.worker("w1", CLUSTER);
    let (_, k) = ca.worker("w2", CLUSTER);
    let err = channel_to_manager("127.0.0.1:1", &ca.pem, Some((&c, &k)))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");
    let err = channel_to_manager("127.0.0.1:1", "not a pem", None)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Identity(_)), "{err:?}");
}
