//! Store types to wire types and back. One conversion per type; validation
//! of what comes in from the wire happens here, once.

use weft_proto::v1 as pb;

use crate::store::ipam::{mac_for, mac_text};
use crate::store::{Availability, Node, NodeState, Role, State, Task};

impl From<Role> for pb::NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => pb::NodeRole::Worker,
            Role::Manager => pb::NodeRole::Manager,
        }
    }
}

impl From<Role> for weft_proto::identity::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => weft_proto::identity::Role::Worker,
            Role::Manager => weft_proto::identity::Role::Manager,
        }
    }
}

impl From<weft_proto::identity::Role> for Role {
    fn from(r: weft_proto::identity::Role) -> Self {
        match r {
            weft_proto::identity::Role::Worker => Role::Worker,
            weft_proto::identity::Role::Manager => Role::Manager,
        }
    }
}

/// Wire role to store role; `UNSPECIFIED` is an input error.
pub fn role_from_wire(r: i32) -> Option<Role> {
    match pb::NodeRole::try_from(r).ok()? {
        pb::NodeRole::Worker => Some(Role::Worker),
        pb::NodeRole::Manager => Some(Role::Manager),
        pb::NodeRole::Unspecified => None,
    }
}

impl From<Availability> for pb::Availability {
    fn from(a: Availability) -> Self {
        match a {
            Availability::Active => pb::Availability::Active,
            Availability::Pause => pb::Availability::Pause,
            Availability::Drain => pb::Availability::Drain,
        }
    }
}

/// Wire availability to store availability; `UNSPECIFIED` means "unchanged".
pub fn availability_from_wire(a: i32) -> Option<Availability> {
    match pb::Availability::try_from(a).ok()? {
        pb::Availability::Active => Some(Availability::Active),
        pb::Availability::Pause => Some(Availability::Pause),
        pb::Availability::Drain => Some(Availability::Drain),
        pb::Availability::Unspecified => None,
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unknown => pb::NodeState::Unknown,
            NodeState::Ready => pb::NodeState::Ready,
            NodeState::Down => pb::NodeState::Down,
        }
    }
}

/// A store node on the wire. `manager_status` and `raft_voter` come from
/// Raft, not the store, so the caller supplies them.
pub fn node_to_wire(n: &Node, manager_status: pb::ManagerStatus, raft_voter: bool) -> pb::Node {
    pb::Node {
        id: n.id.to_string(),
        hostname: n.hostname.clone(),
        role: pb::NodeRole::from(n.role) as i32,
        availability: pb::Availability::from(n.availability) as i32,
        labels: n.labels.clone().into_iter().collect(),
        state: pb::NodeState::from(n.state) as i32,
        state_message: n.state_message.clone(),
        addr: n.addr.clone(),
        data_path_addr: n.data_path_addr.clone(),
        manager_status: manager_status as i32,
        raft_voter,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        cert_expiry: n.cert_expiry.clone(),
        underlay_mtu: u64::from(n.underlay_mtu),
    }
}

/// A store task on the wire, with network names and node host name.
pub fn task_to_wire(state: &State, t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        name: t.name.clone(),
        node_id: t.node.to_string(),
        hostname: state
            .nodes
            .get(&t.node)
            .map(|n| n.hostname.clone())
            .unwrap_or_default(),
        command: t.spec.command.clone(),
        addresses: t
            .attachments
            .iter()
            .map(|a| pb::TaskAddress {
                network: state
                    .networks
                    .get(&a.network)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| a.network.clone()),
                ip: a.ip.to_string(),
                mac: mac_text(mac_for(a.ip)),
            })
            .collect(),
        desired_state: match t.desired {
            crate::store::DesiredTaskState::Running => "running".into(),
            crate::store::DesiredTaskState::Shutdown => "shutdown".into(),
        },
        state: t.status.state.clone(),
        message: t.status.message.clone(),
        has_exit_code: t.status.exit_code.is_some(),
        exit_code: t.status.exit_code.unwrap_or(0),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.status.updated_at_ms,
    }
}
