//! The Checkpoint reconciler: keeps the `checkpoints.lodger.dev` finalizer on every Checkpoint
//! (via `kube::runtime::finalizer`) and, when one is deleted (retention, or its job went),
//! removes its image directory from the operator's mount of the checkpoint volume. Never while a
//! pod is still restoring from it (a lazy restore reads pages from the volume after it starts).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, ResourceExt};
use lodger_api::{ANNOTATION_RESTORE_FROM, Checkpoint, FINALIZER_CHECKPOINT, LABEL_JOB};
use tracing::{info, instrument, warn};

use crate::desired::checkpoint_path;
use crate::machine::{PodState, pod_state};
use crate::metrics::{CategoryLabels, ControllerLabels};
use crate::reconcile::Context;

/// Errors of the Checkpoint reconciler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pod still restores from the checkpoint.
    #[error("checkpoint {checkpoint} is in use by pod {pod}: its files stay until that pod ends")]
    InUse {
        /// Checkpoint.
        checkpoint: String,
        /// The pod.
        pod: String,
    },
    /// The checkpoint's path would leave the volume.
    #[error("checkpoint path {0:?} is not a relative path inside the volume")]
    BadPath(String),
    /// Removing the files failed.
    #[error("failed to remove {path}")]
    Remove {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Listing pods failed.
    #[error("failed to list pods of job {job}")]
    List {
        /// Job.
        job: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper failed (adding/removing the finalizer, or one of the above).
    #[error("failed to run the checkpoint finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Stable category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InUse { .. } => "checkpoint_in_use",
            Error::BadPath(_) => "checkpoint_bad_path",
            Error::Remove { .. } => "checkpoint_remove",
            Error::List { .. } => "list",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
        }
    }
}

/// The checkpoint's directory under `root`: `status.path` if the agent set it, else
/// `<namespace>/<job>/<seq>`. Refuses absolute paths and `..`.
pub fn checkpoint_dir(root: &Path, ck: &Checkpoint) -> Result<PathBuf, Error> {
    let rel = ck
        .status
        .as_ref()
        .and_then(|s| s.path.clone())
        .unwrap_or_else(|| {
            checkpoint_path(
                &ck.namespace().unwrap_or_default(),
                &ck.spec.job,
                ck.spec.seq,
            )
        });
    let path = Path::new(&rel);
    if rel.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::BadPath(rel));
    }
    Ok(root.join(path))
}

/// Reconciles one Checkpoint.
#[instrument(skip(ck, ctx), fields(checkpoint = %ck.name_any(), ns = ck.namespace().unwrap_or_default()))]
pub async fn reconcile(ck: Arc<Checkpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .get_or_create(&ControllerLabels {
            controller: "checkpoint".into(),
        })
        .inc();
    let ns = ck.namespace().unwrap_or_default();
    let api: Api<Checkpoint> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER_CHECKPOINT, ck, |event| async {
        match event {
            Event::Apply(_) => Ok(Action::await_change()),
            Event::Cleanup(ck) => cleanup(&ck, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn cleanup(ck: &Checkpoint, ctx: &Context) -> Result<Action, Error> {
    let name = ck.name_any();
    let ns = ck.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}={}", ck.spec.job)))
        .await
        .map_err(|source| Error::List {
            job: ck.spec.job.clone(),
            source,
        })?;
    if let Some(p) = list.items.iter().find(|p| {
        p.annotations().get(ANNOTATION_RESTORE_FROM) == Some(&name)
            && !matches!(pod_state(Some(p)), PodState::Ended { .. })
    }) {
        return Err(Error::InUse {
            checkpoint: name,
            pod: p.name_any(),
        });
    }
    let dir = checkpoint_dir(&ctx.settings.checkpoint_mount, ck)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => info!(path = %dir.display(), "removed checkpoint files"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Remove { path: dir, source }),
    }
    Ok(Action::await_change())
}

/// Retry policy of the Checkpoint controller.
pub fn error_policy(_ck: Arc<Checkpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&CategoryLabels {
            category: error.category().into(),
        })
        .inc();
    warn!(error = %error, "checkpoint reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::CheckpointBuilder;

    /// Paths that would escape the volume are refused; if this breaks, a crafted status.path
    /// makes the operator delete arbitrary directories.
    #[test]
    fn checkpoint_dir_stays_inside_the_volume() {
        let root = Path::new("/vol");
        let ok = CheckpointBuilder::new("j", 3).build();
        assert_eq!(checkpoint_dir(root, &ok).unwrap(), Path::new("/vol/ns/j/3"));
        for bad in ["../etc", "/etc", "ns/../../x", ""] {
            let ck = CheckpointBuilder::new("j", 3).path(bad).build();
            assert!(checkpoint_dir(root, &ck).is_err(), "{bad}");
        }
    }
}
