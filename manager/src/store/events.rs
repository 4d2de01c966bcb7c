//! Store events: what each applied command changed, as `weft events` shows
//! it (Docker's `docker events` shape: a type, an action, the object's ID
//! and attributes such as its name).
//!
//! Every manager applies the same log, so every manager derives the same
//! events, numbered by the Raft index of their entry and stamped with the
//! entry's time: a client that lost its manager resumes on another from
//! the next index and neither misses nor repeats one. A manager keeps the
//! last [`EventLog::CAPACITY`] events in memory ([`EventLog`]); older ones,
//! and those of entries it received inside a snapshot, are gone, and a
//! client asking for them is told so.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{Command, State};

/// What kind of object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The cluster's settings, tokens and secrets.
    Cluster,
    /// A node.
    Node,
    /// A network.
    Network,
    /// A service.
    Service,
    /// A task.
    Task,
}

impl EventType {
    /// Every type, for filters.
    pub const ALL: [EventType; 5] = [
        EventType::Cluster,
        EventType::Node,
        EventType::Network,
        EventType::Service,
        EventType::Task,
    ];

    /// The word `weft events` prints and filters take.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Cluster => "cluster",
            EventType::Node => "node",
            EventType::Network => "network",
            EventType::Service => "service",
            EventType::Task => "task",
        }
    }
}

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventAction {
    /// It was made.
    Create,
    /// It changed.
    Update,
    /// It is gone.
    Remove,
    /// A task was attached to the network.
    Connect,
    /// A task was detached from the network.
    Disconnect,
}

impl EventAction {
    /// Every action, for filters.
    pub const ALL: [EventAction; 5] = [
        EventAction::Create,
        EventAction::Update,
        EventAction::Remove,
        EventAction::Connect,
        EventAction::Disconnect,
    ];

    /// The word `weft events` prints and filters take.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Create => "create",
            EventAction::Update => "update",
            EventAction::Remove => "remove",
            EventAction::Connect => "connect",
            EventAction::Disconnect => "disconnect",
        }
    }
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The Raft index of the entry that made it.
    pub index: u64,
    /// The entry's time (the leader's clock when it made the entry), unix
    /// ms; 0 for entries written before entries carried a time.
    pub time_ms: u64,
    /// What kind of object.
    pub kind: EventType,
    /// What happened.
    pub action: EventAction,
    /// The object's ID.
    pub id: String,
    /// `name` and what else says what changed (`state`, `node`, `service`…).
    pub attributes: BTreeMap<String, String>,
}

/// What must be read before a command applies to describe it after: the
/// names of objects it removes, the tasks a service removal takes along.
#[derive(Debug, Default)]
pub struct Before {
    name: String,
    /// The tasks a service removal takes along (ID, name).
    tasks: Vec<(String, String)>,
    /// A removed task's service and node names.
    service: String,
    node: String,
    /// A service's update state, for commands that may move it.
    update_state: &'static str,
}

/// Reads what [`after`] needs of the state before `cmd` applies.
pub fn before(state: &State, cmd: &Command) -> Before {
    match cmd {
        Command::RemoveNode { id } => Before {
            name: state
                .nodes
                .get(id)
                .map(|n| n.hostname.clone())
                .unwrap_or_default(),
            ..Before::default()
        },
        Command::RemoveNetwork { id } => Before {
            name: state
                .networks
                .get(id)
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            ..Before::default()
        },
        Command::RemoveTask { id } => {
            let t = state.tasks.get(id);
            let service = t
                .and_then(|t| t.service.as_ref())
                .and_then(|r| state.services.get(&r.service))
                .map(|s| s.spec.name.clone())
                .unwrap_or_default();
            let node = t
                .and_then(|t| state.nodes.get(&t.node))
                .map(|n| n.hostname.clone())
                .unwrap_or_default();
            Before {
                name: t.map(|t| t.name.clone()).unwrap_or_default(),
                service,
                node,
                ..Before::default()
            }
        }
        Command::RemoveService { id } => Before {
            name: state
                .services
                .get(id)
                .map(|s| s.spec.name.clone())
                .unwrap_or_default(),
            tasks: state
                .tasks
                .values()
                .filter(|t| t.service.as_ref().is_some_and(|r| &r.service == id))
                .map(|t| (t.id.clone(), t.name.clone()))
                .collect(),
            ..Before::default()
        },
        Command::UpdateService { id, .. }
        | Command::RollbackService { id, .. }
        | Command::CountUpdateFailure { service: id, .. }
        | Command::CompleteUpdate { service: id, .. } => Before {
            update_state: update_state(state, id),
            ..Before::default()
        },
        _ => Before::default(),
    }
}

/// A command on service `id`'s spec or update status: an update event,
/// with the update state's move when it moved (as Docker); the status
/// commands that move nothing make none.
fn service_update(state: &State, cmd: &Command, id: &str, was: &Before) -> Vec<Change> {
    let (old, new) = (was.update_state, update_state(state, id));
    let moved = old != new;
    if !moved && !matches!(cmd, Command::UpdateService { .. }) {
        return Vec::new();
    }
    let name = state
        .services
        .get(id)
        .map(|s| s.spec.name.clone())
        .unwrap_or_default();
    let mut attrs = vec![("name", name)];
    if moved {
        attrs.push(("updatestate.old", old.to_string()));
        attrs.push(("updatestate.new", new.to_string()));
    }
    vec![change(EventType::Service, EventAction::Update, id, &attrs)]
}

/// Service `id`'s update state in Docker's words; empty: none.
fn update_state(state: &State, id: &str) -> &'static str {
    state
        .services
        .get(id)
        .and_then(|s| s.update_status.as_ref())
        .map_or("", |st| st.state.as_str())
}

/// An event without its entry's index and time.
type Change = (EventType, EventAction, String, BTreeMap<String, String>);

fn change(
    kind: EventType,
    action: EventAction,
    id: impl ToString,
    attrs: &[(&str, String)],
) -> Change {
    let attributes = attrs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    (kind, action, id.to_string(), attributes)
}

/// The events of `cmd`, which applied successfully and left `state`;
/// `was` is what [`before`] read.
pub fn after(state: &State, cmd: &Command, was: Before) -> Vec<Change> {
    use EventAction::*;
    use EventType::*;
    let node_name = |id: &super::NodeId| {
        state
            .nodes
            .get(id)
            .map(|n| n.hostname.clone())
            .unwrap_or_default()
    };
    let node = |id: &super::NodeId, what: &str, value: String| {
        vec![change(
            Node,
            Update,
            id,
            &[("name", node_name(id)), (what, value)],
        )]
    };
    let net_name = |id: &String| {
        state
            .networks
            .get(id)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let task = |id: &String, action, extra: &[(&str, String)]| {
        let mut attrs = vec![];
        if let Some(t) = state.tasks.get(id) {
            attrs.push(("name", t.name.clone()));
            attrs.push(("node", node_name(&t.node)));
            if let Some(r) = &t.service {
                let svc = state.services.get(&r.service);
                attrs.push((
                    "service",
                    svc.map(|s| s.spec.name.clone()).unwrap_or_default(),
                ));
            }
        }
        attrs.extend_from_slice(extra);
        change(Task, action, id, &attrs)
    };
    match cmd {
        Command::InitCluster { cluster, node } => vec![
            change(Cluster, Create, &cluster.id, &[]),
            change(
                Node,
                Create,
                node.id,
                &[("name", node.hostname.clone()), ("role", "manager".into())],
            ),
        ],
        Command::AddNode { node } => vec![change(
            Node,
            Create,
            node.id,
            &[
                ("name", node.hostname.clone()),
                ("role", node.role.as_str().into()),
            ],
        )],
        Command::RemoveNode { id } => vec![change(Node, Remove, id, &[("name", was.name)])],
        Command::UpdateNode { id, .. } => node(id, "changed", "spec".into()),
        Command::SetRole { id, role, .. } => node(id, "role", role.as_str().into()),
        Command::SetNodeState { id, .. } => {
            let s = state.nodes.get(id).map(|n| n.state);
            node(
                id,
                "state",
                s.map(super::NodeState::as_str).unwrap_or_default().into(),
            )
        }
        Command::SetNodeAddrs { id, .. } => node(id, "changed", "addresses".into()),
        Command::SetNodeResources { id, .. } => node(id, "changed", "resources".into()),
        Command::SetCertExpiry { id, .. } => node(id, "changed", "certificate".into()),
        Command::SetNodeWgKey { id, .. } | Command::RotateNodeKey { id, .. } => {
            node(id, "changed", "wireguard-key".into())
        }
        Command::SetNodeBridge { node: id, .. } => node(id, "changed", "bridge".into()),
        Command::CreateNetwork { spec } => {
            let made = state.networks.values().find(|n| n.name == spec.name);
            vec![change(
                Network,
                Create,
                made.map(|n| n.id.clone()).unwrap_or_default(),
                &[
                    ("name", spec.name.clone()),
                    ("driver", made.map(|n| n.driver.clone()).unwrap_or_default()),
                ],
            )]
        }
        Command::RemoveNetwork { id } => vec![change(Network, Remove, id, &[("name", was.name)])],
        Command::CreateTask { id, .. } | Command::CreateServiceTask { id, .. } => {
            vec![task(id, Create, &[])]
        }
        Command::SetTaskPorts { task: id, .. } => {
            vec![task(id, Update, &[("changed", "ports".into())])]
        }
        Command::ConnectTask {
            task: id, network, ..
        } => vec![change(
            Network,
            Connect,
            network,
            &[("name", net_name(network)), ("task", id.clone())],
        )],
        Command::DisconnectTask { task: id, network } => vec![change(
            Network,
            Disconnect,
            network,
            &[("name", net_name(network)), ("task", id.clone())],
        )],
        Command::RemoveTask { id } => vec![change(
            Task,
            Remove,
            id,
            &[
                ("name", was.name),
                ("node", was.node),
                ("service", was.service),
            ],
        )],
        Command::SetTaskStatus { id, status, .. } => {
            vec![task(id, Update, &[("state", status.state.name().into())])]
        }
        Command::CreateService { id, spec, .. } => {
            vec![change(Service, Create, id, &[("name", spec.name.clone())])]
        }
        Command::UpdateService { id, .. }
        | Command::RollbackService { id, .. }
        | Command::CountUpdateFailure { service: id, .. }
        | Command::CompleteUpdate { service: id, .. } => service_update(state, cmd, id, &was),
        Command::RemoveService { id } => {
            let mut out = vec![change(Service, Remove, id, &[("name", was.name.clone())])];
            out.extend(was.tasks.into_iter().map(|(t, name)| {
                change(
                    Task,
                    Remove,
                    t,
                    &[("name", name), ("service", was.name.clone())],
                )
            }));
            out
        }
        Command::UpdateClusterSettings { .. } => cluster(state, "settings"),
        Command::RotateToken { role, .. } => cluster(state, &format!("{}-token", role.as_str())),
        Command::SetSecrets { .. } => cluster(state, "secrets"),
    }
}

fn cluster(state: &State, what: &str) -> Vec<Change> {
    let id = state
        .cluster
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    vec![change(
        EventType::Cluster,
        EventAction::Update,
        id,
        &[("changed", what.to_string())],
    )]
}

/// Why events cannot be read from where a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "events before index {kept_from} are no longer kept by this manager (it keeps the last \
     {capacity} in memory, from its start or the last snapshot it received)"
)]
pub struct Gap {
    /// The first index whose events are all kept.
    pub kept_from: u64,
    /// [`EventLog::CAPACITY`].
    pub capacity: usize,
}

/// The last events a manager applied, in index order.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Arc<Event>>,
    /// Every event of an entry at this index or after is kept (those after
    /// the last applied entry are yet to come).
    kept_from: u64,
}

impl EventLog {
    /// Events kept: at ~200 bytes each, a few MiB.
    pub const CAPACITY: usize = 20_000;

    /// An empty log whose events start after `applied` (what a snapshot or
    /// an earlier run already applied).
    pub fn after(applied: u64) -> Self {
        EventLog {
            events: VecDeque::new(),
            kept_from: applied + 1,
        }
    }

    /// Adds the events of one entry, dropping the oldest entries' events
    /// past [`Self::CAPACITY`].
    pub fn push_entry(&mut self, index: u64, time_ms: u64, changes: Vec<Change>) {
        for (kind, action, id, attributes) in changes {
            self.events.push_back(Arc::new(Event {
                index,
                time_ms,
                kind,
                action,
                id,
                attributes,
            }));
        }
        while self.events.len() > Self::CAPACITY {
            let Some(dropped) = self.events.pop_front() else {
                break;
            };
            // An entry's events go together.
            while self
                .events
                .front()
                .is_some_and(|e| e.index == dropped.index)
            {
                self.events.pop_front();
            }
            self.kept_from = dropped.index + 1;
        }
    }

    /// Forgets everything: the state was replaced by a snapshot up to
    /// `applied`.
    pub fn reset(&mut self, applied: u64) {
        *self = EventLog::after(applied);
    }

    /// The events of entries at `from` or after.
    pub fn since(&self, from: u64) -> Result<Vec<Arc<Event>>, Gap> {
        if from < self.kept_from {
            return Err(Gap {
                kept_from: self.kept_from,
                capacity: Self::CAPACITY,
            });
        }
        let start = self.events.partition_point(|e| e.index < from);
        Ok(self.events.range(start..).cloned().collect())
    }

    /// The index of the first kept event at `time_ms` or later, or of the
    /// entry after the last kept one when none is that recent.
    pub fn first_at(&self, time_ms: u64) -> u64 {
        self.events
            .iter()
            .find(|e| e.time_ms >= time_ms)
            .or(self.events.back())
            .map_or(self.kept_from, |e| {
                if e.time_ms >= time_ms {
                    e.index
                } else {
                    e.index + 1
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(n: usize) -> Vec<Change> {
        (0..n)
            .map(|i| change(EventType::Task, EventAction::Update, i, &[]))
            .collect()
    }

    #[test]
    fn the_log_keeps_whole_entries_and_says_what_it_lost() {
        let mut log = EventLog::after(10);
        assert_eq!(log.since(11).unwrap().len(), 0);
        assert_eq!(log.since(10).unwrap_err().kept_from, 11);
        log.push_entry(11, 1_000, changes(2));
        log.push_entry(12, 2_000, vec![]);
        log.push_entry(13, 3_000, changes(1));
        let all = log.since(11).unwrap();
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            [11, 11, 13]
        );
        assert_eq!(log.since(12).unwrap().len(), 1);
        assert_eq!(log.first_at(1_500), 13);
        assert_eq!(log.first_at(500), 11);
        assert_eq!(log.first_at(9_000), 14, "after the last one");

        // Past the capacity the oldest entries go whole.
        log.push_entry(14, 4_000, changes(EventLog::CAPACITY - 2));
        assert_eq!(log.since(11).unwrap_err().kept_from, 12);
        assert_eq!(log.since(12).unwrap().len(), EventLog::CAPACITY - 1);
        log.reset(100);
        assert_eq!(log.since(50).unwrap_err().kept_from, 101);
        assert!(log.since(101).unwrap().is_empty());
    }
}
