//! Task runtime: running a task's process in its namespaces and supervising it.

pub mod shim;
