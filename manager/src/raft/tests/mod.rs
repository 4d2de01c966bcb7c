//! Tests of the Raft layer: openraft's storage suite, the log store's
//! durability contract, a 3-node cluster over
//! real gRPC on 127.0.0.1, and restart from disk.

mod cluster;
mod durability;
mod suite;
