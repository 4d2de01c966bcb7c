//! Tests of the Raft layer: openraft's storage suite, the log store's
//! durability contract, a 3-node cluster over
//! real gRPC on 127.0.0.1, restart from disk, the forced recovery of a
//! survivor as the only voter, a write forwarded to a leader gone silent, and
//! linearizable reads on a restarted follower and a deposed leader.

mod cluster;
mod durability;
mod linearizable;
mod recover;
mod restarted_leader;
mod silent_leader;
mod suite;
