//! Test harness: "nodes" are `lodger-shim` processes started through
//! `unshare --pid --mount --fork --mount-proc --kill-child`, so each has its own PID and mount
//! namespace (like a container) and shares only the staging directory with the others. Dropping
//! a [`Node`] SIGKILLs its `unshare`, whose `--kill-child` kills the shim, PID 1 of the node's
//! namespace, and with it every process of the node (the job included); mounts made inside the
//! node's mount namespace go with it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lodger_shim::control::{self, CheckpointRequest, JobIdentity, Op, Reply, Strategy};

/// Generous bound for anything a test waits for; never reached when things work.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub const SHIM: &str = env!("CARGO_BIN_EXE_lodger-shim");
pub const TESTJOB: &str = env!("CARGO_BIN_EXE_lodger-testjob");

/// Output lines of a node, with a condition variable to wait on.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until some line satisfies `pred`, returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; output: {:?}",
                lines.iter().rev().take(10).collect::<Vec<_>>()
            );
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// A scratch area: staging (checkpoint root) shared by all nodes, a control dir per node.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lodger-shim-test")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        Self { dir }
    }

    pub fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn job() -> JobIdentity {
    JobIdentity {
        namespace: "lab".into(),
        name: "render".into(),
        uid: "uid-1".into(),
    }
}

/// How to start a node.
pub struct NodeSpec {
    pub name: String,
    pub checkpoint_root: PathBuf,
    pub criu: String,
    pub job_uid: String,
    pub restore: Option<String>,
    pub extra: Vec<String>,
    /// Shell run inside the node's mount namespace before the shim (e.g. mounting a tmpfs).
    pub setup: Option<String>,
    /// Capability bounding set for the shim (`setpriv --bounding-set`), like a pod's
    /// `capabilities: {drop: [ALL], add: [...]}`; None = all of root's.
    pub caps: Option<String>,
    pub command: Vec<String>,
}

impl NodeSpec {
    pub fn new(lab: &Lab, name: &str) -> Self {
        Self {
            name: name.into(),
            checkpoint_root: lab.staging(),
            criu: lodger_engine::DEFAULT_CRIU_PATH.into(),
            job_uid: job().uid,
            restore: None,
            extra: vec!["--exit-after-migration".into()],
            setup: None,
            caps: None,
            command: Vec::new(),
        }
    }

    pub fn testjob(mut self, args: &[&str]) -> Self {
        self.command = std::iter::once(TESTJOB.to_owned())
            .chain(args.iter().map(|a| a.to_string()))
            .collect();
        self
    }

    pub fn restore(mut self, path: &str) -> Self {
        self.restore = Some(path.into());
        self
    }
}

/// A running node.
pub struct Node {
    child: Child,
    pub control_dir: PathBuf,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Node {
    pub fn start(lab: &Lab, spec: NodeSpec) -> Self {
        let control_dir = lab.path(&format!("control-{}", spec.name));
        std::fs::create_dir_all(&control_dir).unwrap();
        let mut shim: Vec<String> = Vec::new();
        if let Some(caps) = &spec.caps {
            shim.extend(["setpriv".into(), "--bounding-set".into(), caps.clone()]);
        }
        shim.extend([
            SHIM.to_owned(),
            "--control-dir".into(),
            control_dir.display().to_string(),
            "--checkpoint-root".into(),
            spec.checkpoint_root.display().to_string(),
            "--criu".into(),
            spec.criu.clone(),
            "--job-namespace".into(),
            job().namespace,
            "--job-name".into(),
            job().name,
            "--job-uid".into(),
            spec.job_uid.clone(),
        ]);
        if let Some(r) = &spec.restore {
            shim.push("--restore".into());
            shim.push(r.clone());
        }
        shim.extend(spec.extra.iter().cloned());
        shim.push("--".into());
        shim.extend(spec.command.iter().cloned());
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--mount", "--fork", "--mount-proc", "--kill-child"]);
        match &spec.setup {
            Some(setup) => {
                cmd.args(["sh", "-c", &format!("{setup} && exec \"$@\""), "node"]);
                cmd.args(&shim);
            }
            None => {
                cmd.args(&shim);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("LODGER_LOG", "info");
        let mut child = cmd.spawn().expect("unshare is installed (util-linux)");
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        let mut readers = Vec::new();
        for (pipe, lines) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
            ),
            (Box::new(child.stderr.take().unwrap()), Arc::clone(&stderr)),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lines.push(line);
                }
            }));
        }
        Self {
            child,
            control_dir,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    /// PID (in the test's namespace) of the node's shim: the child of `unshare`.
    pub fn shim_pid(&self) -> u32 {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("unshare has forked")
            .parse()
            .unwrap()
    }

    pub fn socket(&self) -> PathBuf {
        self.control_dir.join(control::SOCKET_NAME)
    }

    /// One control request; waits for the socket to appear first.
    pub fn call(&self, op: Op) -> Reply {
        control_call(&self.socket(), op, || self.stderr.snapshot())
    }

    pub fn checkpoint(
        &self,
        path: &str,
        seq: u64,
        strategy: Strategy,
        leave_running: bool,
    ) -> Reply {
        self.call(checkpoint_op(path, seq, strategy, leave_running))
    }

    pub fn signal(&self, signo: i32, seq: u64) -> Reply {
        self.call(Op::Signal { signo, seq })
    }

    /// Waits for the node to end; returns the shim's exit code.
    pub fn wait(&mut self) -> i32 {
        let stderr = Arc::clone(&self.stderr);
        let status = wait_exit(&mut self.child, &mut self.readers, "node", || {
            stderr.snapshot()
        });
        self.status = Some(status);
        status.code().unwrap_or(-1)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One control request to the shim listening on `socket`, waiting for the socket to appear
/// first; panics with `stderr()` (the shim's log) on any other failure.
pub fn control_call(socket: &Path, op: Op, stderr: impl Fn() -> Vec<String>) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    loop {
        match rt.block_on(control::call(socket, op.clone(), PATIENCE)) {
            Ok(reply) => return reply,
            Err(control::ClientError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("control call failed: {e}; stderr: {:?}", stderr()),
        }
    }
}

/// The checkpoint request the tests send: the test job, a 120 s deadline.
pub fn checkpoint_op(path: &str, seq: u64, strategy: Strategy, leave_running: bool) -> Op {
    Op::Checkpoint(CheckpointRequest {
        path: path.into(),
        strategy,
        leave_running,
        job: job(),
        seq,
        deadline_ms: 120_000,
    })
}

/// Waits (at most [`PATIENCE`]) for `child` to exit, then for its output readers to drain;
/// panics with `what` and `stderr()` if it does not.
pub fn wait_exit(
    child: &mut Child,
    readers: &mut Vec<std::thread::JoinHandle<()>>,
    what: &str,
    stderr: impl Fn() -> Vec<String>,
) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            for r in readers.drain(..) {
                let _ = r.join();
            }
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit; stderr: {:?}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parsed `tick=` line of lodger-testjob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub n: u64,
    pub pid: u64,
    pub child: u64,
    pub relay: u64,
    pub off: u64,
}

pub fn ticks(lines: &[String]) -> Vec<Tick> {
    lines
        .iter()
        .filter(|l| l.starts_with("tick="))
        .map(|l| {
            let field = |name: &str| -> u64 {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("bad tick line {l:?}"))
            };
            Tick {
                n: field("tick="),
                pid: field("pid="),
                child: field("child="),
                relay: field("relay="),
                off: field("off="),
            }
        })
        .collect()
}

pub fn last_tick(lines: &Lines) -> u64 {
    ticks(&lines.snapshot()).last().map(|t| t.n).unwrap_or(0)
}

/// Waits until the node has printed tick `n`.
pub fn wait_tick(node: &Node, n: u64) {
    node.stdout.wait_for(&format!("tick {n}"), |l| {
        l.starts_with("tick=") && ticks(&[l.to_owned()])[0].n >= n
    });
}

/// (relative path, size, mode, mtime) of every entry below `dir`: proof a restore changed nothing.
pub fn tree_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let content = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.push((
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                m.len(),
                m.mode(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                content,
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}
