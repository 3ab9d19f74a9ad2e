//! The one-machine migration demo behind `make demo`: for each strategy, a real
//! `lodger-workload` runs under a real `lodger-shim` inside "node-a" (its own PID and mount
//! namespaces, made with `unshare`), the owner of node-a "returns", and this program, acting as
//! node-a's node agent, asks the shim over its control socket to checkpoint the job to a staging
//! directory (standing in for the shared volume). A second `lodger-shim` in "node-b" restores it.
//! The job's output from both nodes is then checked for continuity and summarised.
//!
//! Nothing is simulated but the trigger (the owner's return) and the operator's decision: the
//! namespaces, the shims, the socket protocol, CRIU and the job are the real ones.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use lodger_engine::Engine;
use lodger_shim::control::{
    self, CheckpointOutcome, CheckpointRequest, ErrorKind, JobIdentity, Op, Reply,
    SignalDisposition, Strategy,
};

use crate::continuity::{self, Summary};
use crate::record::Record;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step failed.
    #[error("failed to {action}: {detail}")]
    Step {
        /// What was being done.
        action: String,
        /// What went wrong (with a pointer to logs).
        detail: String,
    },
}

fn step(action: impl Into<String>, detail: impl std::fmt::Display) -> DemoError {
    DemoError::Step {
        action: action.into(),
        detail: detail.to_string(),
    }
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Strategies to demonstrate, in order.
    pub strategies: Vec<Strategy>,
    /// Working directory (volume, node control dirs, job files, logs); emptied first.
    pub dir: PathBuf,
    /// `lodger-shim` binary.
    pub shim: PathBuf,
    /// `lodger-workload` binary.
    pub workload: PathBuf,
    /// CRIU binary.
    pub criu: PathBuf,
    /// MiB of workload memory.
    pub mem_mib: u64,
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Ticks to let run on each node.
    pub ticks_per_node: u64,
}

/// The outcome of one strategy's migration, for the final table and for tests.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// Strategy requested.
    pub requested: Strategy,
    /// What the shim reported.
    pub outcome: CheckpointOutcome,
    /// Continuity summary of node-a's output followed by node-b's.
    pub summary: Summary,
    /// Last tick printed on node-a.
    pub last_tick_a: u64,
    /// First tick printed on node-b.
    pub first_tick_b: u64,
    /// PID of the job inside its namespace on node-a and on node-b.
    pub pids: (i32, i32),
    /// File offset at the last tick on node-a and the first on node-b.
    pub offsets: (u64, u64),
    /// Milliseconds from the job stopping on node-a to its first tick read from node-b.
    pub downtime_ms: u64,
    /// Part of the downtime until node-a's shim answered that the checkpoint was complete.
    pub checkpoint_part_ms: u64,
    /// The job's own view: its CLOCK_MONOTONIC between its last tick on node-a and its first on
    /// node-b. CRIU restores the job in a time namespace whose offsets make the clock continue
    /// from where it stopped, so this is much less than the wall-clock downtime.
    pub job_clock_gap_ms: u64,
    /// Exit code node-b's shim returned.
    pub exit_code: Option<i32>,
}

/// A line the job printed, with the Unix ms at which the demo read it.
#[derive(Debug)]
struct Seen {
    at_unix_ms: u64,
    line: String,
}

/// One "node": a shim as PID 1 of fresh PID and mount namespaces.
#[derive(Debug)]
struct Node {
    name: &'static str,
    child: Child,
    lines: Receiver<Seen>,
    control_dir: PathBuf,
    log: PathBuf,
    records: Vec<(u64, Record)>,
}

fn read_lines(stdout: ChildStdout) -> Receiver<Seen> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx
                .send(Seen {
                    at_unix_ms: lodger_engine::unix_ms(),
                    line,
                })
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

impl Node {
    fn start(
        name: &'static str,
        dir: &Path,
        shim: &Path,
        args: &[String],
    ) -> Result<Self, DemoError> {
        let node_dir = dir.join(name);
        let control_dir = node_dir.join("control");
        std::fs::create_dir_all(&control_dir).map_err(|e| step("create the node's dirs", e))?;
        let log = node_dir.join("shim.log");
        let log_file = std::fs::File::create(&log).map_err(|e| step("create the shim's log", e))?;
        // NB: `--kill-child`: when this program dies, the node's PID 1 (the shim) dies, and the
        // kernel then kills everything in the node's PID namespace. Nothing is left behind.
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .arg("--kill-child")
            .arg("--")
            .arg(shim)
            .arg("--control-dir")
            .arg(&control_dir)
            .args(args)
            .env("LODGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| step(format!("start {name}"), e))?;
        let stdout = child.stdout.take().expect("stdout was piped above");
        Ok(Self {
            name,
            child,
            lines: read_lines(stdout),
            control_dir,
            log,
            records: Vec::new(),
        })
    }

    fn socket(&self) -> PathBuf {
        self.control_dir.join(control::SOCKET_NAME)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        format!("{} shim log {}:\n    {tail}", self.name, self.log.display())
    }

    /// Returns the first record of this node (already read or still to come) that satisfies
    /// `pred`; every record read is kept.
    fn wait_record(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Result<(u64, Record), DemoError> {
        if let Some((at, r)) = self.records.iter().find(|(_, r)| pred(r)) {
            return Ok((*at, r.clone()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(seen) => {
                    let record: Record = seen.line.parse().map_err(|e| {
                        step(
                            format!("read {}'s job output", self.name),
                            format!("{e}: {:?}", seen.line),
                        )
                    })?;
                    self.records.push((seen.at_unix_ms, record.clone()));
                    if pred(&record) {
                        return Ok((seen.at_unix_ms, record));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(step(
                        format!("see {what} on {}", self.name),
                        format!("nothing within {timeout:?}\n  {}", self.log_tail()),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    return Err(step(
                        format!("see {what} on {}", self.name),
                        format!("its shim ended ({status:?})\n  {}", self.log_tail()),
                    ));
                }
            }
        }
    }

    /// Waits for the shim to exit and reads the rest of its job's output.
    fn finish(&mut self, timeout: Duration) -> Result<ExitStatus, DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(seen) => {
                    let record: Record = seen
                        .line
                        .parse()
                        .map_err(|e| step(format!("read {}'s job output", self.name), e))?;
                    self.records.push((seen.at_unix_ms, record));
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(step(
                        format!("see {}'s shim exit", self.name),
                        format!("still running after {timeout:?}\n  {}", self.log_tail()),
                    ));
                }
            }
        }
        self.child
            .wait()
            .map_err(|e| step(format!("wait for {}", self.name), e))
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (_, r) in &self.records {
            let _ = writeln!(out, "{r}");
        }
        out
    }

    fn ticks(&self) -> impl DoubleEndedIterator<Item = &crate::record::TickRecord> {
        self.records.iter().filter_map(|(_, r)| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // NB: on any early return the node goes away with everything in it (see --kill-child).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Talks to a shim's control socket (the node agent's side of shim/src/control.rs).
#[derive(Debug)]
struct Agent {
    runtime: tokio::runtime::Runtime,
}

impl Agent {
    fn new() -> Result<Self, DemoError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| step("start an async runtime", e))?;
        Ok(Self { runtime })
    }

    fn call(&self, socket: &Path, op: Op) -> Result<Reply, DemoError> {
        self.runtime
            .block_on(control::call(socket, op, Duration::from_secs(120)))
            .map_err(|e| step("talk to the shim", e))
    }

    /// Waits until the shim answers `status` with a running job.
    fn wait_running(&self, node: &Node, timeout: Duration) -> Result<(), DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            if node.socket().exists()
                && let Ok(Reply::Status(s)) = self.call(&node.socket(), Op::Status)
                && s.job == control::JobState::Running
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(step(
                    format!("reach {}'s shim", node.name),
                    format!("no running job within {timeout:?}\n  {}", node.log_tail()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, node: &Node, signo: i32, seq: u64) -> Result<Reply, DemoError> {
        self.call(&node.socket(), Op::Signal { signo, seq })
    }

    /// Checkpoints, and sends `signal` (signo, seq) while the checkpoint runs.
    fn checkpoint_with_signal(
        &self,
        node: &Node,
        req: CheckpointRequest,
        signal: (i32, u64),
    ) -> Result<(Reply, Reply), DemoError> {
        let socket = node.socket();
        let (ck, sig) = self.runtime.block_on(async {
            let ck = control::call(&socket, Op::Checkpoint(req), Duration::from_secs(120));
            let sig = async {
                // Send the signal once the shim says the checkpoint is under way (or over).
                let limit = Instant::now() + Duration::from_secs(10);
                while Instant::now() < limit {
                    match control::call(&socket, Op::Status, Duration::from_secs(5)).await {
                        Ok(Reply::Status(s))
                            if s.job == control::JobState::Checkpointing
                                || s.job == control::JobState::Migrated =>
                        {
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                // As the node agent does: while the shim is sealing the image (Busy), retry.
                loop {
                    let reply = control::call(
                        &socket,
                        Op::Signal {
                            signo: signal.0,
                            seq: signal.1,
                        },
                        Duration::from_secs(120),
                    )
                    .await;
                    match &reply {
                        Ok(Reply::Error(e))
                            if e.kind == ErrorKind::Busy && Instant::now() < limit =>
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        _ => break reply,
                    }
                }
            };
            tokio::join!(ck, sig)
        });
        Ok((
            ck.map_err(|e| step("checkpoint through the shim", e))?,
            sig.map_err(|e| step("signal through the shim", e))?,
        ))
    }
}

const SIGHUP: i32 = 1;
const SIGUSR1: i32 = 10;
const SIGUSR2: i32 = 12;
const SIGTERM: i32 = 15;

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Signal(s) => format!("{:?}", s.disposition).to_lowercase(),
        Reply::Error(e) => format!("error {:?}: {}", e.kind, e.message),
        other => format!("{other:?}"),
    }
}

/// Runs one strategy's migration.
pub fn migrate_once(
    cfg: &DemoConfig,
    agent_seq: &mut u64,
    requested: Strategy,
) -> Result<MigrationReport, DemoError> {
    let dir = cfg.dir.join(format!("{requested:?}").to_lowercase());
    let volume = dir.join("volume");
    let work = dir.join("work");
    std::fs::create_dir_all(&volume).map_err(|e| step("create the volume dir", e))?;
    std::fs::create_dir_all(&work).map_err(|e| step("create the job's work dir", e))?;
    let job = JobIdentity {
        namespace: "demo".into(),
        name: "counter".into(),
        uid: format!("demo-{}", lodger_engine::unix_ms()),
    };
    let page_port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| step("find a free loopback port", e))?
        .port();
    let common = |extra: &[String]| -> Vec<String> {
        let mut v = vec![
            "--checkpoint-root".into(),
            volume.display().to_string(),
            "--criu".into(),
            cfg.criu.display().to_string(),
            "--job-namespace".into(),
            job.namespace.clone(),
            "--job-name".into(),
            job.name.clone(),
            "--job-uid".into(),
            job.uid.clone(),
            "--exit-after-migration".into(),
        ];
        v.extend_from_slice(extra);
        v
    };
    let workload_cmd: Vec<String> = vec![
        cfg.workload.display().to_string(),
        "--mem-mib".into(),
        cfg.mem_mib.to_string(),
        "--tick-ms".into(),
        cfg.tick_ms.to_string(),
        "--verify-every".into(),
        "0".into(),
        "--file".into(),
        work.join("ticks").display().to_string(),
        "--signals-file".into(),
        work.join("signals").display().to_string(),
        "--child".into(),
    ];
    let agent = Agent::new()?;
    let ready_timeout = Duration::from_secs(30);
    let tick_timeout = Duration::from_millis(cfg.tick_ms * cfg.ticks_per_node * 4 + 5000);

    // ---- node-a: start ----
    let mut args_a = common(&["--page-server-port".into(), page_port.to_string()]);
    args_a.push("--".into());
    args_a.extend(workload_cmd.iter().cloned());
    let mut node_a = Node::start("node-a", &dir, &cfg.shim, &args_a)?;
    let (_, start) = node_a.wait_record("the job start", ready_timeout, |r| {
        matches!(r, Record::Start(_))
    })?;
    if let Record::Start(s) = &start {
        say(format!(
            "  node-a  job started under lodger-shim: pid {} in its PID namespace, {} MiB, checksum {}, echo child pid {}",
            s.pid,
            s.mem_mib,
            s.sum,
            s.child_pid.map_or("-".into(), |p| p.to_string())
        ));
    }
    agent.wait_running(&node_a, ready_timeout)?;
    let half = cfg.ticks_per_node / 2;
    node_a.wait_record(
        "tick",
        tick_timeout,
        |r| matches!(r, Record::Tick(t) if t.tick >= half),
    )?;
    *agent_seq += 1;
    let usr1 = agent.signal(&node_a, SIGUSR1, *agent_seq)?;
    node_a.wait_record(
        "SIGUSR1",
        tick_timeout,
        |r| matches!(r, Record::Signal(s) if s.signo == SIGUSR1),
    )?;
    say(format!(
        "  node-a  SIGUSR1 sent through the control socket (seq {}): {} — the job logged it",
        *agent_seq,
        describe_reply(&usr1)
    ));
    let (_, last_before) = node_a.wait_record(
        "tick",
        tick_timeout,
        |r| matches!(r, Record::Tick(t) if t.tick >= cfg.ticks_per_node),
    )?;
    say(format!("  node-a  {last_before}"));

    // ---- the owner returns: checkpoint through the shim ----
    *agent_seq += 1;
    let mid_seq = *agent_seq;
    say(format!(
        "  owner returns to node-a → node agent asks node-a's shim to checkpoint ({requested:?}) to demo/counter/1; SIGUSR2 (seq {mid_seq}) sent meanwhile"
    ));
    let req = CheckpointRequest {
        path: PathBuf::from("demo/counter/1"),
        strategy: requested,
        leave_running: false,
        job: job.clone(),
        seq: 1,
        deadline_ms: 60_000,
    };
    let (ck, mid_signal) = agent.checkpoint_with_signal(&node_a, req, (SIGUSR2, mid_seq))?;
    let checkpoint_done_at = lodger_engine::unix_ms();
    let outcome = match ck {
        Reply::Checkpointed(o) => o,
        other => {
            return Err(step(
                "checkpoint the job on node-a",
                format!("{}\n  {}", describe_reply(&other), node_a.log_tail()),
            ));
        }
    };
    let mid_queued = matches!(
        mid_signal,
        Reply::Signal(s) if s.disposition == SignalDisposition::Queued
    );
    let mid_arrived_late =
        matches!(&mid_signal, Reply::Error(e) if e.kind == ErrorKind::NotRunning);
    say(format!(
        "  node-a  checkpointed with {:?}{}: image {:.1} MiB, job frozen {} ms, checkpoint took {} ms; the SIGUSR2: {}",
        outcome.strategy,
        outcome
            .fallback_reason
            .as_ref()
            .map_or(String::new(), |r| format!(" (fell back: {r})")),
        outcome.image_bytes as f64 / 1048576.0,
        outcome.freeze_ms,
        outcome.duration_ms,
        describe_reply(&mid_signal),
    ));

    // ---- node-b: restore ----
    let mut args_b = common(&["--restore".into(), "demo/counter/1".into()]);
    args_b.push("--".into());
    args_b.extend(workload_cmd.iter().cloned());
    let mut node_b = Node::start("node-b", &dir, &cfg.shim, &args_b)?;
    let (first_at, first_b) =
        node_b.wait_record("the restored job's first tick", ready_timeout, |r| {
            matches!(r, Record::Tick(_))
        })?;
    let stopped_at = outcome.stopped_at_unix_ms.unwrap_or(first_at);
    let downtime_ms = first_at.saturating_sub(stopped_at);
    say(format!(
        "  node-b  restored from demo/counter/1 by a new lodger-shim; first tick read {downtime_ms} ms after the job stopped on node-a"
    ));
    say(format!("  node-b  {first_b}"));
    let Record::Tick(first_tick) = first_b else {
        unreachable!("wait_record matched a tick")
    };
    agent.wait_running(&node_b, ready_timeout)?;
    if mid_arrived_late {
        // The signal reached node-a after the job had left: the node agent delivers it on the
        // job's new node with the same seq (exactly once).
        let r = agent.signal(&node_b, SIGUSR2, mid_seq)?;
        say(format!(
            "  node-b  SIGUSR2 (seq {mid_seq}) had arrived after the job left node-a; re-sent here: {}",
            describe_reply(&r)
        ));
    }
    node_b.wait_record(
        "the mid-migration SIGUSR2",
        tick_timeout,
        |r| matches!(r, Record::Signal(s) if s.signo == SIGUSR2),
    )?;
    let (_, verified) = node_b.wait_record(
        "a verified checksum",
        tick_timeout,
        |r| matches!(r, Record::Tick(t) if t.sum.is_some()),
    )?;
    if let Record::Tick(t) = &verified {
        say(format!(
            "  node-b  the job received SIGUSR2 {} and verified its memory: checksum {}",
            if mid_queued {
                "(queued during the checkpoint, delivered once after the restore)"
            } else {
                "(delivered once)"
            },
            t.sum.as_deref().unwrap_or("-")
        ));
    }
    let dup = agent.signal(&node_b, SIGUSR2, mid_seq)?;
    say(format!(
        "  node-b  the node agent retries SIGUSR2 seq {mid_seq}: {} (not delivered twice)",
        describe_reply(&dup)
    ));
    let end_tick = first_tick.tick + cfg.ticks_per_node;
    node_b.wait_record(
        "ticks",
        tick_timeout,
        |r| matches!(r, Record::Tick(t) if t.tick >= end_tick),
    )?;
    *agent_seq += 1;
    let hup = agent.signal(&node_b, SIGHUP, *agent_seq)?;
    *agent_seq += 1;
    let term = agent.signal(&node_b, SIGTERM, *agent_seq)?;
    say(format!(
        "  node-b  SIGHUP (seq {}) {} and SIGTERM (seq {}) {}",
        *agent_seq - 1,
        describe_reply(&hup),
        *agent_seq,
        describe_reply(&term)
    ));
    let status_b = node_b.finish(Duration::from_secs(30))?;
    let status_a = node_a.finish(Duration::from_secs(30))?;
    if !status_a.success() {
        return Err(step(
            "see node-a's shim exit 0 after the migration",
            format!("{status_a}\n  {}", node_a.log_tail()),
        ));
    }

    // ---- continuity ----
    let text = format!("{}{}", node_a.text(), node_b.text());
    let summary = continuity::check_text(&text).map_err(|e| {
        step(
            "find the job's output continuous across the migration",
            format!("{e}\n  node-a + node-b output: {}", dir.display()),
        )
    })?;
    let last_a = node_a.ticks().next_back().cloned();
    let last_a = last_a.ok_or_else(|| step("see node-a's ticks", "none"))?;
    let signals_file = std::fs::read_to_string(work.join("signals")).unwrap_or_default();
    let logged: Vec<String> = signals_file
        .lines()
        .filter_map(|l| match l.parse::<Record>() {
            Ok(Record::Signal(s)) => Some(s.name),
            _ => None,
        })
        .collect();
    if logged != summary.signals {
        return Err(step(
            "find every signal in the job's signals file",
            format!("file has {logged:?}, output has {:?}", summary.signals),
        ));
    }
    // NB: images hold the job's memory (treated like Secrets); logs stay for reading.
    let _ = std::fs::remove_dir_all(&volume);
    Ok(MigrationReport {
        requested,
        outcome,
        last_tick_a: last_a.tick,
        first_tick_b: first_tick.tick,
        pids: (last_a.pid, first_tick.pid),
        offsets: (
            last_a.file_off.unwrap_or(0),
            first_tick.file_off.unwrap_or(0),
        ),
        downtime_ms,
        checkpoint_part_ms: checkpoint_done_at.saturating_sub(stopped_at),
        job_clock_gap_ms: first_tick.up_ms.saturating_sub(last_a.up_ms),
        exit_code: status_b.code(),
        summary,
    })
}

fn print_report(r: &MigrationReport) {
    let s = &r.summary;
    say(format!(
        "  ✓ counter   ticks {}–{} on node-a, {}–{} on node-b: no gap, no repeat",
        s.first_tick.unwrap_or(0),
        r.last_tick_a,
        r.first_tick_b,
        s.last_tick.unwrap_or(0)
    ));
    say(format!(
        "  ✓ pid       {} on node-a → {} on node-b (inside the job's PID namespace); echo child answered every tick",
        r.pids.0, r.pids.1
    ));
    say(format!(
        "  ✓ file      offset {} → {} through the same open fd (= bytes written; {} at the end)",
        r.offsets.0,
        r.offsets.1,
        s.file_off.unwrap_or(0)
    ));
    say(format!(
        "  ✓ memory    {} MiB, checksum {} unchanged ({} verification(s))",
        s.mem_mib.unwrap_or(0),
        s.sum.as_deref().unwrap_or("-"),
        s.verified_ticks + 1
    ));
    say(format!(
        "  ✓ signals   {} (each once, also mid-migration); exit code {} reported by node-b's shim",
        s.signals.join(", "),
        r.exit_code.map_or("-".into(), |c| c.to_string())
    ));
    say(format!(
        "  ⏱ frozen {} ms by CRIU's count; downtime {} ms from the job stopping on node-a to its first tick on node-b ({} ms until the checkpoint was complete, {} ms to start node-b's shim, verify the image and restore); the job's own monotonic clock moved only {} ms across it (CRIU's time namespace)",
        r.outcome.freeze_ms,
        r.downtime_ms,
        r.checkpoint_part_ms,
        r.downtime_ms.saturating_sub(r.checkpoint_part_ms),
        r.job_clock_gap_ms
    ));
}

/// Runs the whole demo, printing the transcript; returns one report per strategy that worked
/// and the failures.
pub fn run(cfg: &DemoConfig) -> (Vec<MigrationReport>, Vec<String>) {
    let _ = std::fs::remove_dir_all(&cfg.dir);
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    match Engine::new(&cfg.criu, &cfg.dir) {
        Ok(engine) => {
            let f = engine.criu().features();
            say(format!(
                "Lodger demo — CRIU {} at {}, kernel {}",
                engine.criu().version(),
                cfg.criu.display(),
                lodger_engine::kernel_release()
            ));
            say(format!(
                "  kernel features: userfaultfd {} (LazyRestore, PostCopy), soft-dirty tracking {} (PreCopy)",
                if f.uffd && f.uffd_noncoop {
                    "yes"
                } else {
                    "no"
                },
                if f.mem_dirty_track { "yes" } else { "no" },
            ));
            for s in &cfg.strategies {
                let (used, why) = engine.plan(convert_strategy(*s), false);
                if let Some(why) = why {
                    say(format!("  {s:?} will fall back to {used}: {why}"));
                }
            }
        }
        Err(e) => {
            failures.push(format!("CRIU: {e}"));
            return (reports, failures);
        }
    }
    say(format!(
        "  nodes: two PID+mount namespaces made with unshare on this machine (one network, one disk); \
         the checkpoint volume and the job's files are directories under {}",
        cfg.dir.display()
    ));
    say(
        "  real: lodger-shim (PID 1 of each node), its control socket, CRIU, the job and its echo child; \
         simulated: the owner's return and the operator's decision (this program plays the node agent)\n",
    );
    let mut seq = 0u64;
    for &s in &cfg.strategies {
        say(format!("== {s:?} =="));
        let started = Instant::now();
        match migrate_once(cfg, &mut seq, s) {
            Ok(r) => {
                print_report(&r);
                reports.push(r);
            }
            Err(e) => {
                say(format!("  ✗ {s:?} failed: {e}"));
                failures.push(format!("{s:?}: {e}"));
            }
        }
        say(format!("  ({:.1} s)\n", started.elapsed().as_secs_f64()));
    }
    (reports, failures)
}

fn convert_strategy(s: Strategy) -> lodger_engine::Strategy {
    match s {
        Strategy::StopAndCopy => lodger_engine::Strategy::StopAndCopy,
        Strategy::LazyRestore => lodger_engine::Strategy::LazyRestore,
        Strategy::PostCopy => lodger_engine::Strategy::PostCopy,
        Strategy::PreCopy => lodger_engine::Strategy::PreCopy,
    }
}

/// The closing table: one row per strategy.
pub fn summary_table(reports: &[MigrationReport]) -> String {
    let mut t = String::from(
        "| requested | used | freeze ms | downtime ms | image MiB | ticks a → b | pid a → b | checksum |\n|---|---|---:|---:|---:|---|---|---|\n",
    );
    for r in reports {
        let _ = writeln!(
            t,
            "| {:?} | {:?} | {} | {} | {:.1} | {} → {} | {} → {} | {} |",
            r.requested,
            r.outcome.strategy,
            r.outcome.freeze_ms,
            r.downtime_ms,
            r.outcome.image_bytes as f64 / 1048576.0,
            r.last_tick_a,
            r.first_tick_b,
            r.pids.0,
            r.pids.1,
            r.summary.sum.as_deref().unwrap_or("-"),
        );
    }
    t
}
