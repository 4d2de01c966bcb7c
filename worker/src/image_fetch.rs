//! The node's side of a cluster-wide image load (`weft image load
//! --all-nodes`, the flow is drawn in `weft_manager::imagepush`): for each
//! new entry in its config's `image_fetches`, fetch the archive from the
//! leader (`Dispatcher.FetchImage`), check its size and sha256 while
//! receiving, load it into containerd as a local `image load` does, and
//! report the outcome (`Dispatcher.ReportImageFetch`).
//!
//! One fetch at a time: a node never loads two such archives together.
//! What the config asks is decided purely by [`pending`]; an entry is
//! handled once (its ID is remembered, boundedly), also when it failed:
//! the leader has the failure and the operator retries with a new load.

use std::collections::VecDeque;
use std::sync::Arc;

use sha2::Digest;
use tokio::sync::watch;
use weft_proto::v1 as pb;

use crate::agent::ManagerCaller;
use crate::image::{ImageError, ImageStore, LoadedImage, Spool, SpoolFile};

/// How many handled fetch IDs are remembered (a config holds at most one
/// at a time; a few more cover entries that linger in a config pushed again).
const REMEMBERED: usize = 16;

/// Why a fetch failed on this node.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The entry itself is malformed.
    #[error("image fetch entry {id:?} is malformed: {why}")]
    BadEntry {
        /// The entry's ID.
        id: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The archive received is not the size announced.
    #[error("the archive received is {got} bytes, not the {expected} announced")]
    Size {
        /// Announced.
        expected: u64,
        /// Received (so far).
        got: u64,
    },
    /// The archive received does not hash to the digest announced.
    #[error("the archive received has sha256 {got}, not the {expected} announced")]
    Digest {
        /// Announced.
        expected: String,
        /// Received.
        got: String,
    },
    /// The call to the leader failed.
    #[error("fetching the archive from the leader failed: {0}")]
    Call(#[from] crate::error::Error),
    /// The stream broke.
    #[error("the archive stream from the leader broke: {}", .0.message())]
    Stream(tonic::Status),
    /// Spooling or loading failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The entries of `config` not handled yet (not in `done`), in order.
pub fn pending(config: &pb::NodeConfig, done: &VecDeque<String>) -> Vec<pb::ImageFetch> {
    config
        .image_fetches
        .iter()
        .filter(|f| !done.contains(&f.id))
        .cloned()
        .collect()
}

/// Refuses an entry whose fields cannot be right (before any call).
pub fn validate(f: &pb::ImageFetch, max: u64) -> Result<(), FetchError> {
    let bad = |why| FetchError::BadEntry {
        id: f.id.chars().take(64).collect(),
        why,
    };
    if f.id.is_empty() || f.id.len() > 64 || !f.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the ID is not 1-64 hex digits"));
    }
    if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the sha256 is not 64 hex digits"));
    }
    if f.size == 0 || f.size > max {
        return Err(bad("the size is 0 or over this node's archive limit"));
    }
    Ok(())
}

/// Receives the archive chunks into `spool`, checking the size and digest
/// `f` announces; a short, long or altered archive is refused (and the
/// spool removed).
pub async fn receive<S>(
    mut chunks: S,
    f: &pb::ImageFetch,
    mut spool: Spool,
) -> Result<SpoolFile, FetchError>
where
    S: futures::Stream<Item = Result<pb::ImageFetchChunk, tonic::Status>> + Unpin,
{
    use futures::StreamExt;
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(FetchError::Stream)?;
        let got = spool.len() + chunk.data.len() as u64;
        if got > f.size {
            return Err(FetchError::Size {
                expected: f.size,
                got,
            });
        }
        hasher.update(&chunk.data);
        spool.write(&chunk.data).await?;
    }
    if spool.len() != f.size {
        return Err(FetchError::Size {
            expected: f.size,
            got: spool.len(),
        });
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(&f.sha256) {
        return Err(FetchError::Digest {
            expected: f.sha256.clone(),
            got,
        });
    }
    Ok(spool.finish().await?)
}

/// The loop: watches the config, handles each new fetch.
pub struct Fetcher {
    /// This node's ID (the calls speak for it).
    pub node_id: String,
    /// Node-scoped calls to the leader.
    pub caller: ManagerCaller,
    /// This node's images.
    pub store: Arc<ImageStore>,
}

impl Fetcher {
    /// Runs until `stop` turns true or the config channel closes.
    pub async fn run(
        self,
        mut config: watch::Receiver<Option<Arc<pb::NodeConfig>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut done: VecDeque<String> = VecDeque::new();
        loop {
            let todo = config
                .borrow_and_update()
                .as_ref()
                .map(|c| pending(c, &done))
                .unwrap_or_default();
            for f in todo {
                if done.len() == REMEMBERED {
                    done.pop_front();
                }
                done.push_back(f.id.clone());
                let outcome = tokio::select! {
                    o = self.fetch_and_load(&f) => o,
                    _ = stop.changed() => return,
                };
                self.report(&f, outcome).await;
            }
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    async fn fetch_and_load(&self, f: &pb::ImageFetch) -> Result<Vec<LoadedImage>, FetchError> {
        let config = self.store.config();
        validate(f, config.max_archive)?;
        // Fail before fetching gigabytes when containerd is not there.
        self.store.check().await?;
        let spool = Spool::create(&config.spool_dir, config.max_archive).await?;
        let req = pb::ImageFetchRequest {
            node_id: self.node_id.clone(),
            fetch_id: f.id.clone(),
        };
        let started = std::time::Instant::now();
        let stream = self
            .caller
            .call(|mut c| {
                let req = req.clone();
                async move { c.fetch_image(req).await }
            })
            .await?;
        let file = receive(stream, f, spool).await?;
        let tag = (!f.tag.is_empty()).then(|| f.tag.clone());
        let loaded = self.store.load(file, tag).await?;
        tracing::info!(
            fetch = %f.id,
            bytes = f.size,
            images = loaded.len(),
            ms = started.elapsed().as_millis() as u64,
            "cluster-wide image archive loaded"
        );
        Ok(loaded)
    }

    async fn report(&self, f: &pb::ImageFetch, outcome: Result<Vec<LoadedImage>, FetchError>) {
        let (images, error) = match outcome {
            Ok(l) => (
                l.into_iter()
                    .map(|i| pb::LoadedImage {
                        name: i.name,
                        digest: i.digest,
                        id: i.id,
                    })
                    .collect(),
                String::new(),
            ),
            Err(e) => {
                tracing::warn!(fetch = %f.id, error = %e, "cluster-wide image load failed here");
                (Vec::new(), e.to_string())
            }
        };
        let report = pb::ImageFetchReport {
            node_id: self.node_id.clone(),
            fetch_id: f.id.clone(),
            error,
            images,
        };
        let sent = self
            .caller
            .call(|mut c| {
                let r = report.clone();
                async move { c.report_image_fetch(r).await }
            })
            .await;
        if let Err(e) = sent {
            // The leader then marks this node failed at its timeout.
            tracing::warn!(fetch = %f.id, error = %e, "could not report an image load");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> pb::ImageFetch {
        pb::ImageFetch {
            id: "ab12".into(),
            sha256: hex::encode(sha2::Sha256::digest(data)),
            size: data.len() as u64,
            tag: String::new(),
        }
    }

    fn chunks(
        parts: Vec<&'static [u8]>,
    ) -> impl futures::Stream<Item = Result<pb::ImageFetchChunk, tonic::Status>> + Unpin {
        futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok(pb::ImageFetchChunk { data: p.to_vec() })),
        )
    }

    #[test]
    fn only_entries_not_handled_are_pending() {
        let config = pb::NodeConfig {
            image_fetches: vec![
                entry(b"a"),
                pb::ImageFetch {
                    id: "cd".into(),
                    ..entry(b"b")
                },
            ],
            ..Default::default()
        };
        let done: VecDeque<String> = ["ab12".to_string()].into();
        let p = pending(&config, &done);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, "cd");
    }

    #[test]
    fn malformed_entries_are_refused_before_any_call() {
        assert!(validate(&entry(b"x"), 10).is_ok());
        let bad_id = pb::ImageFetch {
            id: "../x".into(),
            ..entry(b"x")
        };
        assert!(validate(&bad_id, 10).is_err());
        let bad_sha = pb::ImageFetch {
            sha256: "00".into(),
            ..entry(b"x")
        };
        assert!(validate(&bad_sha, 10).is_err());
        assert!(validate(&entry(b"0123456789ab"), 10).is_err());
    }

    #[tokio::test]
    async fn the_archive_must_match_the_size_and_digest_announced() {
        let dir = tempfile::tempdir().unwrap();
        let spool = || Spool::create(dir.path(), 1 << 20);
        let f = entry(b"hello world");
        let ok = receive(
            chunks(vec![b"hello ", b"world"]),
            &f,
            spool().await.unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(ok.path()).unwrap(), b"hello world");
        drop(ok);
        let altered = receive(
            chunks(vec![b"hello ", b"worlD"]),
            &f,
            spool().await.unwrap(),
        )
        .await;
        assert!(
            matches!(altered, Err(FetchError::Digest { .. })),
            "{altered:?}"
        );
        let short = receive(chunks(vec![b"hello"]), &f, spool().await.unwrap()).await;
        assert!(matches!(short, Err(FetchError::Size { .. })), "{short:?}");
        let long = receive(
            chunks(vec![b"hello world", b"!"]),
            &f,
            spool().await.unwrap(),
        )
        .await;
        assert!(matches!(long, Err(FetchError::Size { .. })), "{long:?}");
        // Every refused spool was removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
