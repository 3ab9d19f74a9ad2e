//! Lodger's node agent: idle detection, node reporting, checkpoint and signal driver.
//!
//! One agent runs on every workstation (DaemonSet). It watches the owner's input and the
//! machine's non-Lodger load ([`idle`]), reports the node's state on its own Node object
//! ([`report`]), and drives checkpoints and signal delivery for the Lodger pods on its node
//! through their shims' control sockets ([`driver`]). [`agent::run`] wires them together;
//! `main.rs` only parses flags.

pub mod agent;
pub mod config;
pub mod driver;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod report;

#[cfg(test)]
mod testing;
