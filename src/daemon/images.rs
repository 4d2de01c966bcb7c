//! The `Images` service on the daemon's local socket: `weft image
//! load|pull|ls|inspect|rm` and tag resolution for `service create`, served from the node's [`ImageStore`] (containerd).
//! Only wiring and the mapping of errors to statuses live here; the image
//! logic is `weft_worker::image`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::images_server::{Images, ImagesServer};
use weft_worker::image::{Credential, ImageError, ImageStore, PullError, Spool, StoreConfig};

use crate::cli::DaemonArgs;

/// The most data one Load message may carry (the CLI sends 1 MiB chunks).
const MAX_CHUNK: usize = 1 << 20;

/// The node's images, as the local API serves them.
pub(super) struct NodeImages {
    store: Arc<ImageStore>,
}

/// The node's image store; refuses a containerd namespace containerd
/// would refuse. Nothing connects to containerd until the first image
/// command or container.
pub(super) fn store(args: &DaemonArgs) -> anyhow::Result<Arc<ImageStore>> {
    let mut config = StoreConfig::new(&args.exec_root);
    config.socket = args.containerd_socket.clone();
    config.namespace = args.containerd_namespace.clone();
    config.insecure_registries = args.insecure_registries.clone();
    config.validate()?;
    Ok(Arc::new(ImageStore::new(config)))
}

/// Checks the archive of an `image load --all-nodes` on the manager as
/// this node's own load would, before any node is asked to load it (the
/// manager does not read archives itself: see weft_manager::imagepush).
pub(super) fn archive_check(store: &ImageStore) -> weft_manager::controlapi::ArchiveCheck {
    let config = store.config();
    let (limit, limits) = (config.max_archive, config.limits);
    Arc::new(move |path, tag| {
        weft_worker::image::import::check_file(path, tag, limit, &limits).map_err(|e| e.to_string())
    })
}

/// The service for the daemon's router.
pub(super) fn server(store: Arc<ImageStore>) -> ImagesServer<NodeImages> {
    ImagesServer::new(NodeImages { store })
}

fn status(e: ImageError) -> Status {
    Status::new(code(&e), e.to_string())
}

fn code(e: &ImageError) -> Code {
    use weft_containerd_api::Error as C;
    match e {
        ImageError::Containerd(c) => match c {
            C::NoDaemon { .. } | C::Connect { .. } | C::Unavailable { .. } => Code::Unavailable,
            C::SocketPermission { .. } => Code::PermissionDenied,
            C::NotFound { .. } => Code::NotFound,
            C::AlreadyExists { .. } => Code::AlreadyExists,
            C::InvalidIdentifier { .. } => Code::InvalidArgument,
            C::TooOld { .. } | C::UnparsableVersion { .. } => Code::FailedPrecondition,
            _ => Code::Internal,
        },
        ImageError::Archive(_) | ImageError::DiffIdMismatch { .. } => Code::InvalidArgument,
        ImageError::InvalidReference { .. } | ImageError::Ambiguous { .. } => Code::InvalidArgument,
        ImageError::NotFound { .. } => Code::NotFound,
        ImageError::InUse { .. } | ImageError::SeveralNames { .. } => Code::FailedPrecondition,
        ImageError::TooLarge { .. } => Code::ResourceExhausted,
        ImageError::Corrupt { .. } => Code::DataLoss,
        ImageError::Io { .. } => Code::Internal,
        ImageError::Pull(p) => pull_code(p),
        ImageError::PullFailed { source, .. } => code(source),
    }
}

/// The credential a client sent for `image`'s pull, checked: well formed,
/// and for the registry the image comes from (no other gets it).
fn credential_for(a: &pb::RegistryCredential, image: &str) -> Result<Credential, Status> {
    let r = weft_worker::image::pull::parse(image).map_err(|e| status(e.into()))?;
    if a.registry != r.registry() {
        return Err(Status::invalid_argument(format!(
            "the credentials sent are for registry {:?}, the image is from {}",
            a.registry.chars().take(256).collect::<String>(),
            r.registry()
        )));
    }
    Credential::new(&a.username, &a.password).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn pull_code(e: &PullError) -> Code {
    match e {
        PullError::InvalidReference { .. } | PullError::InvalidRegistry { .. } => {
            Code::InvalidArgument
        }
        PullError::NotFound { .. } => Code::NotFound,
        PullError::Unauthorized { .. } | PullError::LoginRefused { .. } => Code::PermissionDenied,
        PullError::Unreachable { .. } => Code::Unavailable,
        PullError::DigestMismatch { .. } => Code::DataLoss,
        PullError::Refused { .. } => Code::FailedPrecondition,
        PullError::Registry { .. } => Code::Unknown,
    }
}

#[tonic::async_trait]
impl Images for NodeImages {
    async fn pull(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<pb::PullImageResponse>, Status> {
        let r = req.into_inner();
        let started = Instant::now();
        let auth = r
            .auth
            .as_ref()
            .map(|a| credential_for(a, &r.image))
            .transpose()?;
        let image = self
            .store
            .pull(&r.image, r.insecure, auth.as_ref())
            .await
            .map_err(status)?;
        tracing::info!(
            image = %image.name,
            digest = %image.digest,
            ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(Response::new(pb::PullImageResponse {
            image: Some(pb::LoadedImage {
                name: image.name,
                digest: image.digest,
                id: image.id,
            }),
        }))
    }

    async fn resolve(
        &self,
        req: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        let r = req.into_inner();
        let credential = r
            .auth
            .as_ref()
            .map(|a| weft_worker::image::credential_for_image(a, &r.image))
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("registry credentials: {e}")))?;
        let pinned = self
            .store
            .resolve_digest(&r.image, r.insecure, credential.as_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResolveImageResponse { image: pinned }))
    }

    async fn load(
        &self,
        req: Request<Streaming<pb::LoadImageRequest>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        // Fail before taking gigabytes when containerd is not there.
        self.store.check().await.map_err(status)?;
        let config = self.store.config();
        let mut stream = req.into_inner();
        let mut spool = Spool::create(&config.spool_dir, config.max_archive)
            .await
            .map_err(status)?;
        let mut tag = None;
        let mut first = true;
        while let Some(msg) = stream.message().await? {
            if msg.data.len() > MAX_CHUNK {
                return Err(Status::invalid_argument(format!(
                    "image upload chunks may hold at most {MAX_CHUNK} bytes"
                )));
            }
            if !msg.tag.is_empty() {
                if !first {
                    return Err(Status::invalid_argument(
                        "the tag goes in the first message of an upload",
                    ));
                }
                tag = Some(msg.tag);
            }
            first = false;
            spool.write(&msg.data).await.map_err(status)?;
        }
        if spool.is_empty() {
            return Err(Status::invalid_argument("the image archive is empty"));
        }
        let size = spool.len();
        let file = spool.finish().await.map_err(status)?;
        let started = Instant::now();
        let loaded = self.store.load(file, tag).await.map_err(status)?;
        tracing::info!(
            bytes = size,
            images = loaded.len(),
            ms = started.elapsed().as_millis() as u64,
            "image archive loaded"
        );
        Ok(Response::new(pb::LoadImageResponse {
            images: loaded
                .into_iter()
                .map(|l| pb::LoadedImage {
                    name: l.name,
                    digest: l.digest,
                    id: l.id,
                })
                .collect(),
        }))
    }

    async fn list(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.store.list().await.map_err(status)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.into_iter().map(pb::ImageSummary::from).collect(),
        }))
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        let details = self
            .store
            .inspect(&req.into_inner().image)
            .await
            .map_err(status)?;
        let json = serde_json::to_string(&details)
            .map_err(|e| Status::internal(format!("cannot encode the image details: {e}")))?;
        Ok(Response::new(pb::InspectImageResponse { json }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let r = req.into_inner();
        let removed = self.store.remove(&r.image, r.force).await.map_err(status)?;
        Ok(Response::new(pb::RemoveImageResponse {
            untagged: removed.untagged,
            deleted: removed.deleted,
        }))
    }
}
