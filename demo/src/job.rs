//! Running the demo workload as a migratable job without a shim: PID 1 of its own PID namespace
//! and session leader (`unshare --pid --fork -- setsid ...`), stdout to a file, so that CRIU can
//! dump the tree from outside and restore it detached. Used by the benchmark (the engine library
//! and raw CRIU both act on such a job) and by tests.
//!
//! The caller must be a child subreaper ([`become_subreaper`]): a restored tree is reparented to
//! it when CRIU exits, and [`Workload::stop`] reaps it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::record::Record;

/// Errors of running a workload.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// IO around the workload (spawn, files, /proc).
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("failed to {action}: {source}")]
    Sys {
        /// What was being done.
        action: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The workload did not print what was awaited in time.
    #[error("timed out after {0:?} waiting for the workload to {1}")]
    Timeout(Duration, String),
    /// The workload is gone.
    #[error("the workload exited before it {0}")]
    Exited(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> JobError {
    let action = action.into();
    move |source| JobError::Io { action, source }
}

fn sys(action: impl Into<String>) -> impl FnOnce(nix::Error) -> JobError {
    let action = action.into();
    move |source| JobError::Sys { action, source }
}

/// Makes this process the reaper of orphaned descendants (restored trees land here).
pub fn become_subreaper() -> Result<(), JobError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("become a child subreaper"))
}

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Path of the `lodger-workload` binary.
    pub bin: PathBuf,
    /// MiB of patterned memory.
    pub mem_mib: u64,
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Verify every K ticks (0: only at start and on SIGUSR2).
    pub verify_every: u64,
    /// Fork the echo child.
    pub child: bool,
    /// Directory for `out.log` (stdout), `err.log` (stderr) and `ticks` (the tick file).
    pub dir: PathBuf,
}

impl WorkloadSpec {
    /// The workload next to the running executable (both are built into the same target dir).
    pub fn sibling_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("lodger-workload")))
            .unwrap_or_else(|| PathBuf::from("lodger-workload"))
    }

    /// The workload's command line (without any namespace wrapper).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.bin.display().to_string(),
            "--mem-mib".into(),
            self.mem_mib.to_string(),
            "--tick-ms".into(),
            self.tick_ms.to_string(),
            "--verify-every".into(),
            self.verify_every.to_string(),
            "--file".into(),
            self.dir.join("ticks").display().to_string(),
        ];
        if self.child {
            argv.push("--child".into());
        }
        argv
    }
}

/// A workload running in its own PID namespace, or restored from one.
#[derive(Debug)]
pub struct Workload {
    launcher: Option<Child>,
    /// PID (in our namespace) of the workload's init.
    pub pid: i32,
    out: PathBuf,
    reaped: bool,
}

impl Workload {
    /// Starts the workload and waits (up to `timeout`) for its start line.
    pub fn start(spec: &WorkloadSpec, timeout: Duration) -> Result<Self, JobError> {
        std::fs::create_dir_all(&spec.dir).map_err(io("create the workload's directory"))?;
        let out = spec.dir.join("out.log");
        let stdout = File::create(&out).map_err(io("create out.log"))?;
        // NB: the workload shares the host's /proc (no mount namespace), so CRIU's parasite
        // cannot use /proc/self and mounts a proc at `proc.crtools` in the job's working
        // directory. Two dumps in one directory race on that mkdir ("Can't get /proc fd"), so
        // every workload runs in its own directory.
        // NB: the workload's stderr must not be shared with `unshare`, which writes a warning
        // when its child is dumped and killed: CRIU refuses to restore a file whose size changed.
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--", "setsid", "sh", "-c"])
            .arg(format!(
                "exec \"$0\" \"$@\" 2>'{}'",
                spec.dir.join("err.log").display()
            ))
            .args(spec.argv())
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null());
        let mut launcher = cmd.spawn().map_err(io("spawn unshare"))?;
        let lpid = launcher.id();
        let deadline = Instant::now() + timeout;
        let children = format!("/proc/{lpid}/task/{lpid}/children");
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                break pid;
            }
            if let Ok(Some(status)) = launcher.try_wait() {
                return Err(JobError::Exited(format!("started ({status})")));
            }
            if Instant::now() > deadline {
                let _ = launcher.kill();
                let _ = launcher.wait();
                return Err(JobError::Timeout(timeout, "start".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let job = Self {
            launcher: Some(launcher),
            pid,
            out,
            reaped: false,
        };
        job.wait_for("print its start line", deadline, |r| {
            matches!(r, Record::Start(_))
        })?;
        Ok(job)
    }

    /// Path of the workload's stdout.
    pub fn out_path(&self) -> &Path {
        &self.out
    }

    /// Every complete record printed so far.
    pub fn records(&self) -> Result<Vec<Record>, JobError> {
        let text = std::fs::read_to_string(&self.out).map_err(io("read out.log"))?;
        Ok(complete_lines(&text)
            .filter_map(|l| l.parse().ok())
            .collect())
    }

    /// Waits until a record satisfies `pred`, polling the output every few milliseconds.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Instant,
        pred: impl Fn(&Record) -> bool,
    ) -> Result<Record, JobError> {
        loop {
            if let Some(r) = self.records()?.into_iter().find(&pred) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(JobError::Timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    what.into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last tick printed so far.
    pub fn last_tick(&self) -> Result<u64, JobError> {
        Ok(self
            .records()?
            .iter()
            .rev()
            .find_map(|r| match r {
                Record::Tick(t) => Some(t.tick),
                _ => None,
            })
            .unwrap_or(0))
    }

    /// After a dump stopped the original: reaps the launcher (it exits with its child).
    pub fn reap_launcher(&mut self) {
        if let Some(mut l) = self.launcher.take() {
            let _ = l.wait();
        }
    }

    /// After a restore: the workload now runs as `pid` (reparented to us, the subreaper).
    pub fn adopt(&mut self, pid: i32) {
        self.reap_launcher();
        self.pid = pid;
    }

    /// Sends `signal` to the workload's init.
    pub fn signal(&self, signal: Signal) -> Result<(), JobError> {
        kill(Pid::from_raw(self.pid), signal).map_err(sys(format!("send {signal} to the workload")))
    }

    /// Asks for a checksum verification (SIGUSR2) and waits for the verified tick after
    /// `after_tick`; returns that tick's checksum.
    pub fn verify(&self, after_tick: u64, timeout: Duration) -> Result<String, JobError> {
        self.signal(Signal::SIGUSR2)?;
        let r = self.wait_for(
            "verify its memory",
            Instant::now() + timeout,
            |r| matches!(r, Record::Tick(t) if t.tick > after_tick && t.sum.is_some()),
        )?;
        match r {
            Record::Tick(t) => Ok(t.sum.unwrap_or_default()),
            _ => unreachable!("wait_for only returns matching ticks"),
        }
    }

    /// Stops the workload with SIGTERM (SIGKILL after `grace`) and reaps it; returns the exit
    /// code (128 + signal if killed).
    pub fn stop(mut self, grace: Duration) -> Result<i32, JobError> {
        let code = self.terminate(grace);
        self.reaped = true;
        self.reap_launcher();
        code
    }

    fn terminate(&mut self, grace: Duration) -> Result<i32, JobError> {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => {}
                // Not our child (e.g. still the launcher's): wait for it to disappear.
                Err(nix::Error::ECHILD) => {
                    if kill(pid, None).is_err() {
                        return Ok(-1);
                    }
                }
                Err(e) => return Err(sys("wait for the workload")(e)),
            }
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // NB: never leave a workload behind (tests and the benchmark create many).
        let pid = Pid::from_raw(self.pid);
        if !self.reaped && kill(pid, None).is_ok() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(mut l) = self.launcher.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
}

/// The lines of `text` that are complete (ended by a newline).
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line still being written is not parsed (it would look like a corrupted record).
    #[test]
    fn partial_last_line_is_ignored() {
        assert_eq!(complete_lines("a\nb\nc").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(complete_lines("a\n").collect::<Vec<_>>(), ["a"]);
        assert_eq!(complete_lines("abc").count(), 0);
    }
}
