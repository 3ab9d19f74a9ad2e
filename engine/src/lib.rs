//! CRIU driver: migration strategies, checkpoint image layout and manifest on the volume.
//!
//! The shim owns a job's process tree and calls this library to move it:
//!
//! ```no_run
//! # use std::path::Path;
//! # use lodger_engine::*;
//! # fn demo(pid: i32) -> Result<(), EngineError> {
//! let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), Path::new("/var/lib/lodger/checkpoints"))?;
//! let job = JobId { namespace: "lab".into(), name: "render".into(), uid: "1234".into() };
//! let spec = CheckpointSpec::new(pid, job.clone(), 1, Strategy::StopAndCopy, "/run/lodger/work/1");
//! let done = engine.checkpoint(&spec, &mut || TravelState::default())?;
//! println!("{} bytes, frozen {} ms", done.manifest.image_bytes, done.freeze_ms);
//! // ... on the target node:
//! let verified = engine.verify(&done.path, &job)?;
//! let restored = engine.restore(&verified, &RestoreSpec::new("/run/lodger/work/r1"))?;
//! println!("running again as pid {}", restored.pid);
//! # Ok(()) }
//! ```
//!
//! - [`criu`]: finding CRIU 4.x, probing kernel features, running it with a time limit.
//! - [`layout`]: `<root>/<namespace>/<job>/<seq>/`, 0700/0600, atomic writes.
//! - [`manifest`]: `manifest.json` (job, seq, strategy, CRIU version, kernel, sizes, BLAKE3 per
//!   16 MiB chunk of every file, timings, the shim state that travels) and its verification.
//! - [`digest`]: the chunked BLAKE3 checksums, computed on every core.
//! - [`seal`]: checksums and fsync of every image file and directory, then the manifest.
//! - [`stats`]: CRIU's `stats-dump` image, parsed by hand for freeze times.
//! - [`checkpoint`] and [`restore`]: the strategies (StopAndCopy, LazyRestore, PostCopy,
//!   PreCopy with fallback).

pub mod checkpoint;
pub mod criu;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod restore;
pub mod seal;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use checkpoint::{CheckpointResult, CheckpointSpec, PageServer};
pub use criu::{Criu, CriuError, DEFAULT_CRIU_PATH, Features, INSTALL_HINT};
pub use layout::{LayoutError, image_path};
pub use manifest::{
    JobId, MANIFEST_FILE, Manifest, ManifestError, QueuedSignal, StdioPipe, Strategy, TravelState,
};
pub use restore::{
    InheritFd, LazyPagesDaemon, PageCheck, RestoreResult, RestoreSpec, VerifiedCheckpoint,
};
pub use stats::{DumpStats, StatsError};

/// Default checkpoint volume mount (same as `lodger_api::CHECKPOINT_MOUNT_PATH`).
pub const DEFAULT_CHECKPOINT_ROOT: &str = "/var/lib/lodger/checkpoints";

/// Errors of the engine's operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// CRIU is missing, too old, failed or timed out.
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// The checkpoint volume or path is unusable.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A checkpoint cannot be restored from.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// CRIU's statistics are unreadable.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The image directory already holds a finished checkpoint.
    #[error("failed to checkpoint into {}: it already holds a finished checkpoint", path.display())]
    Exists {
        /// The image directory.
        path: PathBuf,
    },
    /// The volume ran out of space during the dump (the job was resumed by CRIU).
    #[error("failed to write the checkpoint to {}: the volume is full; the job keeps running ({source})", path.display())]
    VolumeFull {
        /// The image directory.
        path: PathBuf,
        /// CRIU's failure.
        #[source]
        source: CriuError,
    },
    /// Anything else that went wrong around CRIU (pipes, pid files, work directories).
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Stable category for metrics, events and the shim's error kinds.
    pub fn category(&self) -> &'static str {
        match self {
            EngineError::Criu(e) => e.category(),
            EngineError::Layout(e) => e.category(),
            EngineError::Manifest(e) => e.category(),
            EngineError::Stats(e) => e.category(),
            EngineError::Exists { .. } => "CheckpointExists",
            EngineError::VolumeFull { .. } => "Storage",
            EngineError::Io { .. } => "Io",
        }
    }

    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            action: action.into(),
            source,
        }
    }
}

/// The migration engine: a located CRIU and the checkpoint volume's root.
#[derive(Debug)]
pub struct Engine {
    criu: Criu,
    root: PathBuf,
}

impl Engine {
    /// An engine using the CRIU at `criu_path` and the volume mounted at `checkpoint_root`.
    /// Fails with an error naming `make deps` if CRIU 4.x is not there.
    pub fn new(criu_path: &Path, checkpoint_root: &Path) -> Result<Self, EngineError> {
        Ok(Self {
            criu: Criu::locate(criu_path)?,
            root: checkpoint_root.to_path_buf(),
        })
    }

    /// The CRIU in use.
    pub fn criu(&self) -> &Criu {
        &self.criu
    }

    /// The checkpoint volume's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The strategy that will really be used for `requested`, and why, if it differs.
    pub fn plan(&self, requested: Strategy, leave_running: bool) -> (Strategy, Option<String>) {
        if requested == Strategy::StopAndCopy {
            // Needs no kernel feature: skip the probe (three `criu check` runs).
            return (requested, None);
        }
        plan_strategy(requested, leave_running, self.criu.features())
    }
}

/// Pure strategy choice from the requested strategy and the kernel's features.
pub fn plan_strategy(
    requested: Strategy,
    leave_running: bool,
    features: Features,
) -> (Strategy, Option<String>) {
    let fallback = |reason: String| (Strategy::StopAndCopy, Some(reason));
    match requested {
        Strategy::StopAndCopy => (requested, None),
        Strategy::PreCopy if !features.mem_dirty_track => fallback(
            "PreCopy needs soft-dirty memory tracking (`criu check --feature mem_dirty_track` \
             fails: the kernel lacks CONFIG_MEM_SOFT_DIRTY); used StopAndCopy"
                .into(),
        ),
        Strategy::PreCopy => (requested, None),
        Strategy::LazyRestore | Strategy::PostCopy if !(features.uffd && features.uffd_noncoop) => {
            fallback(format!(
                "{requested} needs userfaultfd (`criu check --feature uffd` and `uffd-noncoop`); \
                 used StopAndCopy"
            ))
        }
        Strategy::PostCopy if leave_running => fallback(
            "PostCopy cannot leave the job running (its memory is served from the frozen \
             source); used StopAndCopy"
                .into(),
        ),
        Strategy::LazyRestore | Strategy::PostCopy => (requested, None),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Features = Features {
        mem_dirty_track: false,
        uffd: false,
        uffd_noncoop: false,
    };
    const ALL: Features = Features {
        mem_dirty_track: true,
        uffd: true,
        uffd_noncoop: true,
    };

    /// Each strategy runs only where the kernel supports it, falls back to StopAndCopy otherwise
    /// and says why; a wrong plan means a failed dump or a silent change of strategy.
    #[test]
    fn plan_falls_back_with_a_reason() {
        for s in [
            Strategy::StopAndCopy,
            Strategy::LazyRestore,
            Strategy::PostCopy,
            Strategy::PreCopy,
        ] {
            assert_eq!(plan_strategy(s, false, ALL), (s, None));
        }
        let (used, why) = plan_strategy(Strategy::PreCopy, false, NONE);
        assert_eq!(used, Strategy::StopAndCopy);
        assert!(why.unwrap().contains("CONFIG_MEM_SOFT_DIRTY"));
        let (used, why) = plan_strategy(Strategy::PostCopy, false, NONE);
        assert_eq!(used, Strategy::StopAndCopy);
        assert!(why.unwrap().contains("userfaultfd"));
        let (used, why) = plan_strategy(Strategy::PostCopy, true, ALL);
        assert_eq!(used, Strategy::StopAndCopy);
        assert!(why.unwrap().contains("leave the job running"));
        assert_eq!(
            plan_strategy(Strategy::StopAndCopy, true, NONE),
            (Strategy::StopAndCopy, None)
        );
    }

    /// On this machine PreCopy must take its documented fallback path (no soft-dirty tracking).
    #[test]
    fn precopy_falls_back_on_this_kernel() {
        let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), Path::new("/nonexistent")).unwrap();
        let (used, why) = engine.plan(Strategy::PreCopy, false);
        if engine.criu().features().mem_dirty_track {
            assert_eq!(used, Strategy::PreCopy);
        } else {
            assert_eq!(used, Strategy::StopAndCopy);
            assert!(why.is_some());
        }
    }
}
