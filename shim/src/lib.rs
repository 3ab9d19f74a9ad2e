//! PID 1 of every Lodger workload container: runs the job in a nested PID namespace, checkpoints
//! and restores it with CRIU on request. The [`control`] module is the contract between the shim
//! and the node agent.
//!
//! - [`args`]: the command line (docs/contracts.md), flags with env fallbacks.
//! - [`job`]: the nested PID namespace, the tiny init, dropping privileges.
//! - [`supervisor`]: output copying, the control socket, signal forwarding, exit codes.
//! - [`sys`]: the only unsafe code (fork, sigaction).
//!
//! Exit codes: the job's own code (128 + signal number when a signal killed it); 0 after the job
//! migrated away; [`EXIT_SHIM_FAILED`] when the shim itself could not start or restore the job
//! (the reason is on stderr and in `/dev/termination-log` when that exists).

pub mod args;
pub mod control;
pub mod convert;
pub mod job;
pub mod supervisor;
pub mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lodger_engine::{Engine, EngineError, InheritFd, JobId, RestoreSpec};

pub use args::Args;

/// Exit code of the shim when it could not start or restore the job.
pub const EXIT_SHIM_FAILED: i32 = 125;

/// Errors that end the shim before the job runs.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Setting up the process (subreaper, control dir) failed.
    #[error("failed to {action}: {source}")]
    Setup {
        /// What.
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the job failed.
    #[error(transparent)]
    Job(#[from] job::JobError),
    /// Restoring the job failed; the checkpoint is untouched.
    #[error("failed to restore the job from {}: {source}", path.display())]
    Restore {
        /// The checkpoint path (relative to the volume).
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<EngineError>,
    },
    /// The supervisor failed.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
}

impl ShimError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            ShimError::Setup { .. } => "Setup",
            ShimError::Job(e) => e.category(),
            ShimError::Restore { source, .. } => source.category(),
            ShimError::Supervisor(e) => e.category(),
        }
    }
}

/// Runs the shim: starts (or restores) the job, supervises it, returns the exit code.
///
/// Must be called while the process is single-threaded (it forks the job's init).
pub fn run(args: Args) -> Result<i32, ShimError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| ShimError::Setup {
        action: "become a child subreaper".into(),
        source: e.into(),
    })?;
    std::fs::create_dir_all(&args.control_dir).map_err(|source| ShimError::Setup {
        action: format!("create control dir {}", args.control_dir.display()),
        source,
    })?;
    let job = JobId {
        namespace: args.job_namespace.clone(),
        name: args.job_name.clone(),
        uid: args.job_uid.clone(),
    };
    let engine = Engine::new(&args.criu, &args.checkpoint_root).map(Arc::new);
    let (supervised, engine) = match &args.restore {
        None => {
            if let Err(e) = &engine {
                tracing::warn!("checkpoints will fail: {e}");
            }
            let started = job::start(
                &args.command,
                job::Identity {
                    uid: args.uid,
                    gid: args.gid,
                },
            )?;
            let supervised = supervisor::Supervised {
                init: started.init,
                outputs: vec![
                    (1, started.stdout.read, started.stdout.id),
                    (2, started.stderr.read, started.stderr.id),
                ],
                restored_from: None,
                last_signal_seq: 0,
                pending_signals: Vec::new(),
                lazy_pages: None,
                page_check: None,
            };
            (supervised, engine.map_err(|e| e.to_string()))
        }
        Some(path) => {
            let restore_err = |source| ShimError::Restore {
                path: path.clone(),
                source: Box::new(source),
            };
            let engine = engine.map_err(restore_err)?;
            let supervised = restore(&engine, path, &job, &args).map_err(restore_err)?;
            (supervised, Ok(engine))
        }
    };
    let config = supervisor::Config {
        job,
        control_dir: args.control_dir.clone(),
        page_server_listen: std::net::SocketAddr::new(
            args.page_server_listen,
            args.page_server_port,
        ),
        page_server_advertise: args.page_server_advertise.clone(),
        exit_after_migration: args.exit_after_migration,
    };
    Ok(supervisor::run(config, engine, supervised)?)
}

/// Verifies the checkpoint's manifest and metadata images, hands CRIU fresh stdio pipes in place
/// of the dumped ones, restores. The page images are checked while CRIU restores (eager images:
/// the job resumes only if they match) or in the background (lazy images; see the engine docs).
fn restore(
    engine: &Engine,
    path: &std::path::Path,
    job: &JobId,
    args: &Args,
) -> Result<supervisor::Supervised, EngineError> {
    let verified = engine.verify_metadata(path, job)?;
    let mut pipes = Vec::new();
    let mut spec = RestoreSpec::new(args.control_dir.join("criu").join(format!(
        "restore-{}-{}",
        verified.manifest.seq,
        lodger_engine::unix_ms()
    )));
    spec.timeout = Some(Duration::from_secs(args.restore_timeout_seconds));
    for stdio in &verified.manifest.travel.stdio {
        let pipe = job::new_pipe().map_err(|e| EngineError::Io {
            action: "create a pipe for the restored job".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        spec.inherit.push(InheritFd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&pipe.write),
            key: stdio.pipe.clone(),
        });
        pipes.push((stdio.fd, pipe));
    }
    let restored = engine.restore(&verified, &spec)?;
    for note in &restored.notes {
        tracing::warn!("{note}");
    }
    tracing::info!(
        pid = restored.pid,
        restore_ms = restored.restore_ms,
        downtime_ms = ?restored.downtime_ms,
        "restored"
    );
    let outputs = pipes
        .into_iter()
        .map(|(fd, pipe)| {
            drop(pipe.write);
            (fd, pipe.read, pipe.id)
        })
        .collect();
    Ok(supervisor::Supervised {
        init: nix::unistd::Pid::from_raw(restored.pid),
        outputs,
        restored_from: Some(path.to_path_buf()),
        last_signal_seq: restored.manifest.travel.last_signal_seq,
        pending_signals: restored.manifest.travel.queued_signals.clone(),
        lazy_pages: restored.lazy_pages,
        page_check: restored.page_check,
    })
}
