//! Cluster CA: creating it, signing node CSRs under the manager's rules.
