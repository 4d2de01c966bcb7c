//! This node's image inventory for `weft image ls --all-nodes`: what its
//! containerd holds, sent to the leader in the status report, but only
//! when the leader does not have it yet.
//!
//! ```text
//!   ImageStore ── poll (5 s: one containerd call; a full list only when the
//!       │          records changed, after a load/pull/rm, or every minute)
//!       ▼
//!   watch<Option<ImageInventory>> ──▶ agent session ──▶ StatusReport.images
//!                                        │
//!                                   [`Tracker`]: the inventory the leader
//!                                   acknowledged on this session; a new
//!                                   session starts with none (sent in full)
//! ```
//!
//! Bounded here ([`MAX_IMAGES`], [`MAX_BYTES`]: what is cut is flagged
//! `truncated`) and checked again by the manager, which trusts a node for
//! its own images only.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use weft_proto::v1 as pb;

use crate::image::store::Fingerprint;
use crate::image::{ImageStore, ImageSummary};

/// Images one node reports (the manager keeps as many).
pub const MAX_IMAGES: usize = 10_000;

/// Encoded size of one inventory: half the dispatcher's 4 MiB message
/// bound, so the rest of the report always fits beside it.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// How often the records are looked at.
const POLL: Duration = Duration::from_secs(5);

/// Every this many polls the images are listed in full even if the
/// records look the same (a size that changed as layers were unpacked).
const FULL_EVERY: u32 = 12;

impl From<ImageSummary> for pb::ImageSummary {
    fn from(i: ImageSummary) -> Self {
        pb::ImageSummary {
            name: i.name,
            repository: i.repository,
            tag: i.tag,
            id: i.id,
            digest: i.digest,
            created: i.created.unwrap_or_default(),
            size: i.size,
        }
    }
}

/// The inventory of `images` (or of the error listing them), within
/// [`MAX_IMAGES`] and [`MAX_BYTES`]: the images past either bound are left
/// out and `truncated` says so.
pub fn inventory(listed: Result<Vec<ImageSummary>, String>) -> pb::ImageInventory {
    let images = match listed {
        Ok(i) => i,
        Err(error) => {
            return pb::ImageInventory {
                error,
                ..Default::default()
            };
        }
    };
    let total = images.len();
    let mut out = pb::ImageInventory::default();
    let mut bytes = 0;
    for i in images.into_iter().take(MAX_IMAGES) {
        let i = pb::ImageSummary::from(i);
        // The field's tag and length prefix: a few bytes more than the
        // message itself.
        let len = i.encoded_len() + 8;
        if bytes + len > MAX_BYTES {
            break;
        }
        bytes += len;
        out.images.push(i);
    }
    out.truncated = out.images.len() < total;
    out
}

/// Which inventory the leader has, on the current session: decides what
/// a report carries.
#[derive(Debug, Default)]
pub struct Tracker {
    acked: Option<pb::ImageInventory>,
}

impl Tracker {
    /// A new session: the leader may know nothing, so the next report
    /// carries the inventory in full.
    pub fn new_session(&mut self) {
        self.acked = None;
    }

    /// What the next report carries: `current` when the leader has not
    /// acknowledged it on this session, else nothing (it is unchanged).
    pub fn pending(&self, current: Option<&pb::ImageInventory>) -> Option<pb::ImageInventory> {
        let current = current?;
        (self.acked.as_ref() != Some(current)).then(|| current.clone())
    }

    /// The leader acknowledged a report that carried `sent`.
    pub fn acknowledged(&mut self, sent: pb::ImageInventory) {
        self.acked = Some(sent);
    }
}

/// Keeps `tx` holding this node's inventory until `stop` flips: lists
/// the images when the records changed, when the store says it changed
/// them, and every [`FULL_EVERY`] polls. A node without containerd
/// publishes the error (once: it is unchanged after).
pub async fn run(
    store: Arc<ImageStore>,
    tx: watch::Sender<Option<pb::ImageInventory>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    let mut last: Option<Result<Fingerprint, String>> = None;
    let mut polls = 0u32;
    let mut forced = true;
    loop {
        let now = store.fingerprint().await.map_err(|e| e.to_string());
        if forced || polls.is_multiple_of(FULL_EVERY) || last.as_ref() != Some(&now) {
            let listed = match &now {
                Ok(_) => store.list().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = &listed {
                tracing::debug!(error = %e, "cannot list this node's images");
            }
            let inv = inventory(listed);
            if inv.truncated {
                tracing::warn!(
                    reported = inv.images.len(),
                    max_images = MAX_IMAGES,
                    max_bytes = MAX_BYTES,
                    "this node has more images than it reports to the managers"
                );
            }
            tx.send_if_modified(|cur| {
                let changed = cur.as_ref() != Some(&inv);
                *cur = Some(inv);
                changed
            });
        }
        last = Some(now);
        polls = polls.wrapping_add(1);
        tokio::select! {
            _ = stop.changed() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                forced = true;
                continue;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        forced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> ImageSummary {
        ImageSummary {
            name: format!("docker.io/library/i{n}:latest"),
            repository: format!("i{n}"),
            tag: "latest".into(),
            id: format!("sha256:{n:064x}"),
            digest: format!("sha256:{:064x}", n + 1),
            created: Some("2024-01-01T00:00:00Z".into()),
            size: n as u64,
        }
    }

    #[test]
    fn only_what_the_leader_has_not_acknowledged_is_sent() {
        let mut t = Tracker::default();
        let a = inventory(Ok(vec![image(1)]));
        let b = inventory(Ok(vec![image(1), image(2)]));
        // Nothing listed yet: nothing to send.
        assert_eq!(t.pending(None), None);
        // First report of the session: in full.
        assert_eq!(t.pending(Some(&a)), Some(a.clone()));
        // Not acknowledged (the call failed): sent again.
        assert_eq!(t.pending(Some(&a)), Some(a.clone()));
        t.acknowledged(a.clone());
        // Unchanged: the 5 s reports carry nothing.
        assert_eq!(t.pending(Some(&a)), None);
        assert_eq!(t.pending(Some(&a)), None);
        // Changed: sent once acknowledged.
        assert_eq!(t.pending(Some(&b)), Some(b.clone()));
        t.acknowledged(b.clone());
        assert_eq!(t.pending(Some(&b)), None);
        // A new session (another leader, a reconnect): in full again.
        t.new_session();
        assert_eq!(t.pending(Some(&b)), Some(b.clone()));
        // Back to the old list, with an error in between.
        t.acknowledged(b);
        let e = inventory(Err("containerd is not running".into()));
        assert_eq!(e.error, "containerd is not running");
        assert!(e.images.is_empty());
        assert_eq!(t.pending(Some(&e)), Some(e.clone()));
        t.acknowledged(e.clone());
        assert_eq!(t.pending(Some(&a)), Some(a));
    }

    #[test]
    fn inventories_are_bounded_and_say_when_cut() {
        let small = inventory(Ok((0..3).map(image).collect()));
        assert_eq!(small.images.len(), 3);
        assert!(!small.truncated);
        assert_eq!(small.images[2].id, format!("sha256:{:064x}", 2));
        // Small records: the count bound cuts first.
        let compact = |n: usize| ImageSummary {
            name: format!("i{n}"),
            repository: String::new(),
            tag: String::new(),
            digest: String::new(),
            created: None,
            ..image(n)
        };
        let many = inventory(Ok((0..MAX_IMAGES + 5).map(compact).collect()));
        assert_eq!(many.images.len(), MAX_IMAGES);
        assert!(many.truncated);
        assert!(many.encoded_len() <= MAX_BYTES);
        // Long names: the byte bound cuts first.
        let long: Vec<ImageSummary> = (0..2000)
            .map(|n| ImageSummary {
                name: format!("{}{n}", "r".repeat(2000)),
                ..image(n)
            })
            .collect();
        let cut = inventory(Ok(long));
        assert!(cut.truncated);
        assert!(cut.images.len() < 2000);
        assert!(cut.encoded_len() <= MAX_BYTES, "{}", cut.encoded_len());
    }
}
