//! The pull's decisions (pure) and its registry side against a small fake
//! registry on loopback (canned answers over HTTP/1.1): bounds, digest
//! checks and the registry's errors in weft's words. The real registry
//! (Distribution's `docker-registry`) is exercised end to end in
//! tests/images.rs.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn references_normalize_and_bad_ones_are_refused() {
    let r = parse("busybox").unwrap();
    assert_eq!(r.whole(), "docker.io/library/busybox:latest");
    assert_eq!(record_name(&r), "docker.io/library/busybox:latest");
    let r = parse(&format!("127.0.0.1:5000/a/b:1@{D}")).unwrap();
    assert_eq!(record_name(&r), format!("127.0.0.1:5000/a/b@{D}"));
    for bad in [
        "",
        "UPPER/case",
        "a b",
        "busybox@sha256:abc",
        D,
        "busybox@md5:0123456789abcdef0123456789abcdef",
        "http://x/y",
    ] {
        let e = parse(bad).unwrap_err();
        assert!(
            matches!(e, PullError::InvalidReference { .. }),
            "{bad:?}: {e:?}"
        );
    }
}

#[test]
fn loopback_and_listed_registries_speak_plain_http() {
    let listed = vec!["198.18.0.1:5000".to_owned()];
    assert!(plain_http("127.0.0.1:5000", &[]));
    assert!(plain_http("127.9.9.9", &[]));
    assert!(plain_http("[::1]:5000", &[]));
    assert!(plain_http("localhost:5000", &[]));
    assert!(plain_http("198.18.0.1:5000", &listed));
    assert!(!plain_http("198.18.0.1:5001", &listed));
    assert!(!plain_http("docker.io", &listed));
    assert!(!plain_http("128.0.0.1:5000", &[]));
    check_registry("198.18.0.1:5000").unwrap();
    check_registry("registry.example.com").unwrap();
    for bad in ["", "http://x:5000", "x:5000/path", "Bad Host"] {
        let e = check_registry(bad).unwrap_err();
        assert!(e.to_string().contains("HOST[:PORT]"), "{bad:?}: {e}");
    }
}

fn layer(size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: D.into(),
        size,
        ..Default::default()
    }
}

fn manifest_of(layers: Vec<Descriptor>) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: D.into(),
            size: 100,
            ..Default::default()
        },
        layers,
    }
}

#[test]
fn manifests_are_bounded_before_anything_is_fetched() {
    let limits = Limits::default();
    check_manifest(&manifest_of(vec![layer(10)]), &limits, 1 << 20).unwrap();
    let too_many = manifest_of((0..129).map(|_| layer(1)).collect());
    assert!(
        check_manifest(&too_many, &limits, 1 << 20)
            .unwrap_err()
            .contains("129 layers")
    );
    let too_big = manifest_of(vec![layer(u64::MAX), layer(u64::MAX)]);
    assert!(
        check_manifest(&too_big, &limits, 1 << 20)
            .unwrap_err()
            .contains("over the limit")
    );
    let mut odd = manifest_of(vec![layer(1)]);
    odd.layers[0].media_type = "application/vnd.wasm.content.layer.v1+wasm".into();
    assert!(
        check_manifest(&odd, &limits, 1 << 20)
            .unwrap_err()
            .contains("cannot unpack")
    );
    let mut md5 = manifest_of(vec![layer(1)]);
    md5.layers[0].digest = "md5:00".into();
    assert!(check_manifest(&md5, &limits, 1 << 20).is_err());
    assert!(check_manifest(&manifest_of(vec![]), &limits, 1 << 20).is_err());
}

#[tokio::test]
async fn a_blob_longer_or_other_than_its_digest_is_cut_off() {
    async fn read(body: &'static [u8], expected: Descriptor) -> (Vec<u8>, Option<PullError>) {
        let failure = Failure::default();
        let chunks = body
            .chunks(3)
            .map(|c| Ok(bytes::Bytes::from_static(c)))
            .collect::<Vec<_>>();
        let mut blob = CheckedBlob {
            stream: futures::stream::iter(chunks).boxed(),
            pending: bytes::Bytes::new(),
            hasher: Sha256::new(),
            seen: 0,
            expected,
            registry: "r".into(),
            failure: failure.clone(),
            done: false,
        };
        let mut out = Vec::new();
        let r = blob.read_to_end(&mut out).await;
        assert_eq!(r.is_err(), failure.0.lock().unwrap().is_some());
        (out, failure.take())
    }
    let body: &'static [u8] = b"hello, registry";
    let good = Descriptor {
        digest: sha256_of(body),
        size: body.len() as u64,
        ..Default::default()
    };
    let (out, e) = read(body, good.clone()).await;
    assert_eq!(out, body);
    assert!(e.is_none());
    // Longer than named: stopped at the first chunk past the size.
    let (out, e) = read(
        body,
        Descriptor {
            size: 4,
            ..good.clone()
        },
    )
    .await;
    assert!(out.len() <= 4, "{out:?}");
    assert!(matches!(e, Some(PullError::DigestMismatch { .. })), "{e:?}");
    // Same size, other bytes.
    let (_, e) = read(b"hello, REGISTRY", good.clone()).await;
    let e = e.expect("refused");
    assert!(
        e.to_string().contains(&sha256_of(b"hello, REGISTRY")),
        "{e}"
    );
    // Shorter than named.
    let (_, e) = read(b"hello", good).await;
    assert!(e.unwrap().to_string().contains("5 bytes"));
}

/// A registry that answers GETs (and HEADs) of paths from a table.
struct FakeRegistry {
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

type Answer = (u16, String, Vec<u8>);

impl FakeRegistry {
    async fn start(routes: BTreeMap<String, Answer>) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes = Arc::new(routes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let mut first = text.lines().next().unwrap_or_default().split(' ');
                    let method = first.next().unwrap_or_default().to_owned();
                    let path = first.next().unwrap_or_default().to_owned();
                    let (code, ctype, body) = routes.get(&path).cloned().unwrap_or((
                        404,
                        "application/json".into(),
                        br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#.to_vec(),
                    ));
                    let mut head = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                    if ctype.contains("manifest") || ctype.contains("index") {
                        head.push_str(&format!("docker-content-digest: {}\r\n", sha256_of(&body)));
                    }
                    head.push_str("\r\n");
                    let _ = conn.write_all(head.as_bytes()).await;
                    if method != "HEAD" {
                        let _ = conn.write_all(&body).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        FakeRegistry { addr, task }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// An image: config and one layer, its manifest, an index with an arm64
/// and an amd64 entry. `config_served` is what the registry sends for the
/// config (a tampered registry sends other bytes).
fn image(config_served: Option<Vec<u8>>) -> (BTreeMap<String, Answer>, String) {
    let layer = b"layer".to_vec();
    let config = json(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_of(&layer)]},
    }));
    let manifest = json(serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_of(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256_of(&layer), "size": layer.len()}],
    }));
    let index = json(serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": D, "size": 10,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256_of(&manifest), "size": manifest.len(),
             "platform": {"os": "linux", "architecture": Platform::host().architecture}},
        ],
    }));
    let mut routes = BTreeMap::new();
    let repo = "/v2/t/img";
    routes.insert(
        format!("{repo}/manifests/latest"),
        (200, OCI_INDEX.to_owned(), index.clone()),
    );
    routes.insert(
        format!("{repo}/manifests/single"),
        (200, OCI_MANIFEST.to_owned(), manifest.clone()),
    );
    routes.insert(
        format!("{repo}/manifests/{}", sha256_of(&manifest)),
        (200, OCI_MANIFEST.to_owned(), manifest.clone()),
    );
    routes.insert(
        format!("{repo}/blobs/{}", sha256_of(&config)),
        (
            200,
            "application/octet-stream".into(),
            config_served.unwrap_or(config),
        ),
    );
    routes.insert(
        "/v2/t/private/manifests/latest".into(),
        (
            401,
            "application/json".into(),
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        ),
    );
    (routes, sha256_of(&index))
}

async fn fetch_from(addr: &str, path: &str, limits: Limits) -> Result<Fetched, PullError> {
    let r = parse(&format!("{addr}/{path}")).unwrap();
    let settings = PullSettings {
        insecure: Vec::new(),
        limits,
        max_bytes: 1 << 20,
    };
    let reg = Registry::new(r.clone(), &settings, true, None).unwrap();
    fetch(&reg, &settings, record_name(&r)).await
}

#[tokio::test]
async fn an_index_is_narrowed_to_this_platform() {
    let (routes, index_digest) = image(None);
    let reg = FakeRegistry::start(routes).await;
    let f = fetch_from(&reg.addr, "t/img:latest", Limits::default())
        .await
        .unwrap();
    assert_eq!(f.image.target.digest, index_digest);
    assert_eq!(f.image.target.media_type, OCI_INDEX);
    assert_ne!(f.image.manifest.digest, D, "not the arm64 entry");
    assert_eq!(f.image.layers.len(), 1);
    assert_eq!(f.image.names, [format!("{}/t/img:latest", reg.addr)]);
    // A single manifest is its own target.
    let f = fetch_from(&reg.addr, "t/img:single", Limits::default())
        .await
        .unwrap();
    assert!(f.index.is_none());
    assert_eq!(f.image.target.digest, f.image.manifest.digest);
    // The tag resolves to the index's digest.
    let settings = PullSettings {
        insecure: Vec::new(),
        limits: Limits::default(),
        max_bytes: 1 << 20,
    };
    let r = parse(&format!("{}/t/img:latest", reg.addr)).unwrap();
    assert_eq!(
        resolve(&settings, &r, false, None).await.unwrap(),
        index_digest
    );
}

#[tokio::test]
async fn registry_answers_become_typed_errors() {
    let (routes, _) = image(Some(b"{\"tampered\": true}".to_vec()));
    let reg = FakeRegistry::start(routes).await;
    // A config whose bytes are not its digest.
    let e = fetch_from(&reg.addr, "t/img:single", Limits::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e:?}");
    // A manifest over the bound.
    let small = Limits {
        max_json: 64,
        ..Limits::default()
    };
    let e = fetch_from(&reg.addr, "t/img:single", small)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, PullError::Refused { reason, .. } if reason.contains("over the limit of 64")),
        "{e:?}"
    );
    // Unknown repository or tag.
    let e = fetch_from(&reg.addr, "t/nope:latest", Limits::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, PullError::NotFound { detail, .. } if detail.contains("not known")),
        "{e:?}"
    );
    // Credentials wanted.
    let e = fetch_from(&reg.addr, "t/private:latest", Limits::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = fetch_from(&closed, "t/img:latest", Limits::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&closed), "{e}");
}
