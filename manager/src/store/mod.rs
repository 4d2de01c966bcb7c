//! The cluster's desired state and the only way to change it.
//!
//! `State` is the Raft state machine: every mutation is a [`Command`] and
//! [`State::apply`] is deterministic — no clocks (times come inside the
//! command, stamped by the proposer), no randomness (IDs and secrets are
//! generated before proposing), ordered maps only. Same log, same state, on
//! every manager.
//!
//! The store runs without Raft: tests and reconcilers use `State` directly.

mod types;

#[cfg(test)]
mod tests;

pub use types::*;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The replicated state machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Set once by [`Command::InitCluster`].
    pub cluster: Option<Cluster>,
    /// Current members.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Nodes removed from the cluster; their certificates are refused and
    /// their IDs never reused.
    pub removed: BTreeSet<NodeId>,
}

/// A change to the desired state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the cluster with its first node (a manager).
    InitCluster {
        /// Cluster identity, CA and settings.
        cluster: Cluster,
        /// The initialising node.
        node: Node,
    },
    /// Admits a node that presented a valid join token.
    AddNode {
        /// The new node, with its ID already chosen by the proposer.
        node: Node,
    },
    /// Removes a node for good.
    RemoveNode {
        /// Which node.
        id: NodeId,
    },
    /// Operator changes to availability and labels.
    UpdateNode {
        /// Which node.
        id: NodeId,
        /// New availability, if changed.
        availability: Option<Availability>,
        /// Labels to set.
        label_add: BTreeMap<String, String>,
        /// Labels to remove.
        label_rm: Vec<String>,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Promote or demote.
    SetRole {
        /// Which node.
        id: NodeId,
        /// Desired role.
        role: Role,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Liveness as observed by the leader's dispatcher.
    SetNodeState {
        /// Which node.
        id: NodeId,
        /// New state.
        state: NodeState,
        /// Why, for `node inspect`.
        message: String,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Addresses a node reported (at join, or when re-advertising).
    SetNodeAddrs {
        /// Which node.
        id: NodeId,
        /// Manager-port address.
        addr: String,
        /// Underlay address.
        data_path_addr: String,
    },
    /// A certificate was issued to a node.
    SetCertExpiry {
        /// Which node.
        id: NodeId,
        /// RFC 3339.
        expiry: String,
        /// The role the certificate grants.
        role: Role,
    },
    /// Replaces the join-token secret of one role.
    RotateToken {
        /// Whose token.
        role: Role,
        /// The new secret.
        secret: String,
    },
}

/// What applying a command produced.
pub type CommandResult = Result<Applied, StoreError>;

/// The successful outcome of [`State::apply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report.
    #[default]
    Done,
    /// The node as it stands after the command.
    Node(Box<Node>),
}

/// A command that was rejected at apply time. Rejection changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// `InitCluster` on an initialised store.
    #[error("this cluster is already initialised")]
    AlreadyInitialised,
    /// Any other command before `InitCluster`.
    #[error("the cluster is not initialised")]
    NotInitialised,
    /// Unknown node ID.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// ID already in use, or used before by a removed node.
    #[error("node ID {0} is already taken")]
    DuplicateNode(String),
    /// Demoting the only manager.
    #[error("node {0} is the last manager of the cluster and cannot be demoted or removed")]
    LastManager(String),
}

impl State {
    /// Applies one command. Deterministic; a rejected command changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        if let Command::InitCluster { cluster, node } = cmd {
            if self.cluster.is_some() {
                return Err(StoreError::AlreadyInitialised);
            }
            self.cluster = Some(cluster.clone());
            self.nodes.insert(node.id, node.clone());
            return Ok(Applied::Node(Box::new(node.clone())));
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Err(StoreError::NotInitialised);
        };
        match cmd {
            Command::InitCluster { .. } => unreachable!("handled above"),
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) || self.removed.contains(&node.id) {
                    return Err(StoreError::DuplicateNode(node.id.to_string()));
                }
                self.nodes.insert(node.id, node.clone());
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::RemoveNode { id } => {
                let node = self.node(*id)?;
                if node.role == Role::Manager && self.managers().count() == 1 {
                    return Err(StoreError::LastManager(id.to_string()));
                }
                self.nodes.remove(id);
                self.removed.insert(*id);
                Ok(Applied::Done)
            }
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                now_ms,
            } => {
                let node = self.node_mut(*id)?;
                if let Some(a) = availability {
                    node.availability = *a;
                }
                for k in label_rm {
                    node.labels.remove(k);
                }
                for (k, v) in label_add {
                    node.labels.insert(k.clone(), v.clone());
                }
                node.updated_at_ms = *now_ms;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetRole { id, role, now_ms } => {
                let managers = self.managers().count();
                let node = self.node(*id)?;
                if node.role == Role::Manager && *role == Role::Worker && managers == 1 {
                    return Err(StoreError::LastManager(id.to_string()));
                }
                let node = self.node_mut(*id)?;
                node.role = *role;
                node.updated_at_ms = *now_ms;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetNodeState {
                id,
                state,
                message,
                now_ms,
            } => {
                let node = self.node_mut(*id)?;
                node.state = *state;
                node.state_message = message.clone();
                node.updated_at_ms = *now_ms;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetNodeAddrs {
                id,
                addr,
                data_path_addr,
            } => {
                let node = self.node_mut(*id)?;
                node.addr = addr.clone();
                node.data_path_addr = data_path_addr.clone();
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetCertExpiry { id, expiry, role } => {
                let node = self.node_mut(*id)?;
                node.cert_expiry = expiry.clone();
                node.cert_role = *role;
                Ok(Applied::Done)
            }
            Command::RotateToken { role, secret } => {
                match role {
                    Role::Worker => cluster.worker_secret = secret.clone(),
                    Role::Manager => cluster.manager_secret = secret.clone(),
                }
                Ok(Applied::Done)
            }
        }
    }

    /// The node with this ID.
    pub fn node(&self, id: NodeId) -> Result<&Node, StoreError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| StoreError::NodeNotFound(id.to_string()))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, StoreError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| StoreError::NodeNotFound(id.to_string()))
    }

    /// Nodes whose desired role is manager.
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }

    /// Resolves what an operator typed — a full ID, a unique ID prefix or a
    /// hostname — to one node.
    pub fn resolve_node(&self, what: &str) -> Result<&Node, ResolveError> {
        if what.is_empty() {
            return Err(ResolveError::NotFound(what.to_string()));
        }
        if let Ok(id) = what.parse::<NodeId>()
            && let Some(n) = self.nodes.get(&id)
        {
            return Ok(n);
        }
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.id.to_string().starts_with(what))
            .collect();
        if by_prefix.len() == 1 {
            return Ok(by_prefix[0]);
        }
        let by_name: Vec<&Node> = self.nodes.values().filter(|n| n.hostname == what).collect();
        match (by_prefix.len(), by_name.len()) {
            (0, 0) => Err(ResolveError::NotFound(what.to_string())),
            (_, 1) if by_prefix.is_empty() => Ok(by_name[0]),
            _ => Err(ResolveError::Ambiguous(what.to_string())),
        }
    }
}

/// Why a name did not resolve to one node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// No match.
    #[error("no such node: {0}")]
    NotFound(String),
    /// Several matches.
    #[error("node name {0} is ambiguous: it matches several nodes; use more of the ID")]
    Ambiguous(String),
}
