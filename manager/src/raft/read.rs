//! Linearizable reads: the read index of Raft (§6.4 of Ongaro's thesis,
//! etcd's `ReadIndex`).
//!
//! A manager's store can be behind the cluster: a follower applies a write
//! a moment after the leader, a restarted manager holds what it had before
//! until a leader tells it more, and a leader cut off from the others does
//! not know it was replaced. [`RaftHandle::linearize`] makes a read that
//! follows it see every write committed before it started:
//!
//! ```text
//! leader:   confirm leadership (heartbeat round to a quorum) ─▶ read index R
//! follower: gRPC ReadIndex to the leader (which does the above) ─▶ R
//! both:     wait until this node has applied R, then read the local store
//! ```
//!
//! Concurrent reads share rounds ([`Rounds`]): a read waits for the next
//! round that *starts* after it arrived and takes that round's index, so
//! 64 clients cost one heartbeat round (or one `ReadIndex` call) at a time,
//! not 64.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use weft_proto::v1::RaftPayload;

use super::error::ReadError;
use super::handle::{RaftHandle, leader_view, pause_for_leader};
use crate::store::NodeId;

/// The body of a `ReadIndex` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadIndexRequest {}

/// The answer to `ReadIndex`: the leader's read index (`None` while its
/// log is empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// Apply at least this far before reading.
    pub index: Option<u64>,
}

/// Why one round found no read index. Every one but `Shutdown` is worth
/// another round (on a new leader, after a pause).
#[derive(Debug, Clone)]
pub(super) enum RoundError {
    /// The node asked is not the leader (any more).
    NotLeader,
    /// The leader could not confirm it leads, or could not be reached.
    Unreachable(String),
    /// This node's Raft stopped.
    Shutdown,
}

/// Rounds shared by concurrent reads: one on the leader (confirm
/// leadership), one on a follower (ask the leader).
#[derive(Default)]
pub(super) struct Rounds {
    leader: Coalesce,
    follower: Coalesce,
}

/// What a round found: the read index (`None` while the log is empty).
type RoundResult = Result<Option<u64>, RoundError>;

/// One kind of round, run by one caller at a time for everyone waiting.
#[derive(Default)]
struct Coalesce {
    /// Rounds started so far.
    started: AtomicU64,
    /// The last finished round: its number and result.
    last: tokio::sync::Mutex<(u64, Option<RoundResult>)>,
}

impl Coalesce {
    /// The result of a round that started after this call did: the last
    /// finished one if it qualifies, else a new one run by this caller.
    async fn run<F>(&self, round: F) -> RoundResult
    where
        F: Future<Output = RoundResult>,
    {
        // A round numbered above `seen` was started after this point.
        let seen = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if last.0 > seen
            && let Some(r) = &last.1
        {
            return r.clone();
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let r = round.await;
        *last = (number, Some(r.clone()));
        r
    }
}

impl RaftHandle {
    /// Waits until this node's store holds every write committed before the
    /// call, on the leader or a follower; then a read of the store is
    /// linearizable. Returns the index applied up to.
    ///
    /// While there is no leader it waits and retries like
    /// [`RaftHandle::propose`], up to [`super::RaftSettings::propose_timeout`],
    /// then fails with [`ReadError::NoLeader`]: a manager cut off from the
    /// majority serves no reads rather than stale ones.
    pub async fn linearize(&self) -> Result<Option<u64>, ReadError> {
        let deadline = Instant::now() + self.settings().propose_timeout;
        let mut metrics = self.raft().metrics();
        let mut last_error = None;
        loop {
            let (state, leader, addr) = leader_view(&mut metrics);
            if state == ServerState::Shutdown {
                return Err(ReadError::Shutdown);
            }
            let round = match (leader, addr) {
                (Some(l), _) if l == self.id() => {
                    Some(self.rounds().leader.run(self.leader_read_index()).await)
                }
                (Some(l), Some(node)) => Some(
                    self.rounds()
                        .follower
                        .run(self.ask_read_index(l, &node.addr, deadline))
                        .await,
                ),
                _ => None,
            };
            match round {
                Some(Ok(index)) => return self.wait_applied(index, deadline).await.map(|()| index),
                Some(Err(RoundError::Shutdown)) => return Err(ReadError::Shutdown),
                Some(Err(e)) => last_error = Some(e),
                None => {}
            }
            if !pause_for_leader(&mut metrics, deadline).await {
                break;
            }
        }
        if let Some(e) = last_error {
            tracing::debug!(error = ?e, "last read-index round before giving up");
        }
        let (reachable, total) = self.reachable_voters().await;
        Err(ReadError::NoLeader { reachable, total })
    }

    /// The leader's side: confirms leadership with a heartbeat round to a
    /// quorum and answers the index a read must see (the commit index, or
    /// the first entry of this leader's term if that is later). Shared by
    /// concurrent local reads and `ReadIndex` calls.
    pub(super) async fn leader_round(&self) -> Result<Option<u64>, RoundError> {
        self.rounds().leader.run(self.leader_read_index()).await
    }

    async fn leader_read_index(&self) -> Result<Option<u64>, RoundError> {
        let confirm = self.raft().get_read_log_id();
        match tokio::time::timeout(self.settings().propose_timeout, confirm).await {
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(RoundError::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(RoundError::Unreachable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(RoundError::Shutdown),
            Err(_) => Err(RoundError::Unreachable(
                "timed out confirming leadership with a quorum".into(),
            )),
        }
    }

    /// A follower's side: asks `leader` at `addr` for its read index. Given
    /// up at once when another leader is elected (a read is safe to ask
    /// again, unlike a write).
    async fn ask_read_index(
        &self,
        leader: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<Option<u64>, RoundError> {
        let mut client = self
            .clients()
            .get(addr)
            .map_err(|e| RoundError::Unreachable(e.to_string()))?;
        let json = serde_json::to_vec(&ReadIndexRequest {})
            .map_err(|e| RoundError::Unreachable(e.to_string()))?;
        let mut req = tonic::Request::new(RaftPayload { json });
        let remaining = deadline.saturating_duration_since(Instant::now());
        req.set_timeout(remaining.max(Duration::from_millis(100)));
        let metrics = self.raft().metrics();
        let answer = tokio::select! {
            answer = client.read_index(req) => answer,
            _ = super::handle::leader_replaced(metrics, leader) => return Err(RoundError::NotLeader),
        };
        match answer {
            Ok(resp) => serde_json::from_slice::<ReadIndexResponse>(&resp.into_inner().json)
                .map(|r| r.index)
                .map_err(|e| RoundError::Unreachable(format!("malformed ReadIndex answer: {e}"))),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(RoundError::NotLeader),
            Err(s) => Err(RoundError::Unreachable(s.to_string())),
        }
    }

    /// Waits until this node has applied `index`, up to `deadline`.
    async fn wait_applied(&self, index: Option<u64>, deadline: Instant) -> Result<(), ReadError> {
        if index.is_none() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .raft()
            .wait(Some(remaining.max(Duration::from_millis(1))))
            .applied_index_at_least(index, "read index")
            .await
        {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(ReadError::Shutdown),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ReadError::Behind {
                index: index.unwrap_or(0),
                applied: self.metrics().applied_index,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Callers that arrive while a round runs share the next one; a caller
    /// never takes a round that started before it arrived.
    #[tokio::test(flavor = "current_thread")]
    async fn rounds_are_shared_and_never_started_before_the_caller() {
        let c = Arc::new(Coalesce::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        // The first round blocks until released.
        let first = {
            let (c, runs, gate) = (c.clone(), runs.clone(), gate.clone());
            tokio::spawn(async move {
                c.run(async {
                    let n = runs.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                    gate.notified().await;
                    Ok(Some(n))
                })
                .await
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Ten callers arrive while round 1 runs: they must not take its
        // result, and they share one round between them.
        let mut late = Vec::new();
        for _ in 0..10 {
            let (c, runs) = (c.clone(), runs.clone());
            late.push(tokio::spawn(async move {
                c.run(async { Ok(Some(runs.fetch_add(1, Ordering::SeqCst) as u64 + 1)) })
                    .await
            }));
        }
        // On this one-thread runtime each yield lets every spawned caller
        // run up to the lock, where it queues behind round 1.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Some(1));
        for l in late {
            assert_eq!(l.await.unwrap().unwrap(), Some(2));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one round for all late callers"
        );
    }
}
