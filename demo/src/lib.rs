//! Demo workload, one-machine migration demo and engine benchmark.
//!
//! - [`record`]: the workload's machine-parseable output lines (a contract with the engine's
//!   tests and the demo).
//! - [`continuity`]: checks that a job's output continues across a migration.
//! - [`pattern`]: the workload's deterministic memory and its checksum.

pub mod continuity;
pub mod pattern;
pub mod record;
