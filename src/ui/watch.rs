//! Keeps the page's snapshot current: follows the cluster's event stream
//! and reads the state again after each burst of events, and every few
//! seconds regardless (handshake ages and heartbeats move without events).
//!
//! ```text
//!  Control.Events ──▶ follow ──(recent events, nudge)──▶ refresh ──▶ watch::Sender<Arc<str>>
//!                                                          ▲   │ 100 ms debounce, then
//!                                  every REFRESH_EVERY ────┘   └ ListNodes, ListNetworks +
//!                                                               GetNetwork -v, ListServices,
//!                                                               ListTasks → snapshot::build
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tonic::transport::Channel;
use weft_proto::v1 as pb;
use weft_proto::v1::control_client::ControlClient;

use super::snapshot::{self, EventView, Inputs, RECENT_EVENTS};
use crate::commands::rpc;

/// How long after an event the state is read (later events in that time
/// are taken in the same read).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the state is read without events.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// The wait before the event stream is opened again after it ended.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);
/// How far back the first events go.
const HISTORY: Duration = Duration::from_secs(15 * 60);

/// The serialized snapshot every page connection reads.
pub type Published = watch::Receiver<Arc<str>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the state once, then starts following it; the receiver always
/// holds the newest snapshot. A first read that fails is an error (the
/// daemon or manager is not there); later failures are shown on the page.
pub async fn start(ctl: ControlClient<Channel>) -> anyhow::Result<Published> {
    let events = Arc::new(Mutex::new(VecDeque::new()));
    let inputs = read(&mut ctl.clone()).await?;
    let first = snapshot::build(&inputs, &VecDeque::new(), now_ms());
    let (tx, rx) = watch::channel(serialize(&first));
    let nudge = Arc::new(Notify::new());
    tokio::spawn(follow(ctl.clone(), events.clone(), nudge.clone()));
    tokio::spawn(refresh(ctl, events, nudge, tx, first));
    Ok(rx)
}

fn serialize(s: &snapshot::Snapshot) -> Arc<str> {
    serde_json::to_string(s)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize the state: {e}\"}}"))
        .into()
}

/// One read of everything the page shows.
async fn read(ctl: &mut ControlClient<Channel>) -> anyhow::Result<Inputs> {
    let nodes = ctl
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .nodes;
    let listed = ctl
        .list_networks(pb::ListNetworksRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .networks;
    let mut networks = Vec::new();
    for n in listed {
        let d = ctl
            .get_network(pb::GetNetworkRequest {
                network: n.id.clone(),
                verbose: true,
            })
            .await;
        match d {
            Ok(d) => networks.push(d.into_inner()),
            // Removed between the list and this read.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(rpc(s)),
        }
    }
    let services = ctl
        .list_services(pb::ListServicesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .services;
    let tasks = ctl
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    Ok(Inputs {
        nodes,
        networks,
        services,
        tasks,
    })
}

/// Follows the event stream for good: keeps the recent events and nudges
/// [`refresh`] on each batch; resumes after the last event seen when the
/// stream ends (a manager restarted, the leader changed), or from the last
/// [`HISTORY`] when that cannot be (the manager no longer keeps them).
async fn follow(
    mut ctl: ControlClient<Channel>,
    events: Arc<Mutex<VecDeque<EventView>>>,
    nudge: Arc<Notify>,
) {
    // The index of the next event not yet kept (0: none seen).
    let mut next_index = 0;
    let mut resume = false;
    loop {
        let req = if resume {
            pb::EventsRequest {
                since_index: next_index,
                ..Default::default()
            }
        } else {
            pb::EventsRequest {
                since_ms: now_ms().saturating_sub(HISTORY.as_millis() as u64).max(1),
                ..Default::default()
            }
        };
        match ctl.events(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Ok(Some(batch)) = stream.message().await {
                    keep(&events, &batch.events, &mut next_index);
                    nudge.notify_one();
                }
                resume = next_index > 0;
            }
            Err(_) => resume = false,
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        // Whatever happened while the stream was down shows now.
        nudge.notify_one();
    }
}

/// Adds the events of `batch` not kept yet to `events` (the last
/// [`RECENT_EVENTS`]).
fn keep(events: &Mutex<VecDeque<EventView>>, batch: &[pb::StoreEvent], next_index: &mut u64) {
    let mut recent = events.lock().unwrap_or_else(|p| p.into_inner());
    for e in batch {
        if e.index < *next_index {
            continue;
        }
        *next_index = e.index + 1;
        recent.push_back(EventView::of(e));
        if recent.len() > RECENT_EVENTS {
            recent.pop_front();
        }
    }
}

/// Reads the state after each nudge (debounced) and every
/// [`REFRESH_EVERY`], and publishes it; a failed read publishes the last
/// good snapshot with the error. Ends when no page can read any more.
async fn refresh(
    mut ctl: ControlClient<Channel>,
    events: Arc<Mutex<VecDeque<EventView>>>,
    nudge: Arc<Notify>,
    tx: watch::Sender<Arc<str>>,
    mut last: snapshot::Snapshot,
) {
    loop {
        if tokio::time::timeout(REFRESH_EVERY, nudge.notified())
            .await
            .is_ok()
        {
            tokio::time::sleep(DEBOUNCE).await;
        }
        let recent = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let next = match read(&mut ctl).await {
            Ok(inputs) => snapshot::build(&inputs, &recent, now_ms()),
            Err(e) => snapshot::Snapshot {
                error: format!("{e:#}"),
                events: recent.into_iter().collect(),
                ..last.clone()
            },
        };
        if tx.send(serialize(&next)).is_err() {
            return;
        }
        last = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64) -> pb::StoreEvent {
        pb::StoreEvent {
            index,
            r#type: pb::EventType::Task as i32,
            action: pb::EventAction::Update as i32,
            ..Default::default()
        }
    }

    #[test]
    fn events_are_kept_once_and_only_the_recent_ones() {
        let events = Mutex::new(VecDeque::new());
        let mut next = 0;
        keep(&events, &[event(5), event(6)], &mut next);
        // A stream opened again by time repeats what was seen.
        keep(&events, &[event(5), event(6), event(7)], &mut next);
        let idx: Vec<u64> = events.lock().unwrap().iter().map(|e| e.index).collect();
        assert_eq!(idx, [5, 6, 7]);
        assert_eq!(next, 8);
        let many: Vec<_> = (8..200).map(event).collect();
        keep(&events, &many, &mut next);
        let kept = events.lock().unwrap();
        assert_eq!(kept.len(), RECENT_EVENTS);
        assert_eq!(kept.back().map(|e| e.index), Some(199));
    }
}
