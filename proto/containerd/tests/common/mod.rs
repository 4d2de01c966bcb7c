//! Shared by this crate's integration tests: a private containerd per test.

#![allow(dead_code)]

pub mod containerd;
