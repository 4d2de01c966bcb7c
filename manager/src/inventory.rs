//! Every node's images as it last reported them (`weft image ls
//! --all-nodes`): observed state, kept in the leader's memory like the
//! WireGuard handshakes, never in Raft.
//!
//! ```text
//!  node: StatusReport.images ──▶ dispatcher (node ID = its certificate's)
//!        (in full per session,      │ [`check`]: bounded, bad entries dropped (logged)
//!         then only changes)        ▼
//!                              [`Inventories`] (per node: list, report time)
//!                                   │ [`rows`] + the store (hostnames, node state)
//!                                   │ + the sessions on this manager
//!                                   ▼
//!                    Control.ListClusterImages (a follower asks the leader)
//! ```
//!
//! A new leader knows no lists: each node sends its list in full with the
//! first report of its new session, so `image ls --all-nodes` shows the
//! nodes that have not yet done so as not reported (RELIABILITY.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use weft_proto::v1 as pb;

use crate::imagepush::Skip;
use crate::store::{NodeId, State};

/// Images kept per node; a list with more is cut (and flagged truncated).
pub const MAX_IMAGES_PER_NODE: usize = 10_000;

/// Length of an image's name or repository (a full reference).
pub const MAX_IMAGE_NAME_BYTES: usize = 1024;

/// Length of a tag (Docker's limit is 128 characters).
pub const MAX_TAG_BYTES: usize = 128;

/// Length of an ID or digest (`sha512:` and 128 hex digits, with room).
pub const MAX_DIGEST_BYTES: usize = 160;

/// Length of a creation time (RFC 3339).
pub const MAX_CREATED_BYTES: usize = 64;

/// One node's list, as accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInventory {
    /// Its images, within the bounds above.
    pub images: Vec<pb::ImageSummary>,
    /// Why the node cannot list its images (cut to the report bound).
    pub error: String,
    /// The node has more images than kept.
    pub truncated: bool,
}

/// What [`check`] left out of a list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Entries past [`MAX_IMAGES_PER_NODE`].
    pub too_many: usize,
    /// Entries with a field past its bound.
    pub oversized: usize,
}

/// Whether every field of `i` is within its bound.
fn within_bounds(i: &pb::ImageSummary) -> bool {
    i.name.len() <= MAX_IMAGE_NAME_BYTES
        && i.repository.len() <= MAX_IMAGE_NAME_BYTES
        && i.tag.len() <= MAX_TAG_BYTES
        && i.id.len() <= MAX_DIGEST_BYTES
        && i.digest.len() <= MAX_DIGEST_BYTES
        && i.created.len() <= MAX_CREATED_BYTES
}

/// A node's reported list, bounded: entries with an oversized field are
/// dropped (a cut name or digest would be a wrong one), entries past
/// [`MAX_IMAGES_PER_NODE`] too; either sets `truncated`.
pub fn check(inv: pb::ImageInventory) -> (NodeInventory, Dropped) {
    let mut dropped = Dropped {
        too_many: inv.images.len().saturating_sub(MAX_IMAGES_PER_NODE),
        ..Default::default()
    };
    let images: Vec<pb::ImageSummary> = inv
        .images
        .into_iter()
        .take(MAX_IMAGES_PER_NODE)
        .filter(|i| {
            let ok = within_bounds(i);
            dropped.oversized += usize::from(!ok);
            ok
        })
        .collect();
    let cut = dropped != Dropped::default();
    (
        NodeInventory {
            images,
            error: crate::limits::cut_report(inv.error),
            truncated: inv.truncated || cut,
        },
        dropped,
    )
}

/// What the leader knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// When its last status report arrived (unix ms).
    pub reported_ms: u64,
    /// Its list, once it sent one.
    pub inventory: Option<NodeInventory>,
}

/// The lists of every node that reported to this manager.
#[derive(Debug, Default)]
pub struct Inventories {
    nodes: Mutex<HashMap<NodeId, Seen>>,
}

impl Inventories {
    /// Records a status report of `node` (already authenticated as that
    /// node), with its list when the report carries one.
    pub fn reported(&self, node: NodeId, now_ms: u64, images: Option<pb::ImageInventory>) {
        let checked = images.map(|inv| {
            let (inv, dropped) = check(inv);
            if dropped != Dropped::default() {
                tracing::warn!(
                    %node,
                    kept = inv.images.len(),
                    past_max_images = dropped.too_many,
                    oversized = dropped.oversized,
                    max_images = MAX_IMAGES_PER_NODE,
                    "image list from a node cut to the bounds"
                );
            }
            inv
        });
        let mut nodes = self.nodes.lock().expect("inventories lock");
        let seen = nodes.entry(node).or_default();
        seen.reported_ms = now_ms;
        if let Some(inv) = checked {
            seen.inventory = Some(inv);
        }
    }

    /// A new session of `node` on this manager: the node sends its list in
    /// full with its first report, so the list of its last session, which
    /// may have changed since, is dropped.
    pub fn session_opened(&self, node: NodeId) {
        if let Some(s) = self.nodes.lock().expect("inventories lock").get_mut(&node) {
            s.inventory = None;
        }
    }

    /// What is known of the nodes `state` lists; forgets the others
    /// (removed nodes).
    pub fn snapshot(&self, state: &State) -> BTreeMap<NodeId, Seen> {
        let mut nodes = self.nodes.lock().expect("inventories lock");
        nodes.retain(|id, _| state.nodes.contains_key(id));
        nodes.iter().map(|(id, s)| (*id, s.clone())).collect()
    }
}

/// Why a node's row has no list.
fn unavailable(skip: Option<&Skip>, seen: Option<&Seen>) -> Option<&'static str> {
    match (skip, seen) {
        (Some(Skip::Down), _) => Some("node is down"),
        (Some(Skip::Unknown), _) => Some("node has not reported since this leader took over"),
        (Some(Skip::NoSession), _) => {
            Some("node has no session with the leader (is it reconnecting?)")
        }
        (
            None,
            Some(Seen {
                inventory: Some(_), ..
            }),
        ) => None,
        (None, _) => Some("node has not reported its images yet"),
    }
}

/// One row per node of `state`, sorted by hostname: its list when it is
/// ready, has a session on this manager (`sessions`) and sent one; else
/// why not, with the time of its last report.
pub fn rows(
    state: &State,
    sessions: &BTreeSet<NodeId>,
    seen: &BTreeMap<NodeId, Seen>,
) -> Vec<pb::NodeImages> {
    let skips: BTreeMap<NodeId, Skip> = crate::imagepush::plan(state, sessions)
        .skip
        .into_iter()
        .collect();
    let mut out: Vec<pb::NodeImages> = state
        .nodes
        .values()
        .map(|n| {
            let s = seen.get(&n.id);
            let mut row = pb::NodeImages {
                node_id: n.id.to_string(),
                hostname: n.hostname.clone(),
                reported_ms: s.map_or(0, |s| s.reported_ms),
                ..Default::default()
            };
            match unavailable(skips.get(&n.id), s) {
                Some(why) => row.unavailable = why.into(),
                None => {
                    let inv = s.and_then(|s| s.inventory.clone()).unwrap_or_default();
                    row.images = inv.images;
                    row.error = inv.error;
                    row.truncated = inv.truncated;
                }
            }
            row
        })
        .collect();
    out.sort_by(|a, b| (&a.hostname, &a.node_id).cmp(&(&b.hostname, &b.node_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, NodeState};

    fn image(name: &str) -> pb::ImageSummary {
        pb::ImageSummary {
            name: format!("docker.io/library/{name}:latest"),
            repository: name.into(),
            tag: "latest".into(),
            id: format!("sha256:{}", "a".repeat(64)),
            digest: format!("sha256:{}", "b".repeat(64)),
            created: "2024-01-01T00:00:00Z".into(),
            size: 42,
        }
    }

    fn inventory(images: Vec<pb::ImageSummary>) -> pb::ImageInventory {
        pb::ImageInventory {
            images,
            ..Default::default()
        }
    }

    #[test]
    fn lists_are_bounded_at_the_edge() {
        let (ok, d) = check(inventory(vec![image("a"), image("b")]));
        assert_eq!(d, Dropped::default());
        assert_eq!(ok.images.len(), 2);
        assert!(!ok.truncated);

        let many = (0..MAX_IMAGES_PER_NODE + 3)
            .map(|_| image("x"))
            .collect::<Vec<_>>();
        let (cut, d) = check(inventory(many));
        assert_eq!(cut.images.len(), MAX_IMAGES_PER_NODE);
        assert_eq!(d.too_many, 3);
        assert!(cut.truncated);

        let long_name = pb::ImageSummary {
            name: "n".repeat(MAX_IMAGE_NAME_BYTES + 1),
            ..image("a")
        };
        let long_tag = pb::ImageSummary {
            tag: "t".repeat(MAX_TAG_BYTES + 1),
            ..image("a")
        };
        let long_id = pb::ImageSummary {
            id: "i".repeat(MAX_DIGEST_BYTES + 1),
            ..image("a")
        };
        let (cut, d) = check(pb::ImageInventory {
            images: vec![long_name, image("b"), long_tag, long_id],
            error: "e".repeat(100_000),
            truncated: false,
        });
        assert_eq!(d.oversized, 3);
        assert_eq!(cut.images, vec![image("b")]);
        assert!(cut.truncated);
        assert_eq!(cut.error.len(), crate::limits::MAX_REPORT_MESSAGE_BYTES);
    }

    fn state() -> State {
        let mut s = State {
            cluster: Some(crate::store::tests::cluster()),
            ..Default::default()
        };
        for (id, host, st) in [
            (1, "m1", NodeState::Ready),
            (2, "w1", NodeState::Ready),
            (3, "w2", NodeState::Down),
            (4, "w3", NodeState::Ready),
            (5, "w4", NodeState::Unknown),
            (6, "w5", NodeState::Ready),
        ] {
            s.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    hostname: host.into(),
                    state: st,
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn each_node_has_its_list_or_says_why_not() {
        let s = state();
        let inv = Inventories::default();
        inv.reported(NodeId(1), 100, Some(inventory(vec![image("a")])));
        // w1: a list, then a report without one: the list stands; a new
        // session drops it until the node sends it again.
        inv.reported(NodeId(2), 50, Some(inventory(vec![image("old")])));
        inv.session_opened(NodeId(2));
        assert_eq!(inv.snapshot(&s)[&NodeId(2)].inventory, None);
        inv.reported(NodeId(2), 60, Some(inventory(vec![image("b")])));
        inv.reported(NodeId(2), 200, None);
        // w2 (down) sent one before it went down: not shown as current.
        inv.reported(NodeId(3), 10, Some(inventory(vec![image("c")])));
        // w3: no session. w5: a session, no list yet.
        inv.reported(NodeId(6), 300, None);
        // A node removed from the store is forgotten.
        inv.reported(NodeId(9), 300, Some(inventory(vec![image("z")])));
        let sessions: BTreeSet<NodeId> = [1, 2, 3, 6].into_iter().map(NodeId).collect();
        let seen = inv.snapshot(&s);
        assert!(!seen.contains_key(&NodeId(9)));
        let rows = rows(&s, &sessions, &seen);
        let got: Vec<(&str, &str, Vec<&str>, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.hostname.as_str(),
                    r.unavailable.as_str(),
                    r.images.iter().map(|i| i.repository.as_str()).collect(),
                    r.reported_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("m1", "", vec!["a"], 100),
                ("w1", "", vec!["b"], 200),
                ("w2", "node is down", vec![], 10),
                (
                    "w3",
                    "node has no session with the leader (is it reconnecting?)",
                    vec![],
                    0
                ),
                (
                    "w4",
                    "node has not reported since this leader took over",
                    vec![],
                    0
                ),
                ("w5", "node has not reported its images yet", vec![], 300),
            ]
        );
    }
}
