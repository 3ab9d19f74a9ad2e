//! The `criu` binary: finding it, its version, the kernel features it reports, and running it.
//!
//! Lodger never simulates CRIU: every checkpoint and restore is a real `criu` process. This module
//! only knows how to start one, bound its run time, and turn its exit status and log into an
//! error a person can read.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `make deps` (scripts/install-criu.sh) installs CRIU.
pub const DEFAULT_CRIU_PATH: &str = "/usr/local/sbin/criu";

/// What to tell a person whose machine lacks a usable CRIU.
pub const INSTALL_HINT: &str = "install CRIU 4.x with `make deps` (runs scripts/install-criu.sh, which builds it into /usr/local/sbin/criu)";

/// Oldest CRIU major version Lodger works with (3.x fails on the vDSO of kernels >= 6).
pub const MIN_CRIU_MAJOR: u32 = 4;

/// Errors of finding and running CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// The binary is not there (or not executable).
    #[error("failed to find CRIU at {path}: {source}; {INSTALL_HINT}")]
    NotFound {
        /// Path that was tried.
        path: PathBuf,
        /// The error of starting it.
        #[source]
        source: std::io::Error,
    },
    /// `criu --version` did not print a version.
    #[error("failed to read the version of CRIU at {path} (output: {output:?}); {INSTALL_HINT}")]
    Version {
        /// Path of the binary.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// The binary is older than [`MIN_CRIU_MAJOR`].
    #[error(
        "failed to use CRIU {found} at {path}: Lodger needs CRIU {MIN_CRIU_MAJOR}.x or newer; {INSTALL_HINT}"
    )]
    TooOld {
        /// Path of the binary.
        path: PathBuf,
        /// Version found.
        found: String,
    },
    /// Starting or waiting for a `criu` process failed.
    #[error("failed to run `criu {action}`: {source}")]
    Spawn {
        /// The CRIU action (dump, restore, ...).
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// CRIU exited unsuccessfully.
    #[error("failed to {action} with CRIU ({status}): {detail} (full log: {})", log.display())]
    Failed {
        /// What CRIU was asked to do, as a verb phrase ("dump the job").
        action: String,
        /// Its exit status.
        status: String,
        /// The error lines of its log.
        detail: String,
        /// Its log file.
        log: PathBuf,
    },
    /// CRIU did not finish in time and was killed.
    #[error("failed to {action} with CRIU within {timeout:?}: it was killed (log: {})", log.display())]
    Timeout {
        /// What CRIU was asked to do.
        action: String,
        /// The time limit.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
    },
}

impl CriuError {
    /// Stable category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            CriuError::NotFound { .. } | CriuError::Version { .. } | CriuError::TooOld { .. } => {
                "CriuMissing"
            }
            CriuError::Spawn { .. } => "CriuSpawn",
            CriuError::Failed { .. } => "CriuFailed",
            CriuError::Timeout { .. } => "CriuTimeout",
        }
    }

    /// True if CRIU's log says the image directory ran out of space.
    pub fn is_no_space(&self) -> bool {
        match self {
            CriuError::Failed { detail, log, .. } => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                detail.contains("No space left") || text.contains("No space left on device")
            }
            _ => false,
        }
    }
}

/// Kernel features CRIU reports through `criu check --feature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Soft-dirty memory tracking (`mem_dirty_track`): needed by PreCopy's `pre-dump --track-mem`.
    pub mem_dirty_track: bool,
    /// userfaultfd (`uffd`): needed by lazy pages (LazyRestore, PostCopy).
    pub uffd: bool,
    /// Non-cooperative userfaultfd (`uffd-noncoop`): lazy pages for jobs that fork or remap.
    pub uffd_noncoop: bool,
}

/// A located, version-checked CRIU binary.
#[derive(Debug)]
pub struct Criu {
    path: PathBuf,
    version: String,
    features: OnceLock<Features>,
}

impl Criu {
    /// Finds CRIU at `path` (a bare name is looked up in `PATH`) and checks it is 4.x or newer.
    pub fn locate(path: &Path) -> Result<Self, CriuError> {
        let resolved = resolve_in_path(path);
        let output = Command::new(&resolved)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CriuError::NotFound {
                path: resolved.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CriuError::Version {
                path: resolved.clone(),
                output: text.clone(),
            })?;
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < MIN_CRIU_MAJOR {
            return Err(CriuError::TooOld {
                path: resolved,
                found: version,
            });
        }
        Ok(Self {
            path: resolved,
            version,
            features: OnceLock::new(),
        })
    }

    /// Path of the binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Version string, e.g. `4.1.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Major version number.
    pub fn major(&self) -> u32 {
        major_of(&self.version)
    }

    /// Whether `criu check --feature <name>` succeeds on this kernel.
    pub fn check_feature(&self, name: &str) -> bool {
        Command::new(&self.path)
            .args(["check", "--feature", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The kernel features the strategies depend on (queried once, then cached).
    ///
    /// NB: each `criu check` takes about 40 ms here; the three run at once, and callers should
    /// ask only when a strategy needs them (StopAndCopy never does) or warm the cache early.
    pub fn features(&self) -> Features {
        *self.features.get_or_init(|| {
            let spawn = |name: &str| {
                Command::new(&self.path)
                    .args(["check", "--feature", name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            };
            let checks = ["mem_dirty_track", "uffd", "uffd-noncoop"].map(spawn);
            let [dirty, uffd, noncoop] = checks.map(|child| {
                child
                    .and_then(|mut c| c.wait())
                    .map(|s| s.success())
                    .unwrap_or(false)
            });
            Features {
                mem_dirty_track: dirty,
                uffd,
                uffd_noncoop: noncoop,
            }
        })
    }

    /// A `criu` command with stdin closed and stdout/stderr captured.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `criu <args>` to completion within `timeout`, killing it past that.
    pub(crate) fn run(
        &self,
        action: &str,
        args: Vec<OsString>,
        log: &Path,
        timeout: Option<Duration>,
    ) -> Result<(), CriuError> {
        tracing::debug!(?args, "running criu");
        let child = self
            .command()
            .args(&args)
            .spawn()
            .map_err(|source| CriuError::Spawn {
                action: action.to_owned(),
                source,
            })?;
        let status = wait_with_timeout(child, action, log, timeout)?;
        check_status(action, status, log)
    }
}

/// Waits for `child`, killing it (SIGKILL) if `timeout` passes first.
pub(crate) fn wait_with_timeout(
    mut child: Child,
    action: &str,
    log: &Path,
    timeout: Option<Duration>,
) -> Result<(ExitStatus, String), CriuError> {
    let spawn_err = |source| CriuError::Spawn {
        action: action.to_owned(),
        source,
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(err) = stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        let status = child.wait();
        let _ = done_tx.send(());
        status.map(|s| (s, text))
    });
    if let Some(limit) = timeout
        && done_rx.recv_timeout(limit).is_err()
    {
        // NB: CRIU gives no clean cancel; SIGKILL makes the kernel detach its ptrace seizes so
        // the job resumes (CRIU's own --timeout bounds the freeze phase separately).
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waiter.join();
        return Err(CriuError::Timeout {
            action: action.to_owned(),
            timeout: limit,
            log: log.to_path_buf(),
        });
    }
    match waiter.join() {
        Ok(result) => result.map_err(spawn_err),
        Err(_) => Err(spawn_err(std::io::Error::other(
            "criu waiter thread panicked",
        ))),
    }
}

/// Turns a finished CRIU's status into a result, quoting its log on failure.
pub(crate) fn check_status(
    action: &str,
    (status, output): (ExitStatus, String),
    log: &Path,
) -> Result<(), CriuError> {
    if status.success() {
        return Ok(());
    }
    let mut detail = log_errors(log);
    if detail.is_empty() {
        detail = output.trim().to_owned();
    }
    if detail.is_empty() {
        detail = "no error in its log".to_owned();
    }
    Err(CriuError::Failed {
        action: action.to_owned(),
        status: status.to_string(),
        detail,
        log: log.to_path_buf(),
    })
}

/// The `Error` lines of a CRIU log (at most five), joined; empty if none or no log.
pub fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error (") || l.starts_with("Error"))
        // NB: CRIU logs this as an error but carries on (containers often cap RLIMIT_NOFILE).
        .filter(|l| !l.contains("Can't setup RLIMIT_NOFILE"))
        .collect();
    let start = errors.len().saturating_sub(5);
    errors[start..]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn major_of(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn resolve_in_path(path: &Path) -> PathBuf {
    if path.components().count() > 1 || path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join(path);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine without CRIU must get an error that names what to install, else operators of a
    /// fresh node cannot tell why checkpoints fail.
    #[test]
    fn missing_criu_names_the_install_step() {
        let err = Criu::locate(Path::new("/nonexistent/criu")).unwrap_err();
        assert_eq!(err.category(), "CriuMissing");
        let text = err.to_string();
        assert!(text.contains("make deps"), "{text}");
        assert!(text.contains("install-criu.sh"), "{text}");
    }

    /// A binary that is not CRIU (prints no version) is refused as missing CRIU.
    #[test]
    fn non_criu_binary_is_refused() {
        let err = Criu::locate(Path::new("/bin/true")).unwrap_err();
        assert!(matches!(err, CriuError::Version { .. }), "{err}");
    }

    /// The installed CRIU is found and is 4.x; the feature probe reflects this kernel (no
    /// soft-dirty tracking, userfaultfd present) — if this breaks, strategy fallback is wrong.
    #[test]
    fn installed_criu_is_4x_and_features_are_probed() {
        let criu = Criu::locate(Path::new(DEFAULT_CRIU_PATH)).expect("make deps installs CRIU");
        assert!(criu.major() >= 4, "{}", criu.version());
        let features = criu.features();
        // The probe must agree with CRIU's own answer for each feature.
        assert_eq!(features.uffd, criu.check_feature("uffd"));
        assert_eq!(
            features.mem_dirty_track,
            criu.check_feature("mem_dirty_track")
        );
        assert!(!criu.check_feature("no-such-feature"));
    }

    /// The log excerpt in errors must carry CRIU's Error lines, not noise.
    #[test]
    fn log_errors_keeps_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.1) info\n(00.2) Error (criu/cr-dump.c:1): boom\n(00.3) more\n",
        )
        .unwrap();
        assert_eq!(log_errors(&log), "(00.2) Error (criu/cr-dump.c:1): boom");
        assert_eq!(log_errors(&dir.path().join("missing.log")), "");
    }
}
