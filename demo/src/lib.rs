//! Demo workload, one-machine migration demo and engine benchmark.
//!
//! - [`record`]: the workload's machine-parseable output lines (a contract with the engine's
//!   tests and the demo).
//! - [`continuity`]: checks that a job's output continues across a migration.
//! - [`scenario`]: the one-machine migration demo behind `make demo` (real shims, real CRIU).
//! - [`job`]: the workload as PID 1 of its own PID namespace, without a shim (benchmark, tests).
//! - [`bench`]: the engine benchmark behind `make bench`.
//! - [`pattern`]: the workload's deterministic memory and its checksum.

pub mod bench;
pub mod continuity;
pub mod job;
pub mod pattern;
pub mod record;
pub mod scenario;
