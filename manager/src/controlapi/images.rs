//! `Control.LoadImage` (`weft image load --all-nodes`): receives the
//! archive into the leader's spool and waits for every node's load. The
//! flow, the bounds and who may fetch are in [`crate::imagepush`].
//!
//! `Control.ListClusterImages` (`weft image ls --all-nodes`): the images
//! each node last reported to the leader ([`crate::inventory`]).

use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tonic::Status;
use weft_proto::v1 as pb;

use super::ControlService;
use crate::imagepush::{self, LOAD_TIMEOUT, MAX_ARCHIVE_BYTES, MAX_CHUNK_BYTES};

/// The longest tag a load may ask for (a full image reference).
const MAX_TAG_BYTES: usize = 512;

/// The spooled upload: where, how big, its digest, the tag asked for.
struct Upload {
    path: std::path::PathBuf,
    size: u64,
    sha256: String,
    tag: String,
}

impl ControlService {
    /// Spools the archive, asks every ready node to load it and answers
    /// with each node's outcome.
    pub(super) async fn load_image(
        &self,
        mut stream: tonic::Streaming<pb::LoadImageRequest>,
    ) -> Result<pb::ClusterImageLoadResponse, Status> {
        if !self.core.is_leader() {
            let leader = self.core.leader_addr().unwrap_or_default();
            return Err(Status::failed_precondition(format!(
                "`image load --all-nodes` runs on the leader, where the nodes' sessions are; \
                 this manager is not it (the leader is at {leader:?}): run it on the leader's \
                 node"
            )));
        }
        let dir = self
            .core
            .spool_dir()
            .ok_or_else(|| Status::failed_precondition("this manager has no image spool"))?
            .to_owned();
        let mut reservation = self.core.pushes().reserve()?;
        let id = format!("{:032x}", rand::random::<u128>());
        let path = dir.join(format!("{id}.tar"));
        reservation.own(path.clone());
        let upload = receive(&mut stream, &dir, path).await?;
        if let Some(check) = self.archive_check.clone() {
            let (p, tag) = (upload.path.clone(), upload.tag.clone());
            let checked = tokio::task::spawn_blocking(move || {
                check(&p, (!tag.is_empty()).then_some(tag.as_str()))
            })
            .await
            .map_err(|e| Status::internal(format!("the archive check failed: {e}")))?;
            if let Err(why) = checked {
                return Err(Status::invalid_argument(format!(
                    "the image archive is refused: {why}; no node was asked to load it"
                )));
            }
        }
        let sessions = self.core.session_nodes();
        let (plan, hostnames) = self.core.read(|s| {
            (
                imagepush::plan(s, &sessions),
                s.nodes
                    .values()
                    .map(|n| (n.id, n.hostname.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        });
        tracing::info!(
            fetch = %id,
            bytes = upload.size,
            sha256 = %upload.sha256,
            targets = plan.fetch.len(),
            skipped = plan.skip.len(),
            "cluster-wide image load"
        );
        let fetch = pb::ImageFetch {
            id,
            sha256: upload.sha256.clone(),
            size: upload.size,
            tag: upload.tag,
        };
        reservation.start(fetch, upload.path, &plan.fetch);
        let results = reservation.wait(LOAD_TIMEOUT).await;
        let host = |n: &crate::store::NodeId| hostnames.get(n).cloned().unwrap_or_default();
        let mut nodes: Vec<pb::ClusterImageNode> = results
            .into_iter()
            .map(|(n, r)| {
                let (images, error) = match r {
                    Ok(i) => (i, String::new()),
                    Err(e) => (Vec::new(), e),
                };
                pb::ClusterImageNode {
                    node_id: n.to_string(),
                    hostname: host(&n),
                    error,
                    images,
                }
            })
            .chain(plan.skip.iter().map(|(n, why)| pb::ClusterImageNode {
                node_id: n.to_string(),
                hostname: host(n),
                error: why.reason().into(),
                images: Vec::new(),
            }))
            .collect();
        nodes.sort_by(|a, b| (&a.hostname, &a.node_id).cmp(&(&b.hostname, &b.node_id)));
        Ok(pb::ClusterImageLoadResponse {
            nodes,
            sha256: upload.sha256,
            size: upload.size,
        })
    }
}

impl ControlService {
    /// Every node's images as the leader knows them; a follower asks the
    /// leader (the lists and the sessions are there).
    pub(super) async fn list_cluster_images(
        &self,
        r: pb::ListClusterImagesRequest,
    ) -> Result<pb::ListClusterImagesResponse, Status> {
        if !self.core.is_leader() {
            let ch = self.core.leader_channel().ok_or_else(|| {
                Status::unavailable(
                    "no leader known, and the nodes' image lists are kept by the leader; \
                     try again in a moment",
                )
            })?;
            return weft_proto::v1::control_client::ControlClient::new(ch)
                .list_cluster_images(r)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| Status::new(s.code(), format!("leader: {}", s.message())));
        }
        let sessions = self.core.session_nodes();
        let inventories = self.core.inventories();
        let nodes = self.core.read(|s| {
            let seen = inventories.snapshot(s);
            crate::inventory::rows(s, &sessions, &seen)
        });
        Ok(pb::ListClusterImagesResponse { nodes })
    }
}

/// Writes the upload to `path` (in `dir`, made 0700), bounded, hashing it.
async fn receive(
    stream: &mut tonic::Streaming<pb::LoadImageRequest>,
    dir: &std::path::Path,
    path: std::path::PathBuf,
) -> Result<Upload, Status> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &str, e: std::io::Error| Status::internal(format!("{what}: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("cannot create the image spool directory", e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(|e| io("cannot create the image spool file", e))?;
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut tag = String::new();
    let mut first = true;
    while let Some(msg) = stream.message().await? {
        if msg.data.len() > MAX_CHUNK_BYTES {
            return Err(Status::invalid_argument(format!(
                "image upload chunks may hold at most {MAX_CHUNK_BYTES} bytes"
            )));
        }
        if !msg.tag.is_empty() {
            if !first {
                return Err(Status::invalid_argument(
                    "the tag goes in the first message of an upload",
                ));
            }
            if msg.tag.len() > MAX_TAG_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the tag is longer than {MAX_TAG_BYTES} bytes"
                )));
            }
            tag = msg.tag;
        }
        first = false;
        size += msg.data.len() as u64;
        if size > MAX_ARCHIVE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the image archive is larger than the limit of {MAX_ARCHIVE_BYTES} bytes"
            )));
        }
        hasher.update(&msg.data);
        file.write_all(&msg.data)
            .await
            .map_err(|e| io("cannot write the image spool file", e))?;
    }
    if size == 0 {
        return Err(Status::invalid_argument("the image archive is empty"));
    }
    file.flush()
        .await
        .map_err(|e| io("cannot write the image spool file", e))?;
    Ok(Upload {
        path,
        size,
        sha256: hex::encode(hasher.finalize()),
        tag,
    })
}
