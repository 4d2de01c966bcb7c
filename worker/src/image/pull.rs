//! Pulling an image from a registry (`weft image pull`, and on demand when
//! a container's image is not on this node): docs/plans/14-containerd.md §2.2.
//!
//! ```text
//!   reference ─► GET manifest (≤ max_json, sha256 checked)
//!     index? ─► this platform's entry ─► GET that manifest (digest and size checked)
//!     manifest ─► bounds: ≤ max_layers layers, sizes ≤ the pull cap, sha256 digests only
//!     GET config (bounded, digest checked) ─► diff ids match the layers
//!     ─► the load's own path (import::commit): lease, Content.Write each blob
//!        (layers streamed from the registry through a counting, hashing
//!        reader; blobs already here are not fetched), unpack, record
//! ```
//!
//! Every byte from the registry is checked before containerd commits it:
//! a blob longer than its descriptor says is cut off, one whose sha256
//! differs is refused ([`PullError::DigestMismatch`]), and containerd checks
//! the digest again at commit. The decisions are pure functions
//! ([`parse`], [`plain_http`], [`check_manifest`], [`record_name`]) with unit
//! tests; the fetching is [`fetch`].
//!
//! A pull with a [`Credential`] (`weft login`, a service's
//! `--with-registry-auth`) hands it to oci-client, which uses it as Basic
//! auth, or to get a Bearer token when the registry's `WWW-Authenticate`
//! asks for one (Docker Hub style); without one the pull is anonymous.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, client::ClientConfig, client::ClientProtocol};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use weft_containerd_api::Client;

use super::ImageConfig;
use super::archive::Limits;
use super::content;
use super::credential::Credential;
use super::error::ImageError;
use super::import::{self, LoadedImage};
use super::plan::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, Index, Manifest, OCI_INDEX, OCI_MANIFEST,
    PlannedImage, Platform, index_labels, manifest_labels,
};

/// Media types a manifest request accepts.
const ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// Layer media types containerd 1.6's differ applies.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// How long connecting to a registry (name lookup included) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a registry may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a pull failed. Each names the reference or registry at fault.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Not something a registry can be asked for.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user typed.
        reference: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An `--insecure-registry` value that is not `host[:port]`.
    #[error("--insecure-registry {registry:?}: expected HOST[:PORT] (no scheme, no path)")]
    InvalidRegistry {
        /// What was given.
        registry: String,
    },
    /// The registry does not have it (manifest or repository unknown).
    #[error("{reference}: not found in registry {registry} ({detail})")]
    NotFound {
        /// The normalized reference.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry wants credentials (or refuses the ones it got).
    #[error(
        "{reference}: unauthorized: pull access denied by registry {registry} ({})",
        unauthorized_hint(.with_credentials)
    )]
    Unauthorized {
        /// The normalized reference.
        reference: String,
        /// The registry asked.
        registry: String,
        /// Whether credentials were sent.
        with_credentials: bool,
    },
    /// `weft login`: the registry refused the user name and password.
    #[error("unauthorized: registry {registry} refused the user name and password")]
    LoginRefused {
        /// The registry.
        registry: String,
    },
    /// No answer from the registry (name lookup, connection, TLS, timeout).
    #[error("cannot reach registry {registry}: {detail}{hint}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// What failed.
        detail: String,
        /// How to allow plain HTTP, when that may be the problem.
        hint: &'static str,
    },
    /// A blob's bytes are not what its digest says.
    #[error("{what} from registry {registry} does not match its digest {expected} (got {actual})")]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// Which blob ("layer sha256:…", "manifest").
        what: String,
        /// The digest asked for.
        expected: String,
        /// What the bytes hash to, or how many bytes came.
        actual: String,
    },
    /// The image breaks a bound or is of a kind weft cannot run.
    #[error("{reference}: refused: {reason}")]
    Refused {
        /// The normalized reference.
        reference: String,
        /// Which bound, or what is unsupported.
        reason: String,
    },
    /// The registry answered with an error weft has no better word for.
    #[error("registry {registry} answered: {detail}")]
    Registry {
        /// The registry.
        registry: String,
        /// Its answer.
        detail: String,
    },
}

/// What to do about a refused pull, by whether credentials were sent.
fn unauthorized_hint(with_credentials: &bool) -> &'static str {
    if *with_credentials {
        "the credentials sent were refused, or do not give access to it"
    } else {
        "the image may be private: `weft login`, and `--with-registry-auth` for a service"
    }
}

/// What a pull may do.
#[derive(Clone, Debug)]
pub struct PullSettings {
    /// Registries (`host:port`) spoken to over plain HTTP, besides loopback ones.
    pub insecure: Vec<String>,
    /// Bounds on manifests, configs and layer counts.
    pub limits: Limits,
    /// Cap on the sum of an image's blob sizes.
    pub max_bytes: u64,
}

/// Reads a user's word as a reference a registry can be asked for
/// (`busybox` → `docker.io/library/busybox:latest`). Digests must be
/// sha256; a bare digest or image ID is refused (it names no repository).
pub fn parse(word: &str) -> Result<Reference, PullError> {
    let invalid = |reason: &str| PullError::InvalidReference {
        reference: word.to_owned(),
        reason: reason.to_owned(),
    };
    if word.starts_with("sha256:") {
        return Err(invalid(
            "a digest names no repository: use NAME@sha256:DIGEST",
        ));
    }
    let r = Reference::try_from(word).map_err(|e| invalid(&e.to_string()))?;
    // Distribution's grammar: repositories are lower case.
    if !r
        .repository()
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'))
    {
        return Err(invalid(
            "repository names are lower case letters, digits and . _ - /",
        ));
    }
    if let Some(d) = r.digest()
        && !is_sha256(d)
    {
        return Err(invalid("only sha256 digests are supported"));
    }
    Ok(r)
}

/// Whether `registry` (`host[:port]`) is spoken to over plain HTTP: it is
/// listed, or it is on loopback (as Docker does: 127.0.0.0/8, ::1, localhost).
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|i| i == registry) {
        return true;
    }
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses an `--insecure-registry` value that is not `host[:port]`.
pub fn check_registry(registry: &str) -> Result<(), PullError> {
    let bad = || PullError::InvalidRegistry {
        registry: registry.to_owned(),
    };
    if registry.is_empty() || registry.contains('/') || registry.contains("://") {
        return Err(bad());
    }
    // A registry is the part of a reference before the first `/`.
    match Reference::try_from(format!("{registry}/x").as_str()) {
        Ok(r) if r.registry() == registry => Ok(()),
        _ => Err(bad()),
    }
}

/// The name a pulled image is recorded under: `repo:tag`, or `repo@digest`
/// when pulled by digest (as Docker records it).
pub fn record_name(r: &Reference) -> String {
    match r.digest() {
        Some(d) => format!("{}/{}@{d}", r.registry(), r.repository()),
        None => r.whole(),
    }
}

fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks a manifest before anything it names is fetched: layer count,
/// sha256 digests, supported layer types, sizes within the caps.
pub fn check_manifest(m: &Manifest, limits: &Limits, max_bytes: u64) -> Result<(), String> {
    if m.schema_version != 2 {
        return Err(format!("manifest schema version {}", m.schema_version));
    }
    if m.layers.is_empty() {
        return Err("the image has no layers".into());
    }
    if m.layers.len() > limits.max_layers {
        return Err(format!(
            "the image has {} layers, over the limit of {}",
            m.layers.len(),
            limits.max_layers
        ));
    }
    if !is_sha256(&m.config.digest) {
        return Err(format!("config digest {:?} is not sha256", m.config.digest));
    }
    if m.config.size > limits.max_json {
        return Err(format!(
            "config of {} bytes, over the limit of {}",
            m.config.size, limits.max_json
        ));
    }
    let mut total = m.config.size;
    for l in &m.layers {
        if !is_sha256(&l.digest) {
            return Err(format!("layer digest {:?} is not sha256", l.digest));
        }
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(format!(
                "layer {} has media type {:?}, which weft cannot unpack",
                l.digest, l.media_type
            ));
        }
        total = total.saturating_add(l.size);
    }
    if total > max_bytes {
        return Err(format!(
            "the image is {total} bytes, over the limit of {max_bytes}"
        ));
    }
    Ok(())
}

/// What a manifest response is, by its `mediaType` or, for OCI documents
/// that leave it out, by its shape.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

fn is_index(bytes: &[u8]) -> Result<bool, String> {
    let s: Shape = serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
    Ok(match s.media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => s.manifests.is_some(),
        other => return Err(format!("unsupported manifest media type {other:?}")),
    })
}

/// A registry connection for one reference.
struct Registry {
    client: oci_client::Client,
    reference: Reference,
    registry: String,
    plain_http: bool,
    auth: RegistryAuth,
    with_credentials: bool,
}

impl Registry {
    /// A client for `reference`'s registry: plain HTTP when `insecure`, or
    /// when [`plain_http`] says so for that registry.
    fn new(
        reference: Reference,
        settings: &PullSettings,
        insecure: bool,
        credential: Option<&Credential>,
    ) -> Result<Self, PullError> {
        let plain_http = insecure || plain_http(reference.registry(), &settings.insecure);
        // reqwest is built without a crypto provider: weft's is ring (the
        // binary installs it first thing; this covers tests and libraries).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.registry().to_owned();
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| PullError::Unreachable {
            registry: registry.clone(),
            detail: format!("cannot set up an HTTP client: {e}"),
            hint: "",
        })?;
        Ok(Self {
            client,
            reference,
            registry,
            plain_http,
            auth: credential.map_or(RegistryAuth::Anonymous, |c| {
                RegistryAuth::Basic(c.username().to_owned(), c.password().to_owned())
            }),
            with_credentials: credential.is_some(),
        })
    }

    /// A registry error in weft's words.
    fn error(&self, e: OciDistributionError) -> PullError {
        let reference = self.reference.whole();
        let registry = self.registry.clone();
        match e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .filter(|m| !m.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    PullError::NotFound {
                        reference,
                        registry,
                        detail: if detail.is_empty() {
                            "manifest unknown".into()
                        } else {
                            detail
                        },
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    PullError::Unauthorized {
                        reference,
                        registry,
                        with_credentials: self.with_credentials,
                    }
                } else {
                    PullError::Registry { registry, detail }
                }
            }
            OciDistributionError::ImageManifestNotFoundError(detail) => PullError::NotFound {
                reference,
                registry,
                detail,
            },
            OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound {
                reference,
                registry,
                detail: "HTTP 404".into(),
            },
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => PullError::Unauthorized {
                reference,
                registry,
                with_credentials: self.with_credentials,
            },
            OciDistributionError::ServerError { code, message, .. } => PullError::Registry {
                registry,
                detail: format!(
                    "HTTP {code}: {}",
                    message.chars().take(200).collect::<String>()
                ),
            },
            OciDistributionError::RequestError(e) => {
                let detail = error_chain(&e);
                let tls = ["tls", "certificate", "handshake"]
                    .iter()
                    .any(|w| detail.to_ascii_lowercase().contains(w));
                PullError::Unreachable {
                    registry,
                    detail,
                    hint: if self.plain_http || !tls {
                        ""
                    } else {
                        " (a registry that speaks plain HTTP must be allowed: \
                     `weft daemon --insecure-registry HOST:PORT`, or `weft image pull --insecure`)"
                    },
                }
            }
            OciDistributionError::DigestError(e) => PullError::DigestMismatch {
                registry,
                what: "a manifest".into(),
                expected: reference,
                actual: e.to_string(),
            },
            other => PullError::Registry {
                registry,
                detail: other.to_string(),
            },
        }
    }

    /// A manifest or index, by the reference or by digest: bounded, its
    /// sha256 checked (and its size, when a parent gave one).
    async fn manifest(
        &self,
        at: &Reference,
        expected: Option<&Descriptor>,
        max: u64,
    ) -> Result<(Vec<u8>, String), PullError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(at, &self.auth, ACCEPT)
            .await
            .map_err(|e| self.error(e))?;
        if bytes.len() as u64 > max {
            return Err(PullError::Refused {
                reference: self.reference.whole(),
                reason: format!(
                    "a manifest of {} bytes, over the limit of {max}",
                    bytes.len()
                ),
            });
        }
        let actual = sha256_of(&bytes);
        let wanted = expected.map_or(digest.as_str(), |d| d.digest.as_str());
        if actual != wanted || expected.is_some_and(|d| d.size != bytes.len() as u64) {
            return Err(PullError::DigestMismatch {
                registry: self.registry.clone(),
                what: "manifest".into(),
                expected: wanted.to_owned(),
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }

    /// A blob's bytes as they arrive, bounded and checked against `d`.
    async fn blob(&self, d: &Descriptor, failure: Failure) -> Result<CheckedBlob, PullError> {
        let stream = self
            .client
            .pull_blob_stream(&self.reference, d.digest.as_str())
            .await
            .map_err(|e| self.error(e))?;
        Ok(CheckedBlob {
            stream: stream.stream,
            pending: bytes::Bytes::new(),
            hasher: Sha256::new(),
            seen: 0,
            expected: d.clone(),
            registry: self.registry.clone(),
            failure,
            done: false,
        })
    }

    /// A small blob (the config), read whole.
    async fn small_blob(&self, d: &Descriptor) -> Result<Vec<u8>, PullError> {
        let failure = Failure::default();
        let mut blob = self.blob(d, failure.clone()).await?;
        let mut out = Vec::new();
        let r = tokio::io::AsyncReadExt::read_to_end(&mut blob, &mut out).await;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        r.map_err(|e| PullError::Unreachable {
            registry: self.registry.clone(),
            detail: format!("reading {}: {e}", d.digest),
            hint: "",
        })?;
        Ok(out)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Where a [`CheckedBlob`] leaves the typed reason it stopped, since an
/// `AsyncRead` can only return an `io::Error`.
#[derive(Clone, Default)]
struct Failure(Arc<Mutex<Option<PullError>>>);

impl Failure {
    fn set(&self, e: PullError) -> std::io::Error {
        let msg = e.to_string();
        *self.0.lock().expect("failure slot") = Some(e);
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
    }

    fn take(&self) -> Option<PullError> {
        self.0.lock().expect("failure slot").take()
    }
}

/// A blob from the registry as an `AsyncRead`: stops at the first byte past
/// the descriptor's size, and at the end fails unless the size and sha256
/// match, so containerd never commits what the manifest did not name.
struct CheckedBlob {
    stream: BoxStream<'static, std::io::Result<bytes::Bytes>>,
    pending: bytes::Bytes,
    hasher: Sha256,
    seen: u64,
    expected: Descriptor,
    registry: String,
    failure: Failure,
    done: bool,
}

impl CheckedBlob {
    fn mismatch(&self, actual: String) -> PullError {
        PullError::DigestMismatch {
            registry: self.registry.clone(),
            what: format!("blob {}", self.expected.digest),
            expected: self.expected.digest.clone(),
            actual,
        }
    }
}

impl AsyncRead for CheckedBlob {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    // oci-client checks the digest too, at the end: say
                    // what it found in weft's words.
                    let digest_error = e.get_ref().is_some_and(|i| {
                        i.downcast_ref::<oci_client::errors::DigestError>()
                            .is_some()
                    });
                    if !digest_error {
                        return Poll::Ready(Err(e));
                    }
                    let actual = if self.seen == self.expected.size {
                        format!(
                            "sha256:{}",
                            hex::encode(std::mem::take(&mut self.hasher).finalize())
                        )
                    } else {
                        format!("{} bytes, not {}", self.seen, self.expected.size)
                    };
                    let e = self.mismatch(actual);
                    return Poll::Ready(Err(self.failure.set(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    self.seen += chunk.len() as u64;
                    if self.seen > self.expected.size {
                        let e = self.mismatch(format!(
                            "more than the {} bytes it names",
                            self.expected.size
                        ));
                        return Poll::Ready(Err(self.failure.set(e)));
                    }
                    self.hasher.update(&chunk);
                    self.pending = chunk;
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let actual = format!(
                        "sha256:{}",
                        hex::encode(std::mem::take(&mut self.hasher).finalize())
                    );
                    if self.seen != self.expected.size {
                        let e = self
                            .mismatch(format!("{} bytes, not {}", self.seen, self.expected.size));
                        return Poll::Ready(Err(self.failure.set(e)));
                    }
                    if actual != self.expected.digest {
                        let e = self.mismatch(actual);
                        return Poll::Ready(Err(self.failure.set(e)));
                    }
                }
            }
        }
    }
}

/// What [`fetch`] learned, before any blob is written.
struct Fetched {
    image: PlannedImage,
    /// The index the reference named, with its bytes, if it named one.
    index: Option<(Descriptor, Vec<u8>)>,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
}

/// Asks the registry for the image `reference` names, down to its config
/// (the layers are streamed later, by [`pull`]).
async fn fetch(
    reg: &Registry,
    settings: &PullSettings,
    name: String,
) -> Result<Fetched, PullError> {
    let limits = &settings.limits;
    let refused = |reason: String| PullError::Refused {
        reference: reg.reference.whole(),
        reason,
    };
    let (top, top_digest) = reg.manifest(&reg.reference, None, limits.max_json).await?;
    let top_is_index = is_index(&top).map_err(refused)?;
    let (index, manifest_desc, manifest_bytes) = if top_is_index {
        let parsed: Index =
            serde_json::from_slice(&top).map_err(|e| refused(format!("index: {e}")))?;
        let host = Platform::host();
        let chosen = host.pick(&parsed.manifests).ok_or_else(|| {
            refused(format!(
                "the image has no {}/{} variant",
                host.os, host.architecture
            ))
        })?;
        if !is_sha256(&chosen.digest) || chosen.size > limits.max_json {
            return Err(refused(format!(
                "the index names manifest {:?} of {} bytes",
                chosen.digest, chosen.size
            )));
        }
        let at = Reference::with_digest(
            reg.reference.registry().to_owned(),
            reg.reference.repository().to_owned(),
            chosen.digest.clone(),
        );
        let (bytes, _) = reg.manifest(&at, Some(&chosen), limits.max_json).await?;
        let index_desc = Descriptor {
            media_type: media_type_of(&top, OCI_INDEX),
            digest: top_digest,
            size: top.len() as u64,
            ..Default::default()
        };
        (Some((index_desc, top)), chosen, bytes)
    } else {
        let d = Descriptor {
            media_type: media_type_of(&top, OCI_MANIFEST),
            digest: top_digest,
            size: top.len() as u64,
            ..Default::default()
        };
        (None, d, top)
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| refused(format!("manifest: {e}")))?;
    check_manifest(&manifest, limits, settings.max_bytes).map_err(refused)?;
    let config_bytes = reg.small_blob(&manifest.config).await?;
    let config = ImageConfig::parse(&config_bytes).map_err(|e| refused(format!("config: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(refused(format!(
            "the manifest lists {} layers but the config {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let target = index
        .as_ref()
        .map_or_else(|| manifest_desc.clone(), |(d, _)| d.clone());
    Ok(Fetched {
        image: PlannedImage {
            names: vec![name],
            target,
            manifest: Descriptor {
                platform: None,
                ..manifest_desc
            },
            config_descriptor: manifest.config.clone(),
            config,
            layers: manifest.layers,
        },
        index,
        manifest_bytes,
        config_bytes,
    })
}

fn media_type_of(bytes: &[u8], default: &str) -> String {
    serde_json::from_slice::<Shape>(bytes)
        .ok()
        .map(|s| s.media_type)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Pulls `reference` into containerd through the load's path (lease, blobs
/// children first with GC labels, unpack, records): see the module header.
pub async fn pull(
    client: &Client,
    snapshotter: &str,
    settings: &PullSettings,
    reference: &Reference,
    insecure: bool,
    credential: Option<&Credential>,
) -> Result<LoadedImage, ImageError> {
    let reg = Registry::new(reference.clone(), settings, insecure, credential)?;
    let name = record_name(reference);
    let fetched = fetch(&reg, settings, name).await?;
    let image = fetched.image.clone();
    let loaded = import::commit(
        client,
        snapshotter,
        std::slice::from_ref(&image),
        async |leased| {
            for layer in &image.layers {
                write_layer(leased, &reg, layer).await?;
            }
            let bytes = |b: &Vec<u8>| std::io::Cursor::new(b.clone());
            content::write(
                leased,
                &image.config_descriptor,
                bytes(&fetched.config_bytes),
                &BTreeMap::new(),
            )
            .await?;
            let manifest = Manifest {
                schema_version: 2,
                media_type: String::new(),
                config: image.config_descriptor.clone(),
                layers: image.layers.clone(),
            };
            content::write(
                leased,
                &image.manifest,
                bytes(&fetched.manifest_bytes),
                &manifest_labels(&manifest),
            )
            .await?;
            if let Some((d, b)) = &fetched.index {
                content::write(leased, d, bytes(b), &index_labels(&image.manifest)).await?;
            }
            Ok(())
        },
    )
    .await?;
    Ok(loaded
        .into_iter()
        .next()
        .expect("one image recorded per pull"))
}

/// Streams one layer into containerd, unless it is there already.
async fn write_layer(client: &Client, reg: &Registry, d: &Descriptor) -> Result<(), ImageError> {
    let none = BTreeMap::new();
    if content::info(client, &d.digest).await.is_ok() {
        // Present: a write that stops at its first message adds it to the lease.
        return content::write(client, d, tokio::io::empty(), &none).await;
    }
    let failure = Failure::default();
    let blob = reg.blob(d, failure.clone()).await?;
    let r = content::write(client, d, blob, &none).await;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    r
}

/// The digest `reference`'s tag stands for now (a HEAD, or a GET, of the
/// manifest): what a service pins so that every node runs the same image.
pub async fn resolve(
    settings: &PullSettings,
    reference: &Reference,
    insecure: bool,
    credential: Option<&Credential>,
) -> Result<String, PullError> {
    let reg = Registry::new(reference.clone(), settings, insecure, credential)?;
    let digest = reg
        .client
        .fetch_manifest_digest(reference, &reg.auth)
        .await
        .map_err(|e| reg.error(e))?;
    if !is_sha256(&digest) {
        return Err(PullError::Registry {
            registry: reg.registry,
            detail: format!("the manifest's digest {digest:?} is not sha256"),
        });
    }
    Ok(digest)
}

#[cfg(test)]
mod tests;
