//! `weft image load`: the archive arrives in chunks and is spooled to a
//! file, decompressed if gzipped, indexed and planned (pure, see
//! [`super::archive`] and [`super::plan`]), then executed against
//! containerd:
//!
//! ```text
//!   Spool ──► (gunzip) ──► ArchiveIndex ──► ImportPlan ──► lease
//!     ──► Content.Write each blob (children first, GC labels)
//!     ──► unpack each image (snapshots; config labelled with the top one)
//!     ──► Images.Create/Update each name ──► delete lease ──► delete spool
//! ```
//!
//! No partial state: image records are written last, and if one fails the
//! records this load made are undone. Blobs and snapshots written before a
//! failure stay only under the load's lease, which is deleted on the way
//! out (or, if containerd is gone by then, expires within an hour); then
//! containerd's GC collects them, as nothing references them.

use std::io::{BufReader, Read, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use weft_containerd_api::Client;
use weft_containerd_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, UpdateImageRequest,
    images_client::ImagesClient,
};

use super::archive::{ArchiveIndex, Limits};
use super::content::{self, Lease};
use super::error::ImageError;
use super::plan::{self, BlobSource, ImportPlan, PlannedImage, Platform};
use super::unpack;

/// Default cap on an uploaded archive (and on its decompressed size).
pub const DEFAULT_MAX_ARCHIVE: u64 = 8 << 30;

/// An image a load recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The record's name (a full name, or the target digest when unnamed).
    pub name: String,
    /// The target's (manifest or index) digest.
    pub digest: String,
    /// The image ID (config digest).
    pub id: String,
}

/// A file that is deleted when dropped: the spooled upload on every path
/// out, success or failure.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
}

impl SpoolFile {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove spooled image archive: {e}");
        }
    }
}

/// An upload being written to `<dir>/upload-<random>`, bounded by a size cap.
pub struct Spool {
    file: tokio::fs::File,
    guard: SpoolFile,
    written: u64,
    limit: u64,
}

impl Spool {
    /// Creates the spool file in `dir` (made if missing, 0700).
    pub async fn create(dir: &Path, limit: u64) -> Result<Self, ImageError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ImageError::Io {
                what: "cannot create the upload directory",
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(format!("upload-{:016x}", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| ImageError::Io {
                what: "cannot create the upload file",
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            file,
            guard: SpoolFile { path },
            written: 0,
            limit,
        })
    }

    /// Appends a chunk; refuses one that takes the upload over the cap.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(ImageError::TooLarge { limit: self.limit });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(|source| ImageError::Io {
                what: "cannot write the upload",
                path: self.guard.path.clone(),
                source,
            })
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Flushes the file; the upload is complete.
    pub async fn finish(mut self) -> Result<SpoolFile, ImageError> {
        self.file
            .flush()
            .await
            .and(self.file.sync_all().await)
            .map_err(|source| ImageError::Io {
                what: "cannot write the upload",
                path: self.guard.path.clone(),
                source,
            })?;
        Ok(self.guard)
    }
}

/// Decompresses a gzipped spool into a sibling file (bounded by `limit`);
/// a plain tar is returned as it is. Blocking.
pub fn gunzip_if_needed(spool: SpoolFile, limit: u64) -> Result<SpoolFile, ImageError> {
    if !is_gzip(spool.path())? {
        return Ok(spool);
    }
    let out = SpoolFile {
        path: spool.path().with_extension("tar"),
    };
    gunzip_to(spool.path(), out, limit)
}

/// Checks the archive at `path` as a load would (format, digests, paths,
/// sizes, the tag) and stores nothing: for a cluster-wide load, before
/// any node is asked. `path` itself is left in place; a gzipped archive
/// is decompressed to a sibling `.check.tar`, removed after. Blocking.
pub fn check_file(
    path: &Path,
    tag: Option<&str>,
    limit: u64,
    limits: &Limits,
) -> Result<(), ImageError> {
    if is_gzip(path)? {
        let out = SpoolFile {
            path: path.with_extension("check.tar"),
        };
        let plain = gunzip_to(path, out, limit)?;
        plan_path(plain.path(), tag, limits).map(drop)
    } else {
        plan_path(path, tag, limits).map(drop)
    }
}

/// Whether the file starts with the gzip magic.
fn is_gzip(path: &Path) -> Result<bool, ImageError> {
    let mut file = std::fs::File::open(path).map_err(|source| ImageError::Io {
        what: "cannot read the upload",
        path: path.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|source| ImageError::Io {
        what: "cannot read the upload",
        path: path.to_owned(),
        source,
    })?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Decompresses `src` into `out`, at most `limit` bytes.
fn gunzip_to(src: &Path, out: SpoolFile, limit: u64) -> Result<SpoolFile, ImageError> {
    let io_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Io { what, path, source }
    };
    let file = std::fs::File::open(src).map_err(io_err("cannot read the upload", src))?;
    let mut dest = std::fs::File::create(out.path())
        .map_err(io_err("cannot write the decompressed upload", out.path()))?;
    let mut decoder = flate2::read::GzDecoder::new(BufReader::new(file)).take(limit + 1);
    let copied = std::io::copy(&mut decoder, &mut dest).map_err(|e| {
        ImageError::Archive(super::archive::ArchiveError::Tar(std::io::Error::new(
            e.kind(),
            format!("gzip: {e}"),
        )))
    })?;
    if copied > limit {
        return Err(ImageError::TooLarge { limit });
    }
    Ok(out)
}

/// Indexes and plans the spooled tar. Blocking.
pub fn plan_file(
    spool: &SpoolFile,
    tag: Option<&str>,
    limits: &Limits,
) -> Result<ImportPlan, ImageError> {
    plan_path(spool.path(), tag, limits)
}

fn plan_path(path: &Path, tag: Option<&str>, limits: &Limits) -> Result<ImportPlan, ImageError> {
    let open = || {
        std::fs::File::open(path).map_err(|source| ImageError::Io {
            what: "cannot read the upload",
            path: path.to_owned(),
            source,
        })
    };
    let index = ArchiveIndex::build(BufReader::new(open()?), limits)?;
    let mut src = open()?;
    Ok(plan::plan(
        &index,
        &mut src,
        tag,
        &Platform::host(),
        limits,
    )?)
}

/// Executes `plan`, reading archive blobs from `spool`.
pub async fn execute(
    client: &Client,
    snapshotter: &str,
    spool: &SpoolFile,
    plan: &ImportPlan,
) -> Result<Vec<LoadedImage>, ImageError> {
    commit(client, snapshotter, &plan.images, async |leased| {
        write_blobs(leased, spool, plan).await
    })
    .await
}

/// The one way images get into containerd, for loads and pulls alike:
/// under a new lease, `write_blobs` writes every blob (children first,
/// with their GC labels), then each image is unpacked, then its names are
/// recorded; the lease goes on the way out, success or failure.
pub(crate) async fn commit(
    client: &Client,
    snapshotter: &str,
    images: &[PlannedImage],
    write_blobs: impl AsyncFnOnce(&Client) -> Result<(), ImageError>,
) -> Result<Vec<LoadedImage>, ImageError> {
    let lease = Lease::create(client, "import").await?;
    let result = async {
        let leased = lease.client(client)?;
        write_blobs(&leased).await?;
        for image in images {
            let steps = unpack::steps(&image.layers, &image.config);
            unpack::unpack(
                &leased,
                snapshotter,
                &steps,
                &image.config_descriptor.digest,
            )
            .await?;
        }
        record(client, images).await
    }
    .await;
    lease.delete(client).await;
    result
}

async fn write_blobs(
    client: &Client,
    spool: &SpoolFile,
    plan: &ImportPlan,
) -> Result<(), ImageError> {
    for blob in &plan.blobs {
        match &blob.source {
            BlobSource::Bytes(bytes) => {
                let data = std::io::Cursor::new(bytes.clone());
                content::write(client, &blob.descriptor, data, &blob.labels).await?;
            }
            BlobSource::Archive(entry) => {
                let read_error = |source| ImageError::Io {
                    what: "cannot read the upload",
                    path: spool.path().to_owned(),
                    source,
                };
                let mut file = tokio::fs::File::open(spool.path())
                    .await
                    .map_err(read_error)?;
                file.seek(SeekFrom::Start(entry.offset))
                    .await
                    .map_err(read_error)?;
                let data = tokio::io::AsyncReadExt::take(file, entry.size);
                content::write(client, &blob.descriptor, data, &blob.labels).await?;
            }
        }
    }
    Ok(())
}

/// Points an existing record at `image`'s target, leaving its labels.
fn retarget(image: Image) -> UpdateImageRequest {
    UpdateImageRequest {
        image: Some(image),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["target".into()],
        }),
        source_date_epoch: None,
    }
}

/// What a record looked like before this load changed it.
enum Undo {
    Delete(String),
    Restore(Image),
}

/// Creates (or points at the new target) every name of every image; on a
/// failure undoes the records made so far.
async fn record(client: &Client, planned: &[PlannedImage]) -> Result<Vec<LoadedImage>, ImageError> {
    let mut images = ImagesClient::new(client.channel());
    let mut undo = Vec::new();
    let mut loaded = Vec::new();
    let result: Result<(), ImageError> = async {
        for image in planned {
            let names = if image.names.is_empty() {
                vec![image.target.digest.clone()]
            } else {
                image.names.clone()
            };
            for name in names {
                let record = Image {
                    name: name.clone(),
                    target: Some(content::to_proto(&image.target)),
                    ..Default::default()
                };
                let created = images
                    .create(CreateImageRequest {
                        image: Some(record.clone()),
                        source_date_epoch: None,
                    })
                    .await
                    .map_err(|s| client.error("Images.Create", s));
                match created {
                    Ok(_) => undo.push(Undo::Delete(name.clone())),
                    Err(weft_containerd_api::Error::AlreadyExists { .. }) => {
                        let old = images
                            .get(GetImageRequest { name: name.clone() })
                            .await
                            .map_err(|s| client.error("Images.Get", s))?
                            .into_inner()
                            .image
                            .unwrap_or_default();
                        images
                            .update(retarget(record))
                            .await
                            .map_err(|s| client.error("Images.Update", s))?;
                        undo.push(Undo::Restore(old));
                    }
                    Err(e) => return Err(e.into()),
                }
                loaded.push(LoadedImage {
                    name,
                    digest: image.target.digest.clone(),
                    id: image.config_descriptor.digest.clone(),
                });
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for u in undo.into_iter().rev() {
            let r = match u {
                Undo::Delete(name) => images
                    .delete(DeleteImageRequest {
                        name,
                        sync: false,
                        target: None,
                    })
                    .await
                    .map(|_| ()),
                Undo::Restore(old) => images.update(retarget(old)).await.map(|_| ()),
            };
            if let Err(s) = r {
                tracing::warn!("cannot undo an image record of a failed load: {s}");
            }
        }
        return Err(e);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_spool_is_bounded_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(&dir.path().join("images"), 10).await.unwrap();
        spool.write(b"12345").await.unwrap();
        let err = spool.write(b"123456").await.unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { limit: 10 }), "{err:?}");
        assert!(err.to_string().contains("10 bytes"), "{err}");
        drop(spool);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn gzip_is_undone_and_both_files_go() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"tar bytes").unwrap();
        let gz = gz.finish().unwrap();
        let mut spool = Spool::create(dir.path(), 1 << 20).await.unwrap();
        spool.write(&gz).await.unwrap();
        let file = spool.finish().await.unwrap();
        let raw = file.path().to_owned();
        let plain = gunzip_if_needed(file, 1 << 20).unwrap();
        assert!(!raw.exists(), "the gzipped upload is removed");
        assert_eq!(std::fs::read(plain.path()).unwrap(), b"tar bytes");
        let path = plain.path().to_owned();
        drop(plain);
        assert!(!path.exists());
        // A decompressed size over the cap is refused.
        let mut spool = Spool::create(dir.path(), 1 << 20).await.unwrap();
        spool.write(&gz).await.unwrap();
        let file = spool.finish().await.unwrap();
        assert!(matches!(
            gunzip_if_needed(file, 4).unwrap_err(),
            ImageError::TooLarge { limit: 4 }
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
