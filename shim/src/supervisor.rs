//! The running shim: copies the job's output, serves the control socket, forwards signals, and
//! turns the init's end into the shim's exit code.
//!
//! State machine of the job (reported by `status`):
//! `Running` → (`checkpoint`) → `Checkpointing` → `Running` (failed, or leave_running) or
//! `Migrated` (its state now lives in the image; the dump killed it here) → shim exits 0 on
//! SIGTERM (or at once with `--exit-after-migration`). `Running` → `Exited{code}` when the job
//! ends; the shim exits with that code.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lodger_engine::{CheckpointSpec, Engine, JobId, QueuedSignal, StdioPipe, TravelState};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::control::{
    CheckpointOutcome, CheckpointRequest, ControlError, ErrorKind, JobState, MAX_MESSAGE_BYTES, Op,
    PROTOCOL_VERSION, PageCheckState, Reply, Request, Response, SOCKET_NAME, ShimStatus,
    SignalDisposition, SignalOutcome, signal_refusal,
};
use crate::convert;

/// Static configuration of a running shim.
#[derive(Debug)]
pub struct Config {
    /// The job's identity.
    pub job: JobId,
    /// Control directory (socket, CRIU work dirs).
    pub control_dir: PathBuf,
    /// PostCopy page server listen address.
    pub page_server_listen: std::net::SocketAddr,
    /// PostCopy address advertised to the target.
    pub page_server_advertise: Option<String>,
    /// Exit once migrated instead of waiting for SIGTERM.
    pub exit_after_migration: bool,
}

/// Mutable state, behind one mutex.
#[derive(Debug)]
struct State {
    job: JobState,
    last_signal_seq: u64,
    queued: Vec<QueuedSignal>,
    /// The running checkpoint has taken its travel state; signals can no longer join it.
    sealed: bool,
    /// Lazy restores: the background check of the page images.
    page_check: Option<PageCheckState>,
}

/// A shim supervising one job.
#[derive(Debug)]
pub struct Shim {
    config: Config,
    engine: Result<Arc<Engine>, String>,
    init: Pid,
    stdio: Vec<StdioPipe>,
    restored_from: Option<PathBuf>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the shim supervises: its init, its output pipes and where it came from.
#[derive(Debug)]
pub struct Supervised {
    /// The job's init.
    pub init: Pid,
    /// (job fd, read end, CRIU pipe id) of each output pipe.
    pub outputs: Vec<(i32, OwnedFd, String)>,
    /// The checkpoint restored from.
    pub restored_from: Option<PathBuf>,
    /// Signal watermark carried from the checkpoint.
    pub last_signal_seq: u64,
    /// Signals to deliver now (queued during the checkpoint restored from).
    pub pending_signals: Vec<QueuedSignal>,
    /// Lazy restores: the daemon still paging memory in.
    pub lazy_pages: Option<lodger_engine::LazyPagesDaemon>,
    /// Lazy restores: the page images' checksums, still being checked while the job runs.
    pub page_check: Option<lodger_engine::PageCheck>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // NB: no code panics while holding the lock; recover the data if one ever did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error(ControlError {
        kind,
        message: message.into(),
    })
}

impl Shim {
    /// The shim's status.
    pub fn status(&self) -> ShimStatus {
        let st = lock(&self.state);
        ShimStatus {
            job: st.job,
            init_pid: Some(self.init.as_raw()),
            last_signal_seq: st.last_signal_seq,
            restored_from: self.restored_from.clone(),
            criu_version: self
                .engine
                .as_ref()
                .ok()
                .map(|e| e.criu().version().to_owned()),
            page_check: st.page_check.clone(),
        }
    }

    fn seal(&self) -> TravelState {
        let mut st = lock(&self.state);
        st.sealed = true;
        TravelState {
            last_signal_seq: st.last_signal_seq,
            queued_signals: st.queued.clone(),
            stdio: self.stdio.clone(),
        }
    }

    /// Sends `signo` to the job's init, which forwards it to the job (raw number: real-time
    /// signals have no nix `Signal`).
    fn deliver(&self, signo: i32) -> Result<(), String> {
        if let Some(refusal) = signal_refusal(signo) {
            return Err(refusal);
        }
        crate::sys::send_signal(self.init, signo)
            .map_err(|e| format!("failed to send signal {signo} to the job: {e}"))
    }

    /// Handles a `signal` request: exactly once per seq.
    pub fn signal(&self, signo: i32, seq: u64) -> Reply {
        if seq == 0 {
            return error(ErrorKind::BadRequest, "signal seq must be at least 1");
        }
        if let Some(refusal) = signal_refusal(signo) {
            return error(ErrorKind::BadRequest, refusal);
        }
        let mut st = lock(&self.state);
        if seq <= st.last_signal_seq {
            return Reply::Signal(SignalOutcome {
                seq,
                disposition: SignalDisposition::Duplicate,
            });
        }
        let disposition = match st.job {
            JobState::Checkpointing if st.sealed => {
                return error(
                    ErrorKind::Busy,
                    "a checkpoint is being finalized; retry this signal in a moment",
                );
            }
            JobState::Checkpointing => {
                st.queued.push(QueuedSignal { seq, signo });
                SignalDisposition::Queued
            }
            JobState::Running => {
                if let Err(e) = self.deliver(signo) {
                    return error(ErrorKind::Internal, e);
                }
                SignalDisposition::Delivered
            }
            JobState::Starting | JobState::Migrated | JobState::Exited { .. } => {
                return error(
                    ErrorKind::NotRunning,
                    format!(
                        "the job is not running here ({:?}); nothing was sent",
                        st.job
                    ),
                );
            }
        };
        st.last_signal_seq = seq;
        Reply::Signal(SignalOutcome { seq, disposition })
    }

    /// Handles a `checkpoint` request.
    pub async fn checkpoint(self: &Arc<Self>, req: CheckpointRequest) -> Reply {
        let engine = match &self.engine {
            Ok(e) => Arc::clone(e),
            Err(msg) => return error(ErrorKind::CheckpointFailed, msg.clone()),
        };
        let job = convert::job_id(&req.job);
        if job != self.config.job {
            return error(
                ErrorKind::BadRequest,
                format!("this shim runs job {}, not {job}", self.config.job),
            );
        }
        if let Err(e) = lodger_engine::layout::resolve(engine.root(), &req.path) {
            return error(ErrorKind::BadRequest, e.to_string());
        }
        {
            let mut st = lock(&self.state);
            match st.job {
                JobState::Running => {}
                JobState::Checkpointing => {
                    return error(ErrorKind::Busy, "another checkpoint is in progress");
                }
                other => {
                    return error(
                        ErrorKind::NotRunning,
                        format!("the job is not running here ({other:?})"),
                    );
                }
            }
            st.job = JobState::Checkpointing;
            st.sealed = false;
        }
        let work_dir = self.config.control_dir.join("criu").join(format!(
            "dump-{}-{}",
            req.seq,
            lodger_engine::unix_ms()
        ));
        let spec = CheckpointSpec {
            pid: self.init.as_raw(),
            job,
            seq: req.seq,
            path: req.path.clone(),
            strategy: convert::strategy_in(req.strategy),
            leave_running: req.leave_running,
            deadline: (req.deadline_ms > 0).then(|| Duration::from_millis(req.deadline_ms)),
            work_dir: work_dir.clone(),
            page_server_listen: self.config.page_server_listen,
            page_server_advertise: self.config.page_server_advertise.clone(),
            extra_args: Vec::new(),
        };
        let shim = Arc::clone(self);
        let result =
            tokio::task::spawn_blocking(move || engine.checkpoint(&spec, &mut || shim.seal()))
                .await;
        let reply = {
            let mut st = lock(&self.state);
            st.sealed = false;
            match result {
                Ok(Ok(mut done)) => {
                    if req.leave_running {
                        st.job = JobState::Running;
                        self.flush_queue(&mut st);
                    } else {
                        st.job = JobState::Migrated;
                        st.queued.clear();
                    }
                    if let Some(ps) = done.page_server.take() {
                        let handle = tokio::task::spawn_blocking(move || {
                            if let Err(e) = ps.wait() {
                                tracing::error!(error = %e, "serving the job's pages failed");
                            }
                        });
                        self.background
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(handle);
                    } else {
                        let _ = std::fs::remove_dir_all(&work_dir);
                    }
                    for note in &done.notes {
                        tracing::warn!("{note}");
                    }
                    Reply::Checkpointed(CheckpointOutcome {
                        path: done.path,
                        strategy: convert::strategy_out(done.strategy),
                        fallback_reason: done.fallback_reason,
                        image_bytes: done.manifest.image_bytes,
                        freeze_ms: done.freeze_ms,
                        duration_ms: done.duration_ms,
                        stopped_at_unix_ms: done.stopped_at_unix_ms,
                        page_server: done.manifest.page_server.clone(),
                    })
                }
                Ok(Err(e)) => {
                    st.job = JobState::Running;
                    self.flush_queue(&mut st);
                    let kind = match e.category() {
                        "Storage" => ErrorKind::Storage,
                        "CriuTimeout" => ErrorKind::DeadlineExceeded,
                        "BadPath" | "CheckpointExists" => ErrorKind::BadRequest,
                        _ => ErrorKind::CheckpointFailed,
                    };
                    tracing::warn!(error = %e, "checkpoint failed; the job keeps running");
                    error(kind, format!("{e}; the job keeps running here"))
                }
                Err(join) => {
                    st.job = JobState::Running;
                    self.flush_queue(&mut st);
                    error(
                        ErrorKind::Internal,
                        format!("checkpoint task failed: {join}"),
                    )
                }
            }
        };
        self.changed.send_modify(|generation| *generation += 1);
        reply
    }

    /// Delivers signals queued during a checkpoint that did not take the job away.
    fn flush_queue(&self, st: &mut State) {
        for queued in std::mem::take(&mut st.queued) {
            if let Err(e) = self.deliver(queued.signo) {
                tracing::warn!(seq = queued.seq, "could not deliver a queued signal: {e}");
            }
        }
    }

    async fn handle(self: &Arc<Self>, line: &str) -> Response {
        let result = match serde_json::from_str::<Request>(line) {
            Err(e) => {
                // Tell an old or new client apart from garbage.
                let version = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
                match version {
                    Some(v) if v != u64::from(PROTOCOL_VERSION) => error(
                        ErrorKind::UnsupportedVersion,
                        format!("this shim speaks protocol {PROTOCOL_VERSION}, the request {v}"),
                    ),
                    _ => error(
                        ErrorKind::BadRequest,
                        format!("failed to parse the request: {e}"),
                    ),
                }
            }
            Ok(req) if req.version != PROTOCOL_VERSION => error(
                ErrorKind::UnsupportedVersion,
                format!(
                    "this shim speaks protocol {PROTOCOL_VERSION}, the request {}",
                    req.version
                ),
            ),
            Ok(req) => match req.op {
                Op::Status => Reply::Status(self.status()),
                Op::Signal { signo, seq } => self.signal(signo, seq),
                Op::Checkpoint(c) => self.checkpoint(c).await,
            },
        };
        Response {
            version: PROTOCOL_VERSION,
            result,
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: UnixStream) {
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half.take(MAX_MESSAGE_BYTES as u64));
        let mut line = String::new();
        let response = match reader.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => self.handle(line.trim_end()).await,
            Ok(_) => Response {
                version: PROTOCOL_VERSION,
                result: error(
                    ErrorKind::BadRequest,
                    format!("request must be one line of at most {MAX_MESSAGE_BYTES} bytes"),
                ),
            },
            Err(e) => {
                tracing::debug!("control connection failed: {e}");
                return;
            }
        };
        let mut bytes = serde_json::to_vec(&response).expect("responses are serializable");
        bytes.push(b'\n');
        let _ = write_half.write_all(&bytes).await;
        let _ = write_half.shutdown().await;
    }
}

/// Errors of running the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The control socket could not be set up.
    #[error("failed to listen on {}: {source}", path.display())]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or a signal stream could not be set up.
    #[error("failed to {action}: {source}")]
    Runtime {
        /// What.
        action: &'static str,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
}

impl SupervisorError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            SupervisorError::Listen { .. } => "ControlSocket",
            SupervisorError::Runtime { .. } => "Runtime",
        }
    }
}

/// Copies one of the job's pipes to the shim's stdout or stderr until EOF, byte for byte.
fn spawn_pump(fd: i32, read: OwnedFd) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut source = std::fs::File::from(read);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match std::io::Read::read(&mut source, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let ok = if fd == 2 {
                let mut err = std::io::stderr().lock();
                err.write_all(&buf[..n]).and_then(|()| err.flush())
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf[..n]).and_then(|()| out.flush())
            };
            if ok.is_err() {
                // Nobody reads our output any more; keep draining so the job never blocks.
                continue;
            }
        }
    })
}

/// Runs the shim until the job ends (returns its exit code) or, after a migration, until SIGTERM
/// (returns 0).
pub fn run(
    config: Config,
    engine: Result<Arc<Engine>, String>,
    supervised: Supervised,
) -> Result<i32, SupervisorError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| SupervisorError::Runtime {
            action: "start the async runtime",
            source,
        })?;
    let mut pumps = Vec::new();
    let mut stdio = Vec::new();
    for (fd, read, pipe) in supervised.outputs {
        pumps.push(spawn_pump(fd, read));
        stdio.push(StdioPipe { fd, pipe });
    }
    let (changed, _) = watch::channel(0u64);
    let shim = Arc::new(Shim {
        config,
        engine,
        init: supervised.init,
        stdio,
        restored_from: supervised.restored_from,
        state: Mutex::new(State {
            job: JobState::Running,
            last_signal_seq: supervised.last_signal_seq,
            queued: supervised.pending_signals,
            sealed: false,
            page_check: supervised
                .page_check
                .as_ref()
                .map(|_| PageCheckState::Pending),
        }),
        changed,
        background: Mutex::new(Vec::new()),
    });
    {
        // Signals queued during the checkpoint restored from: delivered once, in seq order.
        let mut st = lock(&shim.state);
        shim.flush_queue(&mut st);
    }
    if let Ok(engine) = &shim.engine {
        // Probe CRIU's kernel features now, off the checkpoint's path (they are cached).
        let engine = Arc::clone(engine);
        std::thread::spawn(move || engine.criu().features());
    }
    if let Some(check) = supervised.page_check {
        let shim = Arc::clone(&shim);
        std::thread::spawn(move || {
            let outcome = match check.wait() {
                Ok(()) => {
                    tracing::info!("page images verified after the lazy restore");
                    PageCheckState::Passed
                }
                Err(e) => {
                    // NB: LazyRestore/PostCopy resume before the pages are hashed (their point);
                    // the job may already have used a corrupt page. Say so as loudly as we can.
                    tracing::error!(
                        error = %e,
                        "CORRUPT CHECKPOINT: a page image failed verification after the job \
                         resumed (lazy restore); the job may be running on corrupt memory"
                    );
                    PageCheckState::Failed {
                        message: e.to_string(),
                    }
                }
            };
            lock(&shim.state).page_check = Some(outcome);
        });
    }
    if let Some(daemon) = supervised.lazy_pages {
        std::thread::spawn(move || {
            if let Err(e) = daemon.wait() {
                tracing::error!(error = %e, "paging the job's memory in failed");
            }
        });
    }
    runtime.block_on(supervise(shim, pumps))
}

async fn supervise(
    shim: Arc<Shim>,
    pumps: Vec<std::thread::JoinHandle<()>>,
) -> Result<i32, SupervisorError> {
    let socket = shim.config.control_dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| SupervisorError::Listen {
        path: socket.clone(),
        source,
    })?;
    // NB: the node agent connects as a non-root uid in group 0 (the chart; docs/security.md);
    // connect() needs write permission on the socket, which the usual umask (022) withholds.
    std::fs::set_permissions(
        &socket,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o660),
    )
    .map_err(|source| SupervisorError::Listen {
        path: socket.clone(),
        source,
    })?;
    let accept_shim = Arc::clone(&shim);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(Arc::clone(&accept_shim).serve_connection(stream));
                }
                Err(e) => tracing::warn!("control socket accept failed: {e}"),
            }
        }
    });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    spawn_signal_forwarding(Arc::clone(&shim), stop_tx)?;
    let init = shim.init;
    tokio::spawn(async move {
        let period = Duration::from_secs(5);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            every.tick().await;
            reap_orphans(init);
        }
    });

    let init = shim.init;
    let status = tokio::task::spawn_blocking(move || {
        loop {
            match waitpid(init, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!("failed to wait for the job's init: {e}");
                    return 255;
                }
            }
        }
    })
    .await
    .unwrap_or(255);

    let mut changed = shim.changed.subscribe();
    let migrated = loop {
        {
            let mut st = lock(&shim.state);
            match st.job {
                JobState::Checkpointing => {}
                JobState::Migrated => break true,
                _ => {
                    st.job = JobState::Exited { code: status };
                    break false;
                }
            }
        }
        let _ = changed.changed().await;
    };
    // The tree is gone, so every write end is closed: the pumps reach EOF once they have copied
    // the last byte the job wrote (no output is lost at a migration or at exit).
    let _ = tokio::task::spawn_blocking(move || {
        for pump in pumps {
            let _ = pump.join();
        }
    })
    .await;
    let code = if migrated {
        let background: Vec<_> =
            std::mem::take(&mut *shim.background.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in background {
            let _ = handle.await;
        }
        if !shim.config.exit_after_migration {
            while !*stop_rx.borrow_and_update() {
                if stop_rx.changed().await.is_err() {
                    break;
                }
            }
        }
        0
    } else {
        status
    };
    let _ = std::fs::remove_file(&socket);
    Ok(code)
}

/// Reaps zombies reparented to the shim (it is the container's PID 1 and a child subreaper):
/// orphans of `kubectl exec` sessions, for instance. Leaves alone the job's init (waited for
/// separately) and CRIU processes (waited for by the engine), so no waiter loses its child.
fn reap_orphans(init: Pid) {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == init.as_raw() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" && ppid == me && comm != "criu" {
            let _ = waitpid(
                Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Forwards the signals a container's PID 1 receives to the job; SIGTERM/SIGINT after the job
/// left or ended stop the shim.
fn spawn_signal_forwarding(
    shim: Arc<Shim>,
    stop_tx: watch::Sender<bool>,
) -> Result<(), SupervisorError> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    let stop_tx = Arc::new(stop_tx);
    for (kind, sig) in kinds {
        let mut stream = signal(kind).map_err(|source| SupervisorError::Runtime {
            action: "install signal handlers",
            source,
        })?;
        let shim = Arc::clone(&shim);
        let stop_tx = Arc::clone(&stop_tx);
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let state = lock(&shim.state).job;
                match state {
                    JobState::Running | JobState::Checkpointing | JobState::Starting => {
                        let _ = kill(shim.init, sig);
                    }
                    JobState::Migrated | JobState::Exited { .. } => {
                        if matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
                            let _ = stop_tx.send(true);
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Path of the control socket in `control_dir`.
pub fn socket_path(control_dir: &Path) -> PathBuf {
    control_dir.join(SOCKET_NAME)
}
