//! The node's images in containerd: the one object the daemon (image
//! commands) and the container runtime ([`ImageStore::get`]) use.
//!
//! The connection is made on first use, not at daemon start: a node
//! without containerd still runs (tasks use the process runtime until a
//! later stage), and image commands say that containerd is not running and
//! how to start it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;
use weft_containerd_api::Client;
use weft_containerd_api::containerd::services::containers::v1::{
    ListContainersRequest, containers_client::ContainersClient,
};
use weft_containerd_api::containerd::services::images::v1::{
    DeleteImageRequest, GetImageRequest, Image, ListImagesRequest, images_client::ImagesClient,
};
use weft_containerd_api::containerd::services::snapshots::v1::{
    UsageRequest, snapshots_client::SnapshotsClient,
};

use super::archive::Limits;
use super::cache::{Cache, Parsed, Unpacked};
use super::content::{self, Lease};
use super::error::ImageError;
use super::import::{self, LoadedImage, SpoolFile};
use super::plan::{DOCKER_MANIFEST_LIST, Index, Manifest, OCI_INDEX, Platform};
use super::pull::{self, PullSettings};
use super::reference::{self, Query};
use super::{ImageConfig, LocalImage, unpack};

/// The label a container carries naming the digest of its image; an image
/// with such a container is not removed.
pub const CONTAINER_IMAGE_LABEL: &str = "weft.image";

/// Where the store finds containerd and what it may do.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace weft's objects live in.
    pub namespace: String,
    /// The snapshotter layers are unpacked with.
    pub snapshotter: String,
    /// Where uploads are spooled (`<exec-root>/images`).
    pub spool_dir: PathBuf,
    /// Cap on an upload and on its decompressed size.
    pub max_archive: u64,
    /// Bounds on the archive's contents, and on a pulled image's manifests,
    /// config and layer count.
    pub limits: Limits,
    /// Registries (`host:port`) pulled from over plain HTTP, besides
    /// loopback ones (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// Cap on the sum of a pulled image's blob sizes.
    pub max_pull: u64,
}

impl StoreConfig {
    /// Refuses a namespace or snapshotter name containerd would refuse, and
    /// an insecure registry that is not `host[:port]`.
    pub fn validate(&self) -> Result<(), ImageError> {
        weft_containerd_api::validate_identifier("namespace", &self.namespace)?;
        weft_containerd_api::validate_identifier("snapshotter", &self.snapshotter)?;
        for r in &self.insecure_registries {
            pull::check_registry(r)?;
        }
        Ok(())
    }

    fn pull_settings(&self) -> PullSettings {
        PullSettings {
            insecure: self.insecure_registries.clone(),
            limits: self.limits,
            max_bytes: self.max_pull,
        }
    }

    /// The defaults: `/run/containerd/containerd.sock`, namespace `weft`,
    /// overlayfs, 8 GiB uploads spooled under `<exec_root>/images`, 8 GiB
    /// pulls, plain HTTP to loopback registries only.
    pub fn new(exec_root: &std::path::Path) -> Self {
        Self {
            socket: "/run/containerd/containerd.sock".into(),
            namespace: weft_containerd_api::DEFAULT_NAMESPACE.into(),
            snapshotter: "overlayfs".into(),
            spool_dir: exec_root.join("images"),
            max_archive: import::DEFAULT_MAX_ARCHIVE,
            limits: Limits::default(),
            insecure_registries: Vec::new(),
            max_pull: import::DEFAULT_MAX_ARCHIVE,
        }
    }
}

/// One row of `image ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// The record's name (full, or the digest when unnamed).
    pub name: String,
    /// Familiar repository, or `<none>`.
    pub repository: String,
    /// Tag, or `<none>`.
    pub tag: String,
    /// Image ID: the config digest.
    pub id: String,
    /// The record's target digest.
    pub digest: String,
    /// RFC 3339 creation time from the config, if any.
    pub created: Option<String>,
    /// Unpacked size in bytes (the layers' compressed size if not unpacked).
    pub size: u64,
}

/// `image inspect`, in the shape of Docker's `docker image inspect`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDetails {
    /// The config digest.
    pub id: String,
    /// `repo:tag` of every name of the image.
    pub repo_tags: Vec<String>,
    /// `repo@digest` of every name of the image.
    pub repo_digests: Vec<String>,
    /// RFC 3339 creation time, or empty.
    pub created: String,
    /// `amd64`, …
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// The run defaults.
    pub config: super::RunConfig,
    /// The layers' diff ids.
    #[serde(rename = "RootFS")]
    pub root_fs: RootFsView,
    /// Unpacked size in bytes.
    pub size: u64,
    /// The target the names point at.
    pub descriptor: DescriptorView,
}

/// Docker's `RootFS`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFsView {
    /// `layers`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Diff ids, bottom first.
    pub layers: Vec<String>,
}

/// Docker's `Descriptor` (containerd image store).
#[derive(Clone, Debug, Serialize)]
pub struct DescriptorView {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size.
    pub size: u64,
}

/// What `image rm` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Image IDs no name points at any more (their content and snapshots
    /// go with containerd's GC).
    pub deleted: Vec<String>,
}

/// An image record resolved to this node's manifest and config.
#[derive(Clone, Debug)]
struct Resolved {
    record: Image,
    target: String,
    config_digest: String,
    config: ImageConfig,
    layers: Vec<super::plan::Descriptor>,
}

impl Resolved {
    fn of(record: Image, target: String, p: Parsed) -> Self {
        Resolved {
            record,
            target,
            config_digest: p.config_digest,
            config: p.config,
            layers: p.layers,
        }
    }
}

/// How [`ImageSource::get`] fetches an image that is not on the node.
#[derive(Clone, Copy, Default)]
pub struct Fetch<'a> {
    /// Called once a pull from the registry begins (not when the image is
    /// here already): the task then reports `pulling`.
    pub on_pull: Option<&'a (dyn Fn() + Send + Sync)>,
    /// Credentials for the image's registry, if the task has some.
    pub auth: Option<&'a super::Credential>,
}

/// Anything that can hand out an unpacked local image: the real store, or
/// a fake in tests of its users.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    /// The image `reference` names, unpacked (see [`ImageStore::get`]).
    async fn get(&self, reference: &str, fetch: Fetch<'_>) -> Result<LocalImage, ImageError>;

    /// A container could not be made from `image` as [`Self::get`] handed
    /// it out (its snapshots gone, say): the next `get` checks it again.
    fn stale(&self, _image: &LocalImage) {}
}

/// A fixed set of images, for tests of code that starts containers.
#[derive(Clone, Debug, Default)]
pub struct FakeImageSource {
    /// Images by every reference that should find them.
    pub images: BTreeMap<String, LocalImage>,
}

#[async_trait::async_trait]
impl ImageSource for FakeImageSource {
    async fn get(&self, reference: &str, _fetch: Fetch<'_>) -> Result<LocalImage, ImageError> {
        self.images
            .get(reference)
            .cloned()
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_owned(),
            })
    }
}

/// The node's images in containerd.
pub struct ImageStore {
    config: StoreConfig,
    client: Mutex<Option<Client>>,
    /// One lock per reference being pulled: a second pull of it waits for
    /// the first, then finds the image here (or, after a failure, asks the
    /// registry itself).
    pulls: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Bumped after every load, pull and remove through this store (also
    /// a failed one: it may have changed something), so the node's image
    /// inventory is listed again at once ([`crate::image_inventory`]).
    changed: tokio::sync::watch::Sender<u64>,
    /// Parsed image content and images known unpacked ([`super::cache`]).
    cache: Cache,
}

/// Each image record's name, target digest and update time (seconds),
/// sorted: [`ImageStore::fingerprint`].
pub type Fingerprint = Vec<(String, String, i64)>;

/// Bumps [`ImageStore::changed`] and forgets which images are unpacked
/// when dropped: on every way out of a call.
struct Bump<'a>(&'a ImageStore);

impl Drop for Bump<'_> {
    fn drop(&mut self) {
        self.0.cache.forget_unpacked();
        self.0.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait::async_trait]
impl ImageSource for ImageStore {
    async fn get(&self, reference: &str, fetch: Fetch<'_>) -> Result<LocalImage, ImageError> {
        ImageStore::get(self, reference, fetch).await
    }

    fn stale(&self, _image: &LocalImage) {
        self.cache.forget_unpacked();
    }
}

impl ImageStore {
    /// A store that connects on first use.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            client: Mutex::new(None),
            pulls: std::sync::Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            cache: Cache::default(),
        }
    }

    /// Changes when a load, pull or remove through this store ended.
    /// Images changed by other clients of containerd are not seen here.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The name, target digest and update time of every image record:
    /// one containerd call, to tell cheaply whether [`Self::list`] would
    /// say something new.
    pub async fn fingerprint(&self) -> Result<Fingerprint, ImageError> {
        let client = self.client().await?;
        let mut out: Fingerprint = self
            .records(&client)
            .await?
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    target_of(i),
                    i.updated_at.as_ref().map_or(0, |t| t.seconds),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Connects now if not yet connected: lets a caller fail before it
    /// accepts a large upload.
    pub async fn check(&self) -> Result<(), ImageError> {
        self.client().await.map(drop)
    }

    /// The connection, made (version checked, namespace created) on first
    /// use. A failed attempt is retried by the next call.
    pub async fn client(&self) -> Result<Client, ImageError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = Client::connect(&self.config.socket)
            .await?
            .with_namespace(&self.config.namespace)?;
        client.version().await?.ensure_supported()?;
        client.ensure_namespace().await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Loads a spooled archive (plain or gzipped tar): see [`super::import`].
    /// The spool file is removed whatever happens.
    pub async fn load(
        &self,
        spool: SpoolFile,
        tag: Option<String>,
    ) -> Result<Vec<LoadedImage>, ImageError> {
        let _changed = Bump(self);
        let client = self.client().await?;
        let limit = self.config.max_archive;
        let limits = self.config.limits;
        let (spool, plan) = tokio::task::spawn_blocking(move || {
            let spool = import::gunzip_if_needed(spool, limit)?;
            let plan = import::plan_file(&spool, tag.as_deref(), &limits)?;
            Ok::<_, ImageError>((spool, plan))
        })
        .await
        .expect("archive planning panicked")?;
        import::execute(&client, &self.config.snapshotter, &spool, &plan).await
    }

    /// `image pull`: fetches `reference` from its registry (always: a tag
    /// may have moved; blobs already here are not fetched again), then
    /// unpacks and records it as `image load` does. `insecure` allows plain
    /// HTTP to its registry.
    pub async fn pull(
        &self,
        reference: &str,
        insecure: bool,
        auth: Option<&super::Credential>,
    ) -> Result<LoadedImage, ImageError> {
        let r = pull::parse(reference)?;
        let _changed = Bump(self);
        let client = self.client().await?;
        let _one = self.pull_lock(&pull::record_name(&r)).await;
        let settings = self.config.pull_settings();
        pull::pull(
            &client,
            &self.config.snapshotter,
            &settings,
            &r,
            insecure,
            auth,
        )
        .await
    }

    /// The digest `reference`'s tag stands for in its registry now, as
    /// `repo:tag@sha256:…` (what `service create` pins, as Docker's CLI
    /// does), asked with `credential` when given (a private image); a
    /// reference with a digest is returned as it is, normalized.
    pub async fn resolve_digest(
        &self,
        reference: &str,
        insecure: bool,
        credential: Option<&super::Credential>,
    ) -> Result<String, ImageError> {
        let r = pull::parse(reference)?;
        if r.digest().is_some() {
            return Ok(r.whole());
        }
        let digest = pull::resolve(&self.config.pull_settings(), &r, insecure, credential).await?;
        Ok(format!(
            "{}/{}:{}@{digest}",
            r.registry(),
            r.repository(),
            r.tag().unwrap_or("latest")
        ))
    }

    /// Waits for any pull of `name` in progress, and holds off others.
    async fn pull_lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .pulls
            .lock()
            .expect("pulls")
            .entry(name.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Pulls a missing image for [`ImageStore::get`]: once per reference
    /// however many tasks ask at once.
    async fn pull_missing(
        &self,
        client: &Client,
        reference: &str,
        fetch: Fetch<'_>,
    ) -> Result<(), ImageError> {
        let r = pull::parse(reference)?;
        let name = pull::record_name(&r);
        let _one = self.pull_lock(&name).await;
        // Another task's pull may have brought it while this one waited.
        match self.find(client, reference).await {
            Ok(_) => return Ok(()),
            Err(ImageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(image = %name, "pulling a missing image");
        if let Some(on_pull) = fetch.on_pull {
            on_pull();
        }
        let started = std::time::Instant::now();
        let settings = self.config.pull_settings();
        let loaded = pull::pull(
            client,
            &self.config.snapshotter,
            &settings,
            &r,
            false,
            fetch.auth,
        )
        .await?;
        tracing::info!(image = %loaded.name, digest = %loaded.digest, ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(())
    }

    /// Every image record, resolved (`image ls`), sorted by name.
    pub async fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let client = self.client().await?;
        let mut out = Vec::new();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for record in self.records(&client).await? {
            let name = record.name.clone();
            let r = match self.resolve(&client, record.clone()).await {
                Err(e) if unusable(&e) => {
                    // Listed all the same (it can be removed), without an ID.
                    tracing::warn!(image = %name, "{e}");
                    let (repository, tag) = reference::repo_and_tag(&name);
                    out.push(ImageSummary {
                        name,
                        repository,
                        tag,
                        id: String::new(),
                        digest: target_of(&record),
                        created: None,
                        size: 0,
                    });
                    continue;
                }
                r => r?,
            };
            let size = match sizes.get(&r.config_digest) {
                Some(s) => *s,
                None => {
                    let s = self.size(&client, &r).await?;
                    sizes.insert(r.config_digest.clone(), s);
                    s
                }
            };
            let (repository, tag) = reference::repo_and_tag(&r.record.name);
            out.push(ImageSummary {
                name: r.record.name.clone(),
                repository,
                tag,
                id: r.config_digest.clone(),
                digest: r.target.clone(),
                created: r.config.created.clone(),
                size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `image inspect`.
    pub async fn inspect(&self, reference: &str) -> Result<ImageDetails, ImageError> {
        let client = self.client().await?;
        let matches = self.find(&client, reference).await?;
        let r = one_image(reference, matches)?;
        // Every name of the image: records of its config (Docker's ID).
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for other in self.resolve_all(&client).await? {
            if other.config_digest != r.config_digest {
                continue;
            }
            let (repo, tag) = reference::repo_and_tag(&other.record.name);
            if repo != "<none>" {
                repo_tags.push(format!("{repo}:{tag}"));
            }
            if let Some(d) = reference::repo_digest(&other.record.name, &other.target)
                && !repo_digests.contains(&d)
            {
                repo_digests.push(d);
            }
        }
        let size = self.size(&client, &r).await?;
        let target = r.record.target.clone().unwrap_or_default();
        Ok(ImageDetails {
            id: r.config_digest.clone(),
            repo_tags,
            repo_digests,
            created: r.config.created.clone().unwrap_or_default(),
            architecture: r.config.architecture.clone(),
            os: r.config.os.clone(),
            config: r.config.config.clone(),
            root_fs: RootFsView {
                kind: if r.config.rootfs.kind.is_empty() {
                    "layers".into()
                } else {
                    r.config.rootfs.kind.clone()
                },
                layers: r.config.rootfs.diff_ids.clone(),
            },
            size,
            descriptor: DescriptorView {
                media_type: target.media_type,
                digest: target.digest,
                size: u64::try_from(target.size).unwrap_or(0),
            },
        })
    }

    /// `image rm`: removes the name `reference` is (or, for an ID or digest,
    /// every name of that image: with more than one only when `force`).
    /// Refused while a container labelled [`CONTAINER_IMAGE_LABEL`] with the
    /// image's digest exists and no other name would keep the image.
    /// containerd's GC then removes content and snapshots no image needs
    /// (synchronously: `sync` is set on the last delete).
    pub async fn remove(&self, reference: &str, force: bool) -> Result<Removed, ImageError> {
        let _changed = Bump(self);
        let client = self.client().await?;
        let query = Query::parse(reference).ok_or_else(|| ImageError::InvalidReference {
            reference: reference.to_owned(),
        })?;
        let all = self.records(&client).await?;
        let by_name: Vec<Image> = match &query {
            Query::Name(name) if !name.contains('@') => {
                all.iter().filter(|i| &i.name == name).cloned().collect()
            }
            _ => Vec::new(),
        };
        let doomed = if !by_name.is_empty() {
            by_name
        } else {
            // A digest, name@digest or ID prefix (also a word that parsed
            // as a name but names nothing: `find` reads it as an ID too).
            let matches = self.find(&client, reference).await?;
            one_image(reference, matches.clone())?;
            let names: Vec<Image> = matches.into_iter().map(|r| r.record).collect();
            if names.len() > 1 && !force {
                return Err(ImageError::SeveralNames {
                    reference: reference.to_owned(),
                    names: names
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            names
        };
        if doomed.is_empty() {
            return Err(ImageError::NotFound {
                reference: reference.to_owned(),
            });
        }
        // Targets left without any name after this removal.
        let mut removed = Removed::default();
        let mut orphaned = Vec::new();
        for image in &doomed {
            let target = target_of(image);
            let survivors = all
                .iter()
                .filter(|i| target_of(i) == target && !doomed.iter().any(|d| d.name == i.name))
                .count();
            if survivors == 0 && !orphaned.contains(&target) {
                orphaned.push(target);
            }
        }
        for target in &orphaned {
            let users = self.containers_using(&client, target).await?;
            if !users.is_empty() {
                return Err(ImageError::InUse {
                    image: reference.to_owned(),
                    containers: users.join(", "),
                });
            }
        }
        let mut ids = Vec::new();
        for target in &orphaned {
            if let Some(image) = doomed.iter().find(|i| &target_of(i) == target)
                && let Ok(r) = self.resolve(&client, image.clone()).await
            {
                ids.push(r.config_digest);
            }
        }
        let mut images = ImagesClient::new(client.channel());
        let last = doomed.len() - 1;
        for (i, image) in doomed.iter().enumerate() {
            images
                .delete(DeleteImageRequest {
                    name: image.name.clone(),
                    sync: i == last,
                    target: None,
                })
                .await
                .map_err(|s| client.error("Images.Delete", s))
                .map_err(|e| ImageError::from(e).or_not_found(reference))?;
            removed.untagged.push(image.name.clone());
        }
        removed.deleted = ids;
        Ok(removed)
    }

    /// The image `reference` names, unpacked and ready to start containers
    /// from: a name (`busybox` is `docker.io/library/busybox:latest`), a
    /// `name@sha256:…`, a bare `sha256:…` (manifest digest or image ID), or
    /// an image ID prefix. An image whose snapshots are missing (GC'd, or
    /// recorded by another client) is unpacked now. A name (or
    /// name@digest) that is not here is pulled from its registry first.
    pub async fn get(&self, reference: &str, fetch: Fetch<'_>) -> Result<LocalImage, ImageError> {
        let client = self.client().await?;
        let matches = match self.find(&client, reference).await {
            Err(ImageError::NotFound { .. })
                if matches!(Query::parse(reference), Some(Query::Name(_))) =>
            {
                self.pull_missing(&client, reference, fetch)
                    .await
                    .map_err(|e| ImageError::PullFailed {
                        reference: reference.to_owned(),
                        source: Box::new(e),
                    })?;
                self.find(&client, reference).await?
            }
            r => r?,
        };
        let r = one_image(reference, matches)?;
        let steps = unpack::steps(&r.layers, &r.config);
        let top = steps.last().map(|s| s.chain_id.clone()).unwrap_or_default();
        let seen = Unpacked::of(&r.record, &r.target, &top);
        if !self.cache.is_unpacked(&seen) {
            let generation = self.cache.generation();
            let labelled = content::info(&client, &r.config_digest)
                .await?
                .labels
                .get(&unpack::snapshot_label(&self.config.snapshotter))
                == Some(&top);
            if !labelled || !unpack::exists(&client, &self.config.snapshotter, &top).await? {
                let lease = Lease::create(&client, "unpack").await?;
                let result = async {
                    let leased = lease.client(&client)?;
                    unpack::unpack(&leased, &self.config.snapshotter, &steps, &r.config_digest)
                        .await
                }
                .await;
                lease.delete(&client).await;
                result?;
            }
            self.cache.keep_unpacked(seen, generation);
        }
        Ok(LocalImage {
            name: r.record.name.clone(),
            digest: r.target.clone(),
            config: r.config,
            top_chain_id: top,
        })
    }

    async fn records(&self, client: &Client) -> Result<Vec<Image>, ImageError> {
        Ok(ImagesClient::new(client.channel())
            .list(ListImagesRequest::default())
            .await
            .map_err(|s| client.error("Images.List", s))?
            .into_inner()
            .images)
    }

    /// The images `reference` names, resolved (several only for an ambiguous
    /// ID prefix or a digest several records share; same-target records
    /// are merged by the caller).
    async fn find(&self, client: &Client, reference: &str) -> Result<Vec<Resolved>, ImageError> {
        let query = Query::parse(reference).ok_or_else(|| ImageError::InvalidReference {
            reference: reference.to_owned(),
        })?;
        let found = self.find_query(client, &query).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        if let Some(alt) = Query::alternative(reference) {
            let found = self.find_query(client, &alt).await?;
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Err(ImageError::NotFound {
            reference: reference.to_owned(),
        })
    }

    async fn find_query(
        &self,
        client: &Client,
        query: &Query,
    ) -> Result<Vec<Resolved>, ImageError> {
        match query {
            Query::Name(name) if !name.contains('@') => {
                let got = ImagesClient::new(client.channel())
                    .get(GetImageRequest { name: name.clone() })
                    .await
                    .map_err(|s| client.error("Images.Get", s));
                match got {
                    Ok(r) => {
                        let record = r.into_inner().image.unwrap_or_default();
                        Ok(vec![self.resolve(client, record).await?])
                    }
                    Err(weft_containerd_api::Error::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(e.into()),
                }
            }
            Query::Name(name) => {
                // repo[:tag]@digest: a record of that repository with that target.
                let (repo, digest) = name.split_once('@').expect("has @");
                let repo = repo
                    .rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .map_or(repo, |(r, _)| r);
                // Pulled by digest: recorded as repo@digest.
                let got = ImagesClient::new(client.channel())
                    .get(GetImageRequest {
                        name: format!("{repo}@{digest}"),
                    })
                    .await
                    .map_err(|s| client.error("Images.Get", s));
                match got {
                    Ok(r) => {
                        let record = r.into_inner().image.unwrap_or_default();
                        if target_of(&record) == digest {
                            return Ok(vec![self.resolve(client, record).await?]);
                        }
                    }
                    Err(weft_containerd_api::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                let mut out = Vec::new();
                for record in self.records(client).await? {
                    let same_repo = record
                        .name
                        .rsplit_once(':')
                        .is_some_and(|(r, t)| r == repo && !t.contains('/'));
                    if same_repo && target_of(&record) == digest {
                        out.push(self.resolve(client, record).await?);
                    }
                }
                Ok(out)
            }
            Query::Digest(d) => Ok(self
                .resolve_all(client)
                .await?
                .into_iter()
                .filter(|r| &r.target == d || &r.config_digest == d)
                .collect()),
            Query::IdPrefix(p) => Ok(self
                .resolve_all(client)
                .await?
                .into_iter()
                .filter(|r| {
                    r.config_digest
                        .strip_prefix("sha256:")
                        .is_some_and(|h| h.starts_with(p.as_str()))
                })
                .collect()),
        }
    }

    /// Every record that resolves; one whose blobs are missing or unreadable
    /// (another client's partial pull, say) is skipped with a warning
    /// rather than hiding every other image.
    async fn resolve_all(&self, client: &Client) -> Result<Vec<Resolved>, ImageError> {
        let mut out = Vec::new();
        for record in self.records(client).await? {
            let name = record.name.clone();
            match self.resolve(client, record).await {
                Ok(r) => out.push(r),
                Err(e) if unusable(&e) => tracing::warn!(image = %name, "{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads a record's target down to this node's manifest and config.
    async fn resolve(&self, client: &Client, record: Image) -> Result<Resolved, ImageError> {
        let target = record.target.clone().unwrap_or_default();
        if let Some(p) = self.cache.parsed(&target.digest) {
            return Ok(Resolved::of(record, target.digest, p));
        }
        let max = self.config.limits.max_json;
        let corrupt = |reason: String| ImageError::Corrupt {
            image: record.name.clone(),
            reason,
        };
        let mut manifest_desc = content::from_proto(&target);
        if matches!(target.media_type.as_str(), OCI_INDEX | DOCKER_MANIFEST_LIST) {
            let bytes = content::read(client, &target.digest, max).await?;
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(format!("index {}: {e}", target.digest)))?;
            let host = Platform::host();
            manifest_desc = host
                .pick(&index.manifests)
                .ok_or_else(|| corrupt(format!("no {}/{} manifest", host.os, host.architecture)))?;
        }
        let bytes = content::read(client, &manifest_desc.digest, max).await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("manifest {}: {e}", manifest_desc.digest)))?;
        let bytes = content::read(client, &manifest.config.digest, max).await?;
        let config = ImageConfig::parse(&bytes)
            .map_err(|e| corrupt(format!("config {}: {e}", manifest.config.digest)))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(corrupt(
                "layer count differs from the config's diff ids".into(),
            ));
        }
        let parsed = Parsed {
            config_digest: manifest.config.digest,
            config,
            layers: manifest.layers,
        };
        self.cache.keep_parsed(&target.digest, parsed.clone());
        Ok(Resolved::of(record, target.digest, parsed))
    }

    /// The unpacked size (snapshot usage of every layer), or the layers'
    /// blob sizes when the image is not unpacked.
    async fn size(&self, client: &Client, r: &Resolved) -> Result<u64, ImageError> {
        let mut snapshots = SnapshotsClient::new(client.channel());
        let mut total = 0u64;
        for chain in r.config.chain_ids() {
            let usage = snapshots
                .usage(UsageRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: chain,
                })
                .await;
            match usage {
                Ok(u) => total += u64::try_from(u.into_inner().size).unwrap_or(0),
                Err(_) => return Ok(r.layers.iter().map(|l| l.size).sum()),
            }
        }
        Ok(total)
    }

    /// Ids of containers labelled as using image `digest`.
    async fn containers_using(
        &self,
        client: &Client,
        digest: &str,
    ) -> Result<Vec<String>, ImageError> {
        let filter = format!("labels.\"{CONTAINER_IMAGE_LABEL}\"==\"{digest}\"");
        let list = ContainersClient::new(client.channel())
            .list(ListContainersRequest {
                filters: vec![filter],
            })
            .await
            .map_err(|s| client.error("Containers.List", s))?
            .into_inner();
        Ok(list.containers.into_iter().map(|c| c.id).collect())
    }
}

/// An error about one image's own content (not about containerd).
fn unusable(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::Corrupt { .. }
            | ImageError::Containerd(weft_containerd_api::Error::NotFound { .. })
    )
}

fn target_of(image: &Image) -> String {
    image
        .target
        .as_ref()
        .map(|t| t.digest.clone())
        .unwrap_or_default()
}

/// The one image among `matches`, or Ambiguous. An image is its config
/// (Docker's image ID): records with different manifests but one config
/// (a docker-save and an OCI copy of one image) are one image, and the
/// first by name stands for them.
fn one_image(reference: &str, mut matches: Vec<Resolved>) -> Result<Resolved, ImageError> {
    let mut ids: Vec<&str> = matches.iter().map(|r| r.config_digest.as_str()).collect();
    ids.sort();
    ids.dedup();
    if ids.len() > 1 {
        return Err(ImageError::Ambiguous {
            reference: reference.to_owned(),
            candidates: matches
                .iter()
                .map(|r| r.record.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    matches.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    if matches.is_empty() {
        return Err(ImageError::NotFound {
            reference: reference.to_owned(),
        });
    }
    Ok(matches.swap_remove(0))
}
