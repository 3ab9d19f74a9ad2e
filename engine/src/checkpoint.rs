//! The dump side of a migration: runs CRIU on the job's process tree per strategy, then writes
//! the manifest last.
//!
//! - StopAndCopy and LazyRestore: one `criu dump` of everything to the volume (the difference is
//!   on the restore side).
//! - PostCopy: `criu dump --lazy-pages --address --port`; once CRIU reports (`--status-fd`) that
//!   all but memory is on the volume and its page server listens, the manifest is written and
//!   [`CheckpointResult::page_server`] keeps that CRIU running until the target has every page.
//! - PreCopy: two `criu pre-dump --track-mem` rounds into `pre/1`, `pre/2` while the job runs,
//!   then a final `dump --track-mem --prev-images-dir pre/2` that only writes pages dirtied
//!   since. Needs soft-dirty tracking; [`crate::Engine::plan`] falls back to StopAndCopy where the
//!   kernel lacks it (as on the machine Lodger is developed on: that path is untested there).
//!
//! On any failure the partial image directory (it never got a manifest) is removed and the job
//! resumes: a failed dump leaves the job running where it was. An eager dump that takes the job
//! away runs `--leave-stopped`; the engine kills the stopped tree only after the manifest is
//! durable (and sends it SIGCONT if anything fails before that).
//!
//! Every dump names the mounts the job inherited from its container as CRIU externals
//! (`--external mnt[P]:P`, `external_mounts`); the restore binds them from the new container
//! (`restore_mount_map`). docs/engine.md, "Inside a container", says why.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::criu::{self, CriuError};
use crate::layout;
use crate::manifest::{DumpFigures, JobId, MANIFEST_FILE, Manifest, Strategy, TravelState};
use crate::{Engine, EngineError, kernel_release, seal, stats, unix_ms};

/// Number of `pre-dump` rounds of PreCopy before the final dump.
pub const PRE_DUMP_ROUNDS: u32 = 2;

/// What to checkpoint and how.
#[derive(Debug, Clone)]
pub struct CheckpointSpec {
    /// PID (in the caller's PID namespace) of the root of the tree to dump: the job's init.
    pub pid: i32,
    /// The job the image belongs to.
    pub job: JobId,
    /// Checkpoint sequence number.
    pub seq: u64,
    /// Image directory relative to the volume root (conventionally `<ns>/<job>/<seq>`).
    pub path: PathBuf,
    /// Requested strategy.
    pub strategy: Strategy,
    /// Keep the job running after the dump.
    pub leave_running: bool,
    /// Time limit of the whole checkpoint; past it CRIU is killed and the job resumes.
    pub deadline: Option<Duration>,
    /// A private writable directory for CRIU's logs and sockets (not on the volume).
    pub work_dir: PathBuf,
    /// PostCopy: address the page server listens on (port 0 = any free port).
    pub page_server_listen: std::net::SocketAddr,
    /// PostCopy: address the target should fetch from, if it differs from the listen address
    /// (e.g. the pod IP when listening on 0.0.0.0).
    pub page_server_advertise: Option<String>,
    /// Extra CRIU dump options (e.g. `--tcp-established`, `--ext-unix-sk`).
    pub extra_args: Vec<String>,
}

impl CheckpointSpec {
    /// A spec with the conventional path `<ns>/<job>/<seq>`, no deadline, page server on
    /// 127.0.0.1 with a free port, and no extra CRIU options.
    pub fn new(
        pid: i32,
        job: JobId,
        seq: u64,
        strategy: Strategy,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            pid,
            path: layout::image_path(&job.namespace, &job.name, seq),
            job,
            seq,
            strategy,
            leave_running: false,
            deadline: None,
            work_dir: work_dir.into(),
            page_server_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            page_server_advertise: None,
            extra_args: Vec::new(),
        }
    }
}

/// A finished checkpoint.
#[derive(Debug)]
pub struct CheckpointResult {
    /// Image directory relative to the volume root.
    pub path: PathBuf,
    /// Absolute image directory.
    pub dir: PathBuf,
    /// Strategy used.
    pub strategy: Strategy,
    /// Why the requested strategy was not used, when it was not.
    pub fallback_reason: Option<String>,
    /// Milliseconds the job was stopped by the dump (CRIU statistics; for PostCopy, measured
    /// until the page server was ready, the job then stays frozen until the target has resumed).
    pub freeze_ms: u64,
    /// Milliseconds the whole checkpoint took.
    pub duration_ms: u64,
    /// Unix ms at which the job stopped running on the source (None if left running).
    pub stopped_at_unix_ms: Option<u64>,
    /// The manifest as written.
    pub manifest: Manifest,
    /// PostCopy: the CRIU still serving pages; wait for it before the source goes away.
    pub page_server: Option<PageServer>,
    /// Notes for people (e.g. a sysctl that could not be raised).
    pub notes: Vec<String>,
}

/// A `criu dump --lazy-pages` serving the job's memory to the target.
#[derive(Debug)]
pub struct PageServer {
    child: Child,
    /// `host:port` the target's `criu lazy-pages --page-server` connects to.
    pub address: String,
    log: PathBuf,
}

impl PageServer {
    /// Waits until the target has fetched every page and CRIU has exited.
    pub fn wait(mut self) -> Result<(), CriuError> {
        let status = self.child.wait().map_err(|source| CriuError::Spawn {
            action: "dump --lazy-pages".into(),
            source,
        })?;
        criu::check_status("serve the job's pages", (status, String::new()), &self.log)
    }

    /// Stops serving (the target will not get its pages: only for aborting a migration).
    pub fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Engine {
    /// Checkpoints the tree rooted at `spec.pid` into the volume. `seal` is called once, after
    /// CRIU has the job's state and just before the manifest is written: it returns the shim
    /// state that travels with the image (signal watermark, queued signals, stdio pipes).
    pub fn checkpoint(
        &self,
        spec: &CheckpointSpec,
        seal: &mut dyn FnMut() -> TravelState,
    ) -> Result<CheckpointResult, EngineError> {
        let started = Instant::now();
        let started_unix_ms = unix_ms();
        let dir = layout::resolve(&self.root, &spec.path)?;
        if dir.join(MANIFEST_FILE).exists() {
            return Err(EngineError::Exists { path: dir });
        }
        if dir.exists() {
            // NB: a directory without a manifest is an unfinished dump of this very seq (the
            // shim runs one checkpoint at a time); it is garbage and is replaced.
            std::fs::remove_dir_all(&dir)
                .map_err(|e| layout::LayoutError::io("remove unfinished checkpoint", &dir, e))?;
        }
        layout::create_dirs(&self.root, &dir)?;
        if let Err(e) = layout::probe_writable(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        std::fs::create_dir_all(&spec.work_dir).map_err(|e| {
            EngineError::io(format!("create work dir {}", spec.work_dir.display()), e)
        })?;
        let (strategy, fallback_reason) = self.plan(spec.strategy, spec.leave_running);
        let mut notes = Vec::new();
        let outcome = match strategy {
            Strategy::StopAndCopy | Strategy::LazyRestore => {
                self.dump(spec, &dir, started, &[]).map(|()| None)
            }
            Strategy::PreCopy => self.pre_copy(spec, &dir, started).map(|()| None),
            Strategy::PostCopy => {
                if let Some(note) = raise_pipe_max_size() {
                    notes.push(note);
                }
                self.post_copy(spec, &dir, started).map(Some)
            }
        };
        let page_server = match outcome {
            Ok(ps) => ps,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(match e {
                    EngineError::Criu(c) if c.is_no_space() => EngineError::VolumeFull {
                        path: dir,
                        source: c,
                    },
                    other => other,
                });
            }
        };
        let finish = || -> Result<(DumpFigures, Option<u64>), EngineError> {
            let figures = match &page_server {
                // NB: a lazy dump writes stats-dump only when the last page is served.
                Some(_) => DumpFigures {
                    freeze_ms: elapsed_ms(started),
                    ..DumpFigures::default()
                },
                None => {
                    // CRIU writes stats-dump into its work directory when one is given.
                    let s = stats::read_dump_stats(&spec.work_dir)
                        .or_else(|_| stats::read_dump_stats(&dir))?;
                    DumpFigures {
                        freezing_us: s.freezing_time_us,
                        frozen_us: s.frozen_time_us,
                        freeze_ms: s.freeze_ms(),
                        duration_ms: 0,
                        pages_written: s.pages_written,
                        pages_lazy: s.pages_lazy,
                    }
                }
            };
            let stopped_at = (!spec.leave_running).then(|| {
                // The job is fully stopped once CRIU has frozen it.
                let freezing_ms = figures.freezing_us / 1000;
                match &page_server {
                    Some(_) => started_unix_ms,
                    None => started_unix_ms + freezing_ms,
                }
            });
            layout::restrict_modes(&dir)?;
            Ok((figures, stopped_at))
        };
        // NB: an eager dump that stops the job leaves it stopped (`--leave-stopped`) rather than
        // killed: the job dies only once the manifest is durable, and resumes if anything fails
        // before that, so a checkpoint can never lose the job.
        let stopped_tree = (page_server.is_none() && !spec.leave_running).then_some(spec.pid);
        let abandon = |page_server: Option<PageServer>| {
            if let Some(ps) = page_server {
                ps.abort();
            }
            if let Some(root) = stopped_tree {
                signal_tree(root, Signal::SIGCONT);
            }
            let _ = std::fs::remove_dir_all(&dir);
        };
        let (figures, stopped_at) = match finish() {
            Ok(v) => v,
            Err(e) => {
                abandon(page_server);
                return Err(e);
            }
        };
        let travel = seal();
        let write = || -> Result<Manifest, EngineError> {
            // NB: seal fsyncs every image file and directory before it writes the manifest.
            let build = |files: Vec<crate::manifest::ImageFile>| -> Result<Manifest, EngineError> {
                // NB: the deadline bounds the whole checkpoint, sealing included: past it the
                // job resumes here (abandon) rather than being reported migrated late.
                if let Some(limit) = spec.deadline
                    && started.elapsed() > limit
                {
                    return Err(CriuError::Timeout {
                        action: "checkpoint the job (checksums and fsync of the images)".into(),
                        timeout: limit,
                        log: spec.work_dir.join("dump.log"),
                    }
                    .into());
                }
                Ok(Manifest {
                    format_version: crate::manifest::FORMAT_VERSION,
                    job: spec.job.clone(),
                    seq: spec.seq,
                    strategy,
                    requested_strategy: spec.strategy,
                    fallback_reason: fallback_reason.clone(),
                    leave_running: spec.leave_running,
                    criu_version: self.criu.version().to_owned(),
                    kernel: kernel_release(),
                    created_at_unix_ms: unix_ms(),
                    stopped_at_unix_ms: stopped_at,
                    page_server: page_server.as_ref().map(|p| p.address.clone()),
                    figures: DumpFigures {
                        duration_ms: elapsed_ms(started),
                        ..figures
                    },
                    image_bytes: files.iter().map(|f| f.bytes).sum(),
                    chunk_bytes: crate::digest::CHUNK_BYTES,
                    files,
                    travel,
                })
            };
            // NB: `duration_ms` is taken once the checksums and fsyncs are done (inside
            // `build`), so it covers everything but the manifest's own write.
            seal::seal(&seal::Disk, &self.root, &dir, build)
        };
        let manifest = match write() {
            Ok(m) => m,
            Err(e) => {
                abandon(page_server);
                return Err(e);
            }
        };
        if let Some(root) = stopped_tree {
            signal_tree(root, Signal::SIGKILL);
        }
        tracing::info!(
            dir = %dir.display(),
            %strategy,
            bytes = manifest.image_bytes,
            freeze_ms = manifest.figures.freeze_ms,
            "checkpoint written"
        );
        Ok(CheckpointResult {
            path: spec.path.clone(),
            dir,
            strategy,
            fallback_reason,
            freeze_ms: manifest.figures.freeze_ms,
            duration_ms: manifest.figures.duration_ms,
            stopped_at_unix_ms: stopped_at,
            manifest,
            page_server,
            notes,
        })
    }

    fn base_args(
        &self,
        action: &str,
        spec: &CheckpointSpec,
        dir: &Path,
        log: &str,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            action.into(),
            "-t".into(),
            spec.pid.to_string().into(),
            "-D".into(),
            dir.into(),
            "-W".into(),
            spec.work_dir.clone().into(),
            "-o".into(),
            log.into(),
            "-v4".into(),
            "--manage-cgroups=ignore".into(),
        ];
        // CRIU's own bound on the freeze phase, in whole seconds.
        let freeze_secs = spec
            .deadline
            .map(|d| d.as_secs().clamp(1, 10))
            .unwrap_or(10);
        args.push("--timeout".into());
        args.push(freeze_secs.to_string().into());
        // The container runtime's bind mounts (volumes, /etc/hosts, device nodes, masked /proc
        // paths) are external to the job: name each by its mount point (see external_mounts).
        let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
        let job_mounts = parse_mountinfo(&read(format!("/proc/{}/mountinfo", spec.pid)));
        let own_mounts = parse_mountinfo(&read("/proc/self/mountinfo".into()));
        for point in external_mounts(&job_mounts, &own_mounts) {
            args.push("--external".into());
            args.push(format!("mnt[{point}]:{point}").into());
        }
        args.extend(spec.extra_args.iter().map(OsString::from));
        args
    }

    fn dump(
        &self,
        spec: &CheckpointSpec,
        dir: &Path,
        started: Instant,
        extra: &[OsString],
    ) -> Result<(), EngineError> {
        let mut args = self.base_args("dump", spec, dir, "dump.log");
        args.push(
            if spec.leave_running {
                "--leave-running"
            } else {
                "--leave-stopped"
            }
            .into(),
        );
        args.extend(extra.iter().cloned());
        let log = spec.work_dir.join("dump.log");
        self.criu.run(
            "dump the job",
            args,
            &log,
            remaining(spec.deadline, started),
        )?;
        Ok(())
    }

    fn pre_copy(
        &self,
        spec: &CheckpointSpec,
        dir: &Path,
        started: Instant,
    ) -> Result<(), EngineError> {
        for round in 1..=PRE_DUMP_ROUNDS {
            let round_dir = dir.join("pre").join(round.to_string());
            layout::create_dirs(dir, &round_dir)?;
            let log = format!("pre-dump-{round}.log");
            let mut args = self.base_args("pre-dump", spec, &round_dir, &log);
            args.push("--track-mem".into());
            if round > 1 {
                args.push("--prev-images-dir".into());
                args.push(format!("../{}", round - 1).into());
            }
            self.criu.run(
                "pre-dump the job",
                args,
                &spec.work_dir.join(&log),
                remaining(spec.deadline, started),
            )?;
        }
        let extra: Vec<OsString> = vec![
            "--track-mem".into(),
            "--prev-images-dir".into(),
            format!("pre/{PRE_DUMP_ROUNDS}").into(),
        ];
        self.dump(spec, dir, started, &extra)
    }

    fn post_copy(
        &self,
        spec: &CheckpointSpec,
        dir: &Path,
        started: Instant,
    ) -> Result<PageServer, EngineError> {
        // CRIU refuses `--port 0`: pick a free port (released just before CRIU binds it).
        let port = match spec.page_server_listen.port() {
            0 => std::net::TcpListener::bind(spec.page_server_listen)
                .and_then(|l| l.local_addr())
                .map_err(|e| EngineError::io("find a free port for the page server", e))?
                .port(),
            p => p,
        };
        let (status_rx, status_tx) = status_pipe()?;
        let mut args = self.base_args("dump", spec, dir, "dump.log");
        args.extend([
            "--lazy-pages".into(),
            "--address".into(),
            spec.page_server_listen.ip().to_string().into(),
            "--port".into(),
            port.to_string().into(),
            "--status-fd".into(),
            status_tx.as_raw_fd().to_string().into(),
        ]);
        let log = spec.work_dir.join("dump.log");
        let child = self
            .criu
            .command()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(stderr_file(&spec.work_dir, "dump")?)
            .spawn()
            .map_err(|source| CriuError::Spawn {
                action: "dump --lazy-pages".into(),
                source,
            })?;
        drop(status_tx);
        let mut ps = PageServer {
            child,
            address: String::new(),
            log: log.clone(),
        };
        match wait_ready(status_rx, remaining(spec.deadline, started)) {
            Ready::Yes => {}
            Ready::Failed => {
                let status = ps
                    .child
                    .wait()
                    .map_err(|e| EngineError::io("wait for criu dump", e))?;
                let stderr =
                    std::fs::read_to_string(spec.work_dir.join("dump.stderr")).unwrap_or_default();
                criu::check_status("dump the job (lazy pages)", (status, stderr), &log)?;
                return Err(EngineError::io(
                    "dump the job (lazy pages)",
                    std::io::Error::other("CRIU exited without reporting readiness"),
                ));
            }
            Ready::TimedOut(limit) => {
                ps.abort();
                return Err(CriuError::Timeout {
                    action: "dump the job (lazy pages)".into(),
                    timeout: limit,
                    log,
                }
                .into());
            }
        }
        let host = spec
            .page_server_advertise
            .clone()
            .unwrap_or_else(|| spec.page_server_listen.ip().to_string());
        ps.address = format!("{host}:{port}");
        Ok(ps)
    }
}

/// One line of `/proc/<pid>/mountinfo`: the fields the external-mount rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// Path of the mount's root inside its filesystem (`/` unless it is a bind of a subtree or
    /// of a single file).
    pub root: String,
    /// Mount point, relative to the reading process's root.
    pub point: String,
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)), undoing the kernel's octal escapes (`\040`).
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let root = fields.next()?;
            let point = fields.next()?;
            Some(MountEntry {
                dev: dev.to_owned(),
                root: unescape_mountinfo(root),
                point: unescape_mountinfo(point),
            })
        })
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of the job's namespace that CRIU must treat as external: every mount the job
/// inherited from the container (same mount point, filesystem and root in the engine's own
/// mount namespace, which is the container's), i.e. all but the namespace's root (restored with
/// `--root`), the job's own /proc and what lies under it at the same point (the container's
/// /proc). In a pod these are the runtime's mounts: every volume, `/etc/hosts`,
/// `/etc/hostname`, `/etc/resolv.conf`, `/dev/termination-log`, the tmpfs `/dev` and its device
/// nodes, `/dev/null` over the masked `/proc` files, the read-only `/proc/sys` & co., `/sys`,
/// the service-account token. They belong to the container, not to the job: CRIU cannot rebuild
/// binds of single files or subtrees ("doesn't have a proper root mount"), and would otherwise
/// copy each tmpfs with `tar`, which the workload image need not have. Each is dumped under its
/// own mount point as the key, and the restore binds it from the same path of the new container
/// ([`restore_mount_map`]), so the job sees the new pod's volumes and files. Paths CRIU's
/// `mnt[KEY]:VALUE` syntax cannot carry (containing `]`, `:` or `,`) are left out: CRIU then
/// names them in its refusal.
pub(crate) fn external_mounts(job_mounts: &[MountEntry], own_mounts: &[MountEntry]) -> Vec<String> {
    // NB: CRIU matches `mnt[KEY]` against mount points, so a point is external only if every
    // mount of the job's namespace there is inherited: the job's own /proc sits on the
    // container's, and must stay a proc CRIU mounts anew (else the restored job would get the
    // new container's /proc, a view of the wrong PID namespace). The container's /proc below
    // it is then rebuilt by CRIU too, as it would be outside a container.
    let own_mount_there = |point: &str| {
        job_mounts
            .iter()
            .any(|m| m.point == point && !own_mounts.contains(m))
    };
    let mut points: Vec<String> = job_mounts
        .iter()
        .filter(|m| m.point != "/" && own_mounts.contains(m) && !own_mount_there(&m.point))
        .map(|m| m.point.clone())
        .filter(|p| usable_key(p))
        .collect();
    points.sort_unstable();
    points.dedup();
    points
}

/// Restore side of [`external_mounts`]: every mount point of the restoring process's own
/// mount namespace (the new container), as `mnt[POINT]:POINT`. CRIU uses the entries whose key
/// the image names and ignores the rest; a key the image names that this container lacks makes
/// CRIU refuse with "No mapping for ... mountpoint".
pub(crate) fn restore_mount_map(own_mounts: &[MountEntry]) -> Vec<String> {
    let mut points: Vec<&str> = own_mounts
        .iter()
        .map(|m| m.point.as_str())
        .filter(|p| *p != "/" && usable_key(p))
        .collect();
    points.sort_unstable();
    points.dedup();
    points
        .into_iter()
        .map(|p| format!("mnt[{p}]:{p}"))
        .collect()
}

fn usable_key(point: &str) -> bool {
    !point.contains([']', ':', ','])
}

/// A file in `work_dir` for the stderr of a CRIU run in the background (`<name>.stderr`).
pub(crate) fn stderr_file(work_dir: &Path, name: &str) -> Result<std::fs::File, EngineError> {
    let path = work_dir.join(format!("{name}.stderr"));
    std::fs::File::create(&path)
        .map_err(|e| EngineError::io(format!("create {}", path.display()), e))
}

/// The PIDs of the tree rooted at `root` (root first), from `/proc/<pid>/task/<tid>/children`.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        let pid = tree[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            tree.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    tree
}

/// Sends `signal` to every process of the tree rooted at `root`.
pub(crate) fn signal_tree(root: i32, signal: Signal) {
    for pid in process_tree(root) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Outcome of waiting on a CRIU `--status-fd`.
pub(crate) enum Ready {
    Yes,
    Failed,
    TimedOut(Duration),
}

/// A pipe for CRIU's `--status-fd`: the read end (ours, close-on-exec) and the write end (for
/// CRIU, inheritable).
pub(crate) fn status_pipe() -> Result<(OwnedFd, OwnedFd), EngineError> {
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| EngineError::io("create a status pipe for CRIU", e.into()))?;
    fcntl(&tx, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| EngineError::io("make the status pipe inheritable", e.into()))?;
    Ok((rx, tx))
}

/// Waits until CRIU writes its readiness byte or closes the pipe.
pub(crate) fn wait_ready(rx: OwnedFd, timeout: Option<Duration>) -> Ready {
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(rx);
        let mut byte = [0u8; 1];
        let ok = matches!(file.read(&mut byte), Ok(1));
        let _ = tx.send(ok);
    });
    let got = match timeout {
        Some(limit) => match done.recv_timeout(limit) {
            Ok(v) => v,
            Err(_) => return Ready::TimedOut(limit),
        },
        None => done.recv().unwrap_or(false),
    };
    if got { Ready::Yes } else { Ready::Failed }
}

fn remaining(deadline: Option<Duration>, started: Instant) -> Option<Duration> {
    deadline.map(|d| {
        d.saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    })
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Remote lazy pages need `fs.pipe-max-size` >= 4 MiB; raises it if it can, else returns a note.
pub fn raise_pipe_max_size() -> Option<String> {
    const PATH: &str = "/proc/sys/fs/pipe-max-size";
    const WANT: u64 = 4 * 1024 * 1024;
    let current: u64 = std::fs::read_to_string(PATH).ok()?.trim().parse().ok()?;
    if current >= WANT {
        return None;
    }
    match std::fs::write(PATH, WANT.to_string()) {
        Ok(()) => {
            tracing::info!(
                from = current,
                to = WANT,
                "raised fs.pipe-max-size for lazy pages"
            );
            None
        }
        Err(e) => Some(format!(
            "could not raise fs.pipe-max-size from {current} to {WANT} ({e}); remote lazy pages \
             may fail: set `sysctl fs.pipe-max-size={WANT}` on the node"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job's mount namespace inside a container, as `/proc/<init>/mountinfo` shows it (taken
    /// from the container-like harness): overlay root, proc with a masked file, tmpfs /dev with a
    /// bound device node, a single-file bind, a volume, then the job's own /proc on top.
    const JOB: &str = "\
45 44 0:39 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
46 45 0:41 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
47 46 0:6 /null /proc/keys rw,relatime - devtmpfs devtmpfs rw
54 45 0:42 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
55 54 0:6 /null /dev/null rw,relatime - devtmpfs devtmpfs rw
186 45 254:0 /tmp/pod\\040a/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw
207 45 254:0 /tmp/data /my\\040data rw,relatime - ext4 /dev/vda rw
209 46 0:88 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";

    /// The container's (CRIU's) own mount namespace: the same mounts but for the job's /proc.
    fn container() -> Vec<MountEntry> {
        parse_mountinfo(&JOB.lines().take(7).collect::<Vec<_>>().join("\n"))
    }

    /// mountinfo parsing takes device, root and mount point and undoes octal escapes; if it
    /// breaks, external mounts are named wrongly and CRIU refuses every container dump.
    #[test]
    fn mountinfo_fields_and_escapes() {
        let mounts = parse_mountinfo(JOB);
        assert_eq!(mounts.len(), 8);
        assert_eq!(
            mounts[5],
            MountEntry {
                dev: "254:0".into(),
                root: "/tmp/pod a/hosts".into(),
                point: "/etc/hosts".into(),
            }
        );
        assert_eq!(mounts[6].point, "/my data");
        assert_eq!(unescape_mountinfo("a\\134b\\011c\\"), "a\\b\tc\\");
    }

    /// Every mount the job inherited from the container is external (so CRIU binds it from the
    /// new container instead of refusing binds or tarring tmpfs), but not the namespace's root
    /// (restored with --root) nor /proc, where the job's own proc sits on the container's (CRIU
    /// matches keys by mount point: keying /proc would bind the new container's /proc over the
    /// job's). If this fails, container dumps are refused, the job would get the old pod's
    /// /dev and volumes, or a /proc of the wrong PID namespace.
    #[test]
    fn inherited_mounts_are_external_the_jobs_own_are_not() {
        let job = parse_mountinfo(JOB);
        assert_eq!(
            external_mounts(&job, &container()),
            ["/dev", "/dev/null", "/etc/hosts", "/my data", "/proc/keys"]
        );
        // Outside any container (nothing shared with CRIU's namespace) nothing is external.
        assert!(external_mounts(&job, &[]).is_empty());
    }

    /// Mount points CRIU's `mnt[KEY]:VALUE` syntax cannot carry are left out on both sides
    /// rather than passed garbled; if this fails CRIU gets a malformed option and refuses.
    #[test]
    fn unusable_mount_points_are_left_out() {
        let odd = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
             2 1 8:1 /x /a:b rw - ext4 /dev/sda rw\n\
             3 1 8:1 /y /c]d rw - ext4 /dev/sda rw\n\
             4 1 8:1 /z /e,f rw - ext4 /dev/sda rw\n\
             5 1 8:1 /w /ok rw - ext4 /dev/sda rw",
        );
        assert_eq!(external_mounts(&odd, &odd), ["/ok"]);
        assert_eq!(restore_mount_map(&odd), ["mnt[/ok]:/ok"]);
    }

    /// The restore offers each of the new container's mount points once, under its own path,
    /// and never the root; if this fails the restore cannot find the new pod's mounts.
    #[test]
    fn restore_maps_each_own_mount_point_to_itself() {
        assert_eq!(
            restore_mount_map(&container()),
            [
                "mnt[/dev]:/dev",
                "mnt[/dev/null]:/dev/null",
                "mnt[/etc/hosts]:/etc/hosts",
                "mnt[/my data]:/my data",
                "mnt[/proc]:/proc",
                "mnt[/proc/keys]:/proc/keys",
            ]
        );
    }
}
