//! Cluster-wide image loads (`weft image load --all-nodes`): one archive,
//! loaded by every ready node.
//!
//! ```text
//!  CLI ──Images archive──▶ local daemon ──Control.LoadImage (stream)──▶ leader
//!                                                   spool <data>/image-spool/<id>.tar
//!                                                   (sha256, size cap), plan targets
//!  leader ──session: NodeConfig.image_fetches = [{id, sha256, size, tag}]──▶ each target
//!  target ──Dispatcher.FetchImage(id)──▶ leader streams the spool file
//!  target: check size + sha256, load into its containerd (the local-load path)
//!  target ──Dispatcher.ReportImageFetch(id, error | images)──▶ leader
//!  leader answers the CLI (one line per node), drops the entry and the spool
//! ```
//!
//! Design (issue #14, stage 10): the bytes never enter Raft or a config.
//! The leader holds them in a spool file under its data directory for the
//! length of the call only; configs carry the entry (an ID and a digest),
//! and the entry lives in this manager's memory, not in the store, because
//! it means nothing once the call that made it has ended (a new leader has
//! no spool, so a replicated entry would only point at nothing). The node
//! pulls the archive instead of the leader pushing it into the session
//! stream, so a slow node's load does not hold up its config updates, and
//! the fetch is a call the leader can authorize: only a node the entry
//! targets gets the bytes ([`Pushes::open`]), and only it may report on it.
//!
//! Bounds: the archive is capped like a local load ([`MAX_ARCHIVE_BYTES`])
//! in chunks of at most [`MAX_CHUNK_BYTES`]; one load runs at a time (a
//! second is refused RESOURCE_EXHAUSTED rather than queued: the caller
//! would hold a multi-gigabyte upload open while waiting); the call ends
//! after [`LOAD_TIMEOUT`] with every node that has not reported marked
//! failed; a node whose session ends meanwhile is marked failed at once;
//! the spool file is removed when the call ends, however it ends (the
//! [`Reservation`] guard). Nodes load one fetch at a time (the worker's
//! loop), so a node never runs two such loads together.
//!
//! Which nodes are asked is decided purely by [`plan`]: ready nodes with a
//! session on this manager; the others are reported at once, down ones as
//! down, the rest as not connected, never waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;
use weft_proto::v1 as pb;

use crate::store::{NodeId, NodeState, State};

/// The largest archive a cluster-wide load takes: the same cap as a node's
/// own `image load` (weft-worker's `import::DEFAULT_MAX_ARCHIVE`), so an
/// archive one node would take is not refused because it goes everywhere.
pub const MAX_ARCHIVE_BYTES: u64 = 8 << 30;

/// The most data one upload message may carry. Half a MiB: the manager
/// port takes Control messages of at most 1 MiB, framing included.
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// Bytes per message of a node's fetch.
pub const FETCH_CHUNK_BYTES: usize = 1 << 20;

/// How long the leader waits for every node to report.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The most images a node's report may list.
pub const MAX_REPORTED_IMAGES: usize = 64;

/// The spool directory, beside the Raft directory in the node's data dir.
pub const SPOOL_DIR_NAME: &str = "image-spool";

/// Why a node is not asked to load an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The store says it is down.
    Down,
    /// Never heard from since this leader took over.
    Unknown,
    /// Ready, but it has no session with this manager (it may be
    /// reconnecting).
    NoSession,
}

impl Skip {
    /// What the CLI prints for the node.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Down => "node is down: not loaded (load it there once it is back)",
            Skip::Unknown => "node has not reported since this leader took over: not loaded",
            Skip::NoSession => {
                "node has no session with the leader (is it reconnecting?): not loaded"
            }
        }
    }
}

/// Which nodes are asked to fetch, and why the others are not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get the fetch entry.
    pub fetch: Vec<NodeId>,
    /// Nodes that do not, with why.
    pub skip: Vec<(NodeId, Skip)>,
}

/// Decides who loads the archive: every node of the store that is ready
/// and has a session on this manager (drained nodes too: drain stops
/// tasks, and the image is wanted there once it is active again).
pub fn plan(state: &State, sessions: &BTreeSet<NodeId>) -> Plan {
    let mut p = Plan::default();
    for n in state.nodes.values() {
        match n.state {
            NodeState::Down => p.skip.push((n.id, Skip::Down)),
            NodeState::Unknown => p.skip.push((n.id, Skip::Unknown)),
            NodeState::Ready if !sessions.contains(&n.id) => p.skip.push((n.id, Skip::NoSession)),
            NodeState::Ready => p.fetch.push(n.id),
        }
    }
    p
}

/// A node's outcome: loaded images, or why not.
pub type Outcome = Result<Vec<pb::LoadedImage>, String>;

/// The load in progress.
struct Push {
    fetch: pb::ImageFetch,
    path: PathBuf,
    /// Targets; `None` until the node reports.
    results: BTreeMap<NodeId, Option<Outcome>>,
}

/// This manager's cluster-wide loads: at most one at a time.
pub struct Pushes {
    current: Mutex<Option<Push>>,
    /// Bumped on every change; sessions and the waiting call watch it.
    changed: watch::Sender<u64>,
}

impl Default for Pushes {
    fn default() -> Self {
        Pushes {
            current: Mutex::new(None),
            changed: watch::channel(0).0,
        }
    }
}

/// The right to run the one load; dropping it ends the load: the entry
/// leaves every config and the spool file is removed.
pub struct Reservation<'a> {
    pushes: &'a Pushes,
    path: Option<PathBuf>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.pushes.current.lock().expect("pushes") = None;
        self.pushes.bump();
        if let Some(p) = &self.path
            && let Err(e) = std::fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), "cannot remove an image spool file: {e}");
        }
    }
}

impl Reservation<'_> {
    /// Starts the load: the spool file at `path` (now owned by the
    /// reservation) goes to `targets`.
    pub fn start(&mut self, fetch: pb::ImageFetch, path: PathBuf, targets: &[NodeId]) {
        self.path = Some(path.clone());
        *self.pushes.current.lock().expect("pushes") = Some(Push {
            fetch,
            path,
            results: targets.iter().map(|t| (*t, None)).collect(),
        });
        self.pushes.bump();
    }

    /// Makes the spool file at `path` the reservation's to remove (before
    /// the load starts: an upload that fails half way).
    pub fn own(&mut self, path: PathBuf) {
        self.path = Some(path);
    }

    /// Waits until every target has reported, or `timeout`; then the
    /// outcome of each (those that did not report: failed).
    pub async fn wait(&self, timeout: Duration) -> BTreeMap<NodeId, Outcome> {
        let mut rx = self.pushes.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pending() == 0 {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let cur = self.pushes.current.lock().expect("pushes");
        let Some(p) = cur.as_ref() else {
            return BTreeMap::new();
        };
        p.results
            .iter()
            .map(|(n, r)| {
                let r = r.clone().unwrap_or_else(|| {
                    Err(format!(
                        "did not report within {} s: not known to be loaded",
                        timeout.as_secs()
                    ))
                });
                (*n, r)
            })
            .collect()
    }

    fn pending(&self) -> usize {
        let cur = self.pushes.current.lock().expect("pushes");
        cur.as_ref()
            .map_or(0, |p| p.results.values().filter(|r| r.is_none()).count())
    }
}

impl Pushes {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Takes the one slot; RESOURCE_EXHAUSTED while another load runs.
    pub fn reserve(&self) -> Result<Reservation<'_>, Status> {
        let mut cur = self.current.lock().expect("pushes");
        if cur.is_some() {
            return Err(Status::resource_exhausted(
                "another `image load --all-nodes` is running on this cluster; try again when it \
                 has finished",
            ));
        }
        // A placeholder with no targets holds the slot while uploading.
        *cur = Some(Push {
            fetch: pb::ImageFetch::default(),
            path: PathBuf::new(),
            results: BTreeMap::new(),
        });
        Ok(Reservation {
            pushes: self,
            path: None,
        })
    }

    /// Woken on every change (for the session streams).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The fetches `node` is to make now (in its config).
    pub fn fetches_for(&self, node: NodeId) -> Vec<pb::ImageFetch> {
        let cur = self.current.lock().expect("pushes");
        cur.iter()
            .filter(|p| matches!(p.results.get(&node), Some(None)))
            .map(|p| p.fetch.clone())
            .collect()
    }

    /// The spool file of fetch `id` and its size, if `node` may fetch it:
    /// NOT_FOUND for no such fetch (over, or never made), PERMISSION_DENIED
    /// when it does not target `node`, FAILED_PRECONDITION once `node` has
    /// reported on it.
    pub fn open(&self, node: NodeId, id: &str) -> Result<(PathBuf, u64), Status> {
        let cur = self.current.lock().expect("pushes");
        let p = Self::find(cur.as_ref(), id)?;
        match p.results.get(&node) {
            None => Err(Status::permission_denied(format!(
                "image fetch {id} is not for node {node}"
            ))),
            Some(Some(_)) => Err(Status::failed_precondition(format!(
                "node {node} has already reported on image fetch {id}"
            ))),
            Some(None) => Ok((p.path.clone(), p.fetch.size)),
        }
    }

    /// Records how fetch `id` went on `node` (the first report counts).
    pub fn report(&self, node: NodeId, id: &str, outcome: Outcome) -> Result<(), Status> {
        let mut cur = self.current.lock().expect("pushes");
        let p = Self::find_mut(cur.as_mut(), id)?;
        match p.results.get_mut(&node) {
            None => Err(Status::permission_denied(format!(
                "image fetch {id} is not for node {node}"
            ))),
            Some(Some(_)) => Ok(()),
            Some(slot @ None) => {
                *slot = Some(outcome);
                drop(cur);
                self.bump();
                Ok(())
            }
        }
    }

    /// `node`'s session ended: a fetch it has not reported on fails now
    /// rather than at the timeout.
    pub fn session_ended(&self, node: NodeId) {
        let mut cur = self.current.lock().expect("pushes");
        let changed = cur
            .as_mut()
            .and_then(|p| p.results.get_mut(&node))
            .is_some_and(|slot| {
                if slot.is_none() {
                    *slot = Some(Err(
                        "its session with the leader ended before it reported (node down or \
                         restarting?): not known to be loaded"
                            .into(),
                    ));
                    true
                } else {
                    false
                }
            });
        drop(cur);
        if changed {
            self.bump();
        }
    }

    fn find<'p>(p: Option<&'p Push>, id: &str) -> Result<&'p Push, Status> {
        p.filter(|p| !p.fetch.id.is_empty() && p.fetch.id == id)
            .ok_or_else(|| not_found(id))
    }

    fn find_mut<'p>(p: Option<&'p mut Push>, id: &str) -> Result<&'p mut Push, Status> {
        p.filter(|p| !p.fetch.id.is_empty() && p.fetch.id == id)
            .ok_or_else(|| not_found(id))
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!(
        "no image fetch {id:?} on this manager (it finished, timed out, or was never made)"
    ))
}

/// A node's report, bounded: the error cut, at most
/// [`MAX_REPORTED_IMAGES`] images with bounded names.
pub fn outcome_from_report(r: pb::ImageFetchReport) -> Outcome {
    if !r.error.is_empty() {
        return Err(crate::limits::cut_report(r.error));
    }
    Ok(r.images
        .into_iter()
        .take(MAX_REPORTED_IMAGES)
        .map(|i| pb::LoadedImage {
            name: crate::limits::cut_report(i.name),
            digest: crate::limits::cut_report(i.digest),
            id: crate::limits::cut_report(i.id),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Node;

    fn state() -> State {
        let mut s = State::default();
        for (id, st) in [
            (1, NodeState::Ready),
            (2, NodeState::Ready),
            (3, NodeState::Down),
            (4, NodeState::Unknown),
            (5, NodeState::Ready),
        ] {
            s.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    state: st,
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn ready_nodes_with_a_session_fetch_the_others_are_reported_at_once() {
        let sessions: BTreeSet<NodeId> = [NodeId(1), NodeId(2), NodeId(3)].into();
        let p = plan(&state(), &sessions);
        assert_eq!(p.fetch, vec![NodeId(1), NodeId(2)]);
        assert_eq!(
            p.skip,
            vec![
                (NodeId(3), Skip::Down),
                (NodeId(4), Skip::Unknown),
                (NodeId(5), Skip::NoSession),
            ]
        );
    }

    fn fetch() -> pb::ImageFetch {
        pb::ImageFetch {
            id: "f1".into(),
            sha256: "00".into(),
            size: 7,
            tag: String::new(),
        }
    }

    #[test]
    fn only_a_target_may_fetch_or_report_and_only_while_the_load_runs() {
        let pushes = Pushes::default();
        let mut r = pushes.reserve().unwrap();
        assert_eq!(
            pushes.reserve().err().unwrap().code(),
            tonic::Code::ResourceExhausted
        );
        // Uploading: nothing to fetch yet.
        assert_eq!(
            pushes.open(NodeId(1), "").unwrap_err().code(),
            tonic::Code::NotFound
        );
        r.start(
            fetch(),
            "/nonexistent/f1.tar".into(),
            &[NodeId(1), NodeId(2)],
        );
        assert_eq!(pushes.fetches_for(NodeId(1)), vec![fetch()]);
        assert!(pushes.fetches_for(NodeId(3)).is_empty());
        assert_eq!(pushes.open(NodeId(1), "f1").unwrap().1, 7);
        let denied = pushes.open(NodeId(3), "f1").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            pushes.open(NodeId(1), "f2").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            pushes
                .report(NodeId(3), "f1", Ok(vec![]))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        pushes.report(NodeId(1), "f1", Ok(vec![])).unwrap();
        // Reported: out of its config, no second fetch, a second report ignored.
        assert!(pushes.fetches_for(NodeId(1)).is_empty());
        assert_eq!(
            pushes.open(NodeId(1), "f1").unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        pushes.report(NodeId(1), "f1", Err("x".into())).unwrap();
        pushes.session_ended(NodeId(2));
        drop(r);
        assert!(pushes.fetches_for(NodeId(2)).is_empty());
        assert_eq!(
            pushes.open(NodeId(2), "f1").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert!(pushes.reserve().is_ok());
    }

    #[tokio::test]
    async fn the_wait_ends_when_all_reported_and_a_lost_session_fails_its_node() {
        let pushes = Pushes::default();
        let mut r = pushes.reserve().unwrap();
        r.start(
            fetch(),
            "/nonexistent/f1.tar".into(),
            &[NodeId(1), NodeId(2)],
        );
        pushes.report(NodeId(1), "f1", Ok(vec![])).unwrap();
        pushes.session_ended(NodeId(2));
        let out = r.wait(Duration::from_secs(60)).await;
        assert_eq!(out[&NodeId(1)], Ok(vec![]));
        assert!(out[&NodeId(2)].as_ref().unwrap_err().contains("session"));
    }

    #[tokio::test]
    async fn a_node_that_never_reports_fails_at_the_timeout() {
        let pushes = Pushes::default();
        let mut r = pushes.reserve().unwrap();
        r.start(fetch(), "/nonexistent/f1.tar".into(), &[NodeId(1)]);
        let out = r.wait(Duration::from_millis(50)).await;
        assert!(
            out[&NodeId(1)]
                .as_ref()
                .unwrap_err()
                .contains("did not report")
        );
    }

    #[test]
    fn dropping_the_reservation_removes_the_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f1.tar");
        std::fs::write(&path, b"x").unwrap();
        let pushes = Pushes::default();
        let mut r = pushes.reserve().unwrap();
        r.start(fetch(), path.clone(), &[NodeId(1)]);
        drop(r);
        assert!(!path.exists());
    }
}
