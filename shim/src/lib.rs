//! PID 1 of every Lodger workload container: runs the job in a nested PID namespace, checkpoints
//! and restores it with CRIU on request. The [`control`] module is the contract between the shim
//! and the node agent.

pub mod control;
