//! The restore side of a migration: verify the manifest, then bring the tree back with CRIU.
//!
//! - StopAndCopy / PreCopy images: `criu restore` reads everything eagerly.
//! - LazyRestore: `criu lazy-pages` serves pages from the images on the volume (userfaultfd);
//!   the job resumes before its memory is back (Sprite's demand paging from the file server).
//! - PostCopy: `criu lazy-pages --page-server --address --port` fetches pages from the source.
//!
//! The restore runs `--restore-detached` with `--pidfile`: once CRIU exits, the restored root
//! (the job's init) is reparented to the nearest child subreaper, which must be the caller (the
//! shim sets `PR_SET_CHILD_SUBREAPER`), so the caller can `waitpid` it. Verification only reads;
//! CRIU's logs and sockets go to a private work directory, so the image directory is never
//! changed by a restore.
//!
//! Verification overlaps the restore when the checkpoint came from [`Engine::verify_metadata`]
//! (manifest, identity, versions, sizes and the small metadata images checked; page images not
//! yet hashed):
//!
//! - Eager images (StopAndCopy, PreCopy, LazyRestore without userfaultfd): `criu restore
//!   --leave-stopped` runs while the page images are hashed on other threads. The restored tree
//!   stays stopped (state `T`) until both are done; it gets SIGCONT only if every digest
//!   matched, else it is SIGKILLed and the restore fails with the same "corrupt" error as a full
//!   verification. The job never runs on unverified pages.
//! - LazyRestore and PostCopy: their point is to run before the memory is back, so the pages
//!   are checked by size only before the job resumes, and hashed in the background afterwards
//!   ([`RestoreResult::page_check`]); a mismatch is reported then, when the job may already
//!   have run on those pages.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use std::thread::JoinHandle;

use nix::sys::signal::Signal;

use crate::checkpoint::{
    Ready, parse_mountinfo, raise_pipe_max_size, restore_mount_map, signal_tree, status_pipe,
    wait_ready,
};
use crate::criu::{self, CriuError};
use crate::manifest::{JobId, Manifest, ManifestError, Strategy};
use crate::{Engine, EngineError, layout, unix_ms};

/// A checkpoint whose manifest was verified (job, format, CRIU version, every checksum).
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// Absolute image directory.
    pub dir: PathBuf,
    /// Image directory relative to the volume root.
    pub path: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    /// Whether the page images' checksums were checked too ([`Engine::verify`]); if not
    /// ([`Engine::verify_metadata`]), [`Engine::restore`] checks them while CRIU runs.
    pub pages_verified: bool,
}

/// A file descriptor of the caller that CRIU should use in place of a dumped resource.
#[derive(Debug, Clone)]
pub struct InheritFd {
    /// The fd in the calling process; it must not be close-on-exec.
    pub fd: RawFd,
    /// CRIU's name of the dumped resource, e.g. `pipe:[1234]`.
    pub key: String,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// A private writable directory for CRIU's logs, pid file and lazy-pages socket.
    pub work_dir: PathBuf,
    /// Descriptors handed to the restored tree (`--inherit-fd`).
    pub inherit: Vec<InheritFd>,
    /// PostCopy: `host:port` of the source's page server, overriding the manifest's.
    pub page_server: Option<String>,
    /// Time limit of CRIU's restore.
    pub timeout: Option<Duration>,
    /// Extra CRIU restore options.
    pub extra_args: Vec<String>,
    /// Test hook: how long the page check waits before it starts hashing (`None` in
    /// production), so a test can observe the restored tree held stopped meanwhile.
    pub page_check_delay: Option<Duration>,
}

impl RestoreSpec {
    /// A spec with nothing inherited, no time limit and no extra options.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            inherit: Vec::new(),
            page_server: None,
            timeout: None,
            extra_args: Vec::new(),
            page_check_delay: None,
        }
    }
}

/// A restored job.
#[derive(Debug)]
pub struct RestoreResult {
    /// PID (in the caller's PID namespace) of the restored root (the job's init).
    pub pid: i32,
    /// The manifest restored from.
    pub manifest: Manifest,
    /// Milliseconds CRIU's restore took.
    pub restore_ms: u64,
    /// Unix ms at which the job was running again.
    pub resumed_at_unix_ms: u64,
    /// Milliseconds between the job stopping on the source and resuming here (None if it was
    /// left running; meaningful when the nodes' clocks agree).
    pub downtime_ms: Option<u64>,
    /// Lazy strategies: the daemon still paging memory in.
    pub lazy_pages: Option<LazyPagesDaemon>,
    /// Lazy strategies restored from [`Engine::verify_metadata`]: the page images' checksums,
    /// still being computed while the job runs. Wait for it and report a mismatch loudly.
    pub page_check: Option<PageCheck>,
    /// Notes for people (fallbacks, sysctls).
    pub notes: Vec<String>,
}

/// A running `criu lazy-pages`, exiting once every page is in.
#[derive(Debug)]
pub struct LazyPagesDaemon {
    child: Child,
    log: PathBuf,
}

impl LazyPagesDaemon {
    /// Waits until every page has been transferred.
    pub fn wait(mut self) -> Result<(), CriuError> {
        let status = self.child.wait().map_err(|source| CriuError::Spawn {
            action: "lazy-pages".into(),
            source,
        })?;
        criu::check_status(
            "page the job's memory in",
            (status, String::new()),
            &self.log,
        )
    }

    fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page images' checksums, computed on a background thread.
#[derive(Debug)]
pub struct PageCheck {
    handle: JoinHandle<Result<(), ManifestError>>,
}

impl PageCheck {
    fn spawn(manifest: Manifest, dir: PathBuf, delay: Option<Duration>) -> Self {
        let handle = std::thread::spawn(move || {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            manifest.verify_pages(&dir)
        });
        Self { handle }
    }

    /// Whether the check has finished ([`PageCheck::wait`] then returns at once).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the check: `Ok` if every page image matched its checksums.
    pub fn wait(self) -> Result<(), ManifestError> {
        self.handle.join().unwrap_or_else(|_| {
            Err(ManifestError::Partial {
                name: PathBuf::from("pages-*.img"),
                reason: "the page check thread panicked".into(),
            })
        })
    }
}

impl Engine {
    /// Fully verifies the checkpoint at `path` (relative to the volume root) for `job`, every
    /// page image's checksums included. Only reads.
    pub fn verify(&self, path: &Path, job: &JobId) -> Result<VerifiedCheckpoint, EngineError> {
        let dir = layout::resolve(&self.root, path)?;
        let manifest = Manifest::verify(&dir, job, self.criu.version())?;
        Ok(VerifiedCheckpoint {
            dir,
            path: path.to_path_buf(),
            manifest,
            pages_verified: true,
        })
    }

    /// Verifies everything of the checkpoint at `path` but the page images' checksums
    /// (manifest, job, CRIU version, every file's size, the metadata images' checksums);
    /// [`Engine::restore`] then checks the pages while CRIU restores (see the module docs).
    /// Only reads.
    pub fn verify_metadata(
        &self,
        path: &Path,
        job: &JobId,
    ) -> Result<VerifiedCheckpoint, EngineError> {
        let dir = layout::resolve(&self.root, path)?;
        let manifest = Manifest::verify_metadata(&dir, job, self.criu.version())?;
        Ok(VerifiedCheckpoint {
            dir,
            path: path.to_path_buf(),
            manifest,
            pages_verified: false,
        })
    }

    /// Restores a verified checkpoint. The caller must be a child subreaper (or PID 1) to wait
    /// for the returned pid.
    pub fn restore(
        &self,
        ckpt: &VerifiedCheckpoint,
        spec: &RestoreSpec,
    ) -> Result<RestoreResult, EngineError> {
        let started = Instant::now();
        std::fs::create_dir_all(&spec.work_dir).map_err(|e| {
            EngineError::io(format!("create work dir {}", spec.work_dir.display()), e)
        })?;
        let pidfile = spec.work_dir.join("restore.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut notes = Vec::new();
        let manifest = &ckpt.manifest;
        // NB: only LazyRestore asks for the kernel's features (a probe costs ~40 ms of downtime).
        let lazy_possible = || {
            let features = self.criu.features();
            features.uffd && features.uffd_noncoop
        };
        let lazy = match manifest.strategy {
            Strategy::LazyRestore if lazy_possible() => true,
            Strategy::LazyRestore => {
                notes
                    .push("userfaultfd is missing here: restored eagerly instead of lazily".into());
                false
            }
            // PostCopy images hold no memory: lazy-pages is the only way to get it.
            Strategy::PostCopy => true,
            Strategy::StopAndCopy | Strategy::PreCopy => false,
        };
        let mut daemon = None;
        if lazy {
            let page_server = match manifest.strategy {
                Strategy::PostCopy => {
                    if let Some(note) = raise_pipe_max_size() {
                        notes.push(note);
                    }
                    let addr = spec
                        .page_server
                        .clone()
                        .or_else(|| manifest.page_server.clone())
                        .ok_or_else(|| {
                            EngineError::io(
                                "restore a PostCopy checkpoint",
                                std::io::Error::other("no page server address in the manifest"),
                            )
                        })?;
                    Some(addr)
                }
                _ => None,
            };
            daemon = Some(self.start_lazy_pages(ckpt, spec, page_server.as_deref(), started)?);
        }
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "-D".into(),
            ckpt.dir.clone().into(),
            "-W".into(),
            spec.work_dir.clone().into(),
            "-o".into(),
            "restore.log".into(),
            "-v4".into(),
            "--manage-cgroups=ignore".into(),
            // The job's mount namespace is rebuilt on top of this root (CRIU needs it named when
            // a mount namespace was dumped).
            "--root".into(),
            "/".into(),
            "--restore-detached".into(),
            "--pidfile".into(),
            pidfile.clone().into(),
        ];
        // The new container's mounts, offered under their own paths for the external mounts
        // the dump named (see checkpoint::external_mounts).
        let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for map in restore_mount_map(&parse_mountinfo(&own)) {
            args.push("--external".into());
            args.push(map.into());
        }
        for fd in &spec.inherit {
            args.push("--inherit-fd".into());
            args.push(format!("fd[{}]:{}", fd.fd, fd.key).into());
        }
        if lazy {
            args.push("--lazy-pages".into());
        }
        // Eager images not hashed yet: hash the pages while CRIU restores, the tree held stopped.
        let hold_stopped = !ckpt.pages_verified && !lazy;
        if hold_stopped {
            args.push("--leave-stopped".into());
        }
        args.extend(spec.extra_args.iter().map(OsString::from));
        let check = hold_stopped
            .then(|| PageCheck::spawn(manifest.clone(), ckpt.dir.clone(), spec.page_check_delay));
        let log = spec.work_dir.join("restore.log");
        let timeout = spec.timeout.map(|t| t.saturating_sub(started.elapsed()));
        let ran = self.criu.run("restore the job", args, &log, timeout);
        let pid = ran.map_err(EngineError::from).and_then(|()| {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .ok_or_else(|| {
                    EngineError::io(
                        format!("read CRIU's pid file {}", pidfile.display()),
                        std::io::Error::other("missing or not a number"),
                    )
                })
        });
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(d) = daemon {
                    d.abort();
                }
                if let Some(c) = check {
                    let _ = c.wait();
                }
                return Err(e);
            }
        };
        if let Some(check) = check {
            if let Err(e) = check.wait() {
                // NB: the tree never ran: CRIU left it stopped. Kill it (PID 1 of its namespace
                // first, the kernel takes the rest).
                signal_tree(pid, Signal::SIGKILL);
                tracing::error!(pid, dir = %ckpt.dir.display(), "refused to resume the restored job: {e}");
                return Err(e.into());
            }
            signal_tree(pid, Signal::SIGCONT);
        }
        let resumed_at_unix_ms = unix_ms();
        let page_check = (lazy && !ckpt.pages_verified)
            .then(|| PageCheck::spawn(manifest.clone(), ckpt.dir.clone(), spec.page_check_delay));
        let restore_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(pid, restore_ms, dir = %ckpt.dir.display(), "job restored");
        Ok(RestoreResult {
            pid,
            manifest: manifest.clone(),
            restore_ms,
            resumed_at_unix_ms,
            downtime_ms: manifest
                .stopped_at_unix_ms
                .map(|stopped| resumed_at_unix_ms.saturating_sub(stopped)),
            lazy_pages: daemon,
            page_check,
            notes,
        })
    }

    fn start_lazy_pages(
        &self,
        ckpt: &VerifiedCheckpoint,
        spec: &RestoreSpec,
        page_server: Option<&str>,
        started: Instant,
    ) -> Result<LazyPagesDaemon, EngineError> {
        let (status_rx, status_tx) = status_pipe()?;
        let mut args: Vec<OsString> = vec![
            "lazy-pages".into(),
            "-D".into(),
            ckpt.dir.clone().into(),
            "-W".into(),
            spec.work_dir.clone().into(),
            "-o".into(),
            "lazy-pages.log".into(),
            "-v4".into(),
            "--status-fd".into(),
            status_tx.as_raw_fd().to_string().into(),
        ];
        if let Some(addr) = page_server {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
                EngineError::io(
                    "parse the page server address",
                    std::io::Error::other(format!("{addr:?} is not host:port")),
                )
            })?;
            args.extend([
                "--page-server".into(),
                "--address".into(),
                host.trim_matches(['[', ']']).into(),
                "--port".into(),
                port.into(),
            ]);
        }
        let log = spec.work_dir.join("lazy-pages.log");
        let child = self
            .criu
            .command()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(crate::checkpoint::stderr_file(
                &spec.work_dir,
                "lazy-pages",
            )?)
            .spawn()
            .map_err(|source| CriuError::Spawn {
                action: "lazy-pages".into(),
                source,
            })?;
        drop(status_tx);
        let mut daemon = LazyPagesDaemon {
            child,
            log: log.clone(),
        };
        let timeout = spec.timeout.map(|t| t.saturating_sub(started.elapsed()));
        match wait_ready(status_rx, timeout) {
            Ready::Yes => Ok(daemon),
            Ready::Failed => {
                let status = daemon
                    .child
                    .wait()
                    .map_err(|e| EngineError::io("wait for criu lazy-pages", e))?;
                let stderr = std::fs::read_to_string(spec.work_dir.join("lazy-pages.stderr"))
                    .unwrap_or_default();
                criu::check_status("start lazy-pages", (status, stderr), &log)?;
                Err(EngineError::io(
                    "start lazy-pages",
                    std::io::Error::other("CRIU exited without reporting readiness"),
                ))
            }
            Ready::TimedOut(limit) => {
                daemon.abort();
                Err(CriuError::Timeout {
                    action: "start lazy-pages".into(),
                    timeout: limit,
                    log,
                }
                .into())
            }
        }
    }
}
