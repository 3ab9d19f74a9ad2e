//! The checkpoint and signal driver: the agent's hands on the Lodger pods of its node.
//!
//! Both halves talk to a pod's shim over its control socket (`lodger_shim::control`), found
//! through the kubelet's pods directory by the pod's UID ([`shim_socket`]): the agent never
//! execs into containers and needs no access to the container runtime.
//! - [`checkpoint`]: Checkpoints whose `spec.node` is this node → ask the shim to dump → status.
//! - [`signals`]: pending JobSignals of jobs running here → the current pod's shim → status.

pub mod checkpoint;
#[cfg(test)]
mod real_shim_tests;
pub mod signals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use lodger_api::{CONTROL_VOLUME, MANAGER_NODE_AGENT, SHIM_SOCKET};

use crate::metrics::Metrics;

/// Path of a pod's shim socket as the node sees it:
/// `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/lodger-control/shim.sock`.
pub fn shim_socket(kubelet_root: &Path, pod_uid: &str) -> PathBuf {
    kubelet_root
        .join("pods")
        .join(pod_uid)
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(CONTROL_VOLUME)
        .join(SHIM_SOCKET)
}

/// Everything the driver's reconcilers share.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// This node's name (downward API).
    pub node_name: String,
    /// The kubelet's root directory as mounted in the agent (`/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
    /// The checkpoint volume as mounted in the agent (to confirm images after a restart).
    pub checkpoint_root: PathBuf,
    /// Extra time granted to the shim past a checkpoint's deadline before the agent stops
    /// waiting (the shim itself abandons the dump at the deadline and resumes the job).
    pub deadline_grace: Duration,
    /// Timeout of signal and status requests to a shim.
    pub shim_timeout: Duration,
    /// Event recorder (reporting controller `lodger-node-agent`, instance = node).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// UIDs of Checkpoints this agent finished whose terminal status the watch has not shown
    /// yet: a reconcile of the stale (InProgress) object must not dump again.
    pub finished: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node_name", &self.node_name)
            .field("kubelet_root", &self.kubelet_root)
            .field("checkpoint_root", &self.checkpoint_root)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `node_name`.
    pub fn new(
        client: kube::Client,
        node_name: String,
        kubelet_root: PathBuf,
        checkpoint_root: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER_NODE_AGENT.to_string(),
                instance: Some(node_name.clone()),
            },
        );
        Self {
            client,
            node_name,
            kubelet_root,
            checkpoint_root,
            deadline_grace: Duration::from_secs(15),
            shim_timeout: Duration::from_secs(5),
            recorder,
            metrics,
            finished: std::sync::Mutex::default(),
        }
    }

    /// The socket of the pod with this UID.
    pub fn socket_of(&self, pod_uid: &str) -> PathBuf {
        shim_socket(&self.kubelet_root, pod_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, the agent looks for shims where the kubelet does not put the control
    /// emptyDir (docs/contracts.md "Node agent ↔ shim").
    #[test]
    fn socket_path_follows_the_kubelet_layout() {
        assert_eq!(
            shim_socket(Path::new("/var/lib/kubelet"), "0d5e-1"),
            PathBuf::from(
                "/var/lib/kubelet/pods/0d5e-1/volumes/kubernetes.io~empty-dir/lodger-control/shim.sock"
            )
        );
    }
}
