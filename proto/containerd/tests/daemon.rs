//! The client against a real, private containerd (see `common/containerd.rs`).
//! What the client reports is checked against `ctr`, not against itself.

mod common;

use common::containerd::PrivateContainerd;
use weft_containerd_api::containerd::services::leases::v1::{
    CreateRequest, leases_client::LeasesClient,
};
use weft_containerd_api::{Client, Error};

#[tokio::test]
async fn connects_checks_the_version_and_creates_the_namespace() {
    let daemon = PrivateContainerd::start("api");
    let ns = format!("weft-test-{}", std::process::id());
    let client = Client::connect(daemon.socket())
        .await
        .expect("connect")
        .with_namespace(&ns)
        .expect("namespace");

    let version = client.version().await.expect("version");
    eprintln!("containerd {version}");
    assert!(version.at_least(1, 6), "{version}");
    version.clone().ensure_supported().expect("supported");
    let ctr_version = daemon.ctr_ok("default", &["version"]);
    let server = ctr_version.split("Server:").nth(1).expect("ctr version");
    assert!(
        server.contains(&format!("Version:  {}", version.version))
            && server.contains(&format!("Revision: {}", version.revision)),
        "ctr says:\n{ctr_version}\nthe client says {version}"
    );

    assert!(!client.namespaces().await.expect("list").contains(&ns));
    client.ensure_namespace().await.expect("create");
    client
        .ensure_namespace()
        .await
        .expect("create again is success");
    let names = client.namespaces().await.expect("list");
    assert!(names.contains(&ns), "{names:?}");
    let ctr_names = daemon.ctr_ok("default", &["namespaces", "ls", "-q"]);
    assert!(
        ctr_names.lines().any(|l| l == ns),
        "ctr lists:\n{ctr_names}"
    );

    // The namespace header reaches containerd: a lease made through the
    // client's channel is in our namespace, and only there.
    LeasesClient::new(client.channel())
        .create(CreateRequest {
            id: "probe".into(),
            labels: Default::default(),
        })
        .await
        .expect("lease");
    let ours = daemon.ctr_ok(&ns, &["leases", "ls", "-q"]);
    assert_eq!(ours.lines().collect::<Vec<_>>(), ["probe"]);
    let default = daemon.ctr_ok("default", &["leases", "ls", "-q"]);
    assert!(default.trim().is_empty(), "default namespace has {default}");
}

#[tokio::test]
async fn a_daemon_that_stops_is_reported_with_its_socket() {
    let mut daemon = PrivateContainerd::start("stop");
    let client = Client::connect(daemon.socket()).await.expect("connect");
    client.version().await.expect("version");
    daemon.stop().expect("stop");

    let err = client.version().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { path, call: "Version.Version", .. } if path == daemon.socket()),
        "{err:?}"
    );
    let err = Client::connect(daemon.socket()).await.unwrap_err();
    assert!(matches!(&err, Error::NoDaemon { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("containerd is not running")
            && text.contains(&*daemon.socket().to_string_lossy()),
        "{text}"
    );
}
