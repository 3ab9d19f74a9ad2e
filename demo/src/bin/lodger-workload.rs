//! `lodger-workload`: the demo batch job Lodger migrates. It counts, holds N MiB of patterned
//! memory whose checksum it verifies, appends to a file through one long-lived fd, records every
//! signal it receives, optionally keeps an echo child on a pipe, and exits with a chosen code on
//! a chosen tick or on SIGTERM. Its output is one `key=value` line per event (see
//! `lodger_demo::record`), so tests and the demo can check that a migrated job continued exactly
//! where it stopped.
//!
//! Synchronous by design: signals are blocked and read from a signalfd, which is also what the
//! main loop sleeps on (`poll` with the time left until the next tick). Blocked signals are
//! queued even when the workload is PID 1 of its namespace (the kernel drops default-action
//! signals sent to a namespace's init, never blocked ones).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lodger_demo::pattern;
use lodger_demo::record::{ExitRecord, Record, SignalRecord, StartRecord, TickRecord};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The demo job Lodger migrates: counts, holds patterned memory, writes a file, records signals.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// MiB of memory to fill with a deterministic pattern and verify.
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    /// Milliseconds between ticks.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Verify the memory checksum every K ticks (0: only at start and on SIGUSR2).
    #[arg(long, default_value_t = 10)]
    verify_every: u64,
    /// Seed of the memory pattern.
    #[arg(long, default_value_t = pattern::DEFAULT_SEED)]
    seed: u64,
    /// Append one line per tick to this file through one long-lived fd (created, truncated).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Append one line per received signal to this file.
    #[arg(long)]
    signals_file: Option<PathBuf>,
    /// Fork a child connected by pipes that echoes a ping every tick.
    #[arg(long)]
    child: bool,
    /// Exit on this tick (after printing it).
    #[arg(long)]
    exit_at_tick: Option<u64>,
    /// Exit code used with --exit-at-tick.
    #[arg(long, default_value_t = 0)]
    exit_code: u8,
    /// Exit code used on SIGTERM or SIGINT.
    #[arg(long, default_value_t = 143)]
    sigterm_code: u8,
    /// Internal: run as the echo child (copy stdin lines to stdout).
    #[arg(long, hide = true)]
    echo_child: bool,
}

/// Standard signals the workload records (real-time ones are recorded too, see `run`). SIGTERM
/// and SIGINT also make it exit.
const RECORDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGWINCH,
];

struct EchoChild {
    child: Child,
    to_child: ChildStdin,
    from_child: BufReader<ChildStdout>,
}

impl EchoChild {
    fn spawn() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        // NB: std resets the signal mask in the child, so it does not inherit the blocked set.
        let mut child = Command::new(exe)
            .arg("--echo-child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to_child = child.stdin.take().expect("stdin was piped above");
        let from_child = BufReader::new(child.stdout.take().expect("stdout was piped above"));
        Ok(Self {
            child,
            to_child,
            from_child,
        })
    }

    /// Sends `tick` and expects it back; returns `ok` or a word for what went wrong.
    fn ping(&mut self, tick: u64) -> &'static str {
        if writeln!(self.to_child, "{tick}").is_err() {
            return "write-failed";
        }
        let mut answer = String::new();
        match self.from_child.read_line(&mut answer) {
            Ok(0) => "eof",
            Ok(_) if answer.trim() == tick.to_string() => "ok",
            Ok(_) => "wrong-echo",
            Err(_) => "read-failed",
        }
    }
}

fn echo_child() -> ExitCode {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Prints a record on stdout. NB: output errors are ignored: the job keeps running when its
/// reader goes away, as a batch job would; the tick file is the durable record.
fn emit(record: &Record) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{record}").and_then(|()| out.flush());
}

fn run(args: Args) -> Result<u8, Box<dyn std::error::Error>> {
    let started = Instant::now();
    // RECORDED plus every real-time signal (34..=64, recorded as `SIG<n>`): nix's `SigSet::add`
    // cannot name those, so start from `sigfillset` and drop the standard signals not recorded.
    let mut mask = SigSet::all();
    for s in Signal::iterator().filter(|s| !RECORDED.contains(s)) {
        mask.remove(s);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let pid = nix::unistd::getpid().as_raw();
    let memory = pattern::allocate(args.mem_mib, args.seed);
    let expected_sum = pattern::checksum(&memory);

    let mut tick_file = match &args.file {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?,
        ),
        None => None,
    };
    let mut signals_file: Option<File> = match &args.signals_file {
        Some(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
        None => None,
    };
    let mut child = if args.child {
        Some(EchoChild::spawn()?)
    } else {
        None
    };

    emit(&Record::Start(StartRecord {
        pid,
        mem_mib: args.mem_mib,
        sum: expected_sum.clone(),
        child_pid: child.as_ref().map(|c| c.child.id() as i32),
    }));

    let period = Duration::from_millis(args.tick_ms);
    let mut written: u64 = 0;
    let mut signal_count: u64 = 0;
    let mut verify_requested = false;
    let mut tick: u64 = 0;
    loop {
        tick += 1;
        let tick_started = Instant::now();
        let verify =
            verify_requested || (args.verify_every > 0 && tick.is_multiple_of(args.verify_every));
        verify_requested = false;
        let sum = verify.then(|| pattern::checksum(&memory));
        let file_off = match tick_file.as_mut() {
            Some(f) => {
                let line = format!("tick={tick} pid={pid}\n");
                f.write_all(line.as_bytes())?;
                written += line.len() as u64;
                Some(f.stream_position()?)
            }
            None => None,
        };
        let child_state = match child.as_mut() {
            Some(c) => c.ping(tick),
            None => "none",
        };
        let corrupt = sum.as_ref().is_some_and(|s| *s != expected_sum);
        emit(&Record::Tick(TickRecord {
            tick,
            pid,
            mem_mib: args.mem_mib,
            sum,
            written,
            file_off,
            child: child_state.to_string(),
            up_ms: started.elapsed().as_millis() as u64,
        }));
        let exit = |code: u8, reason: &str| {
            emit(&Record::Exit(ExitRecord {
                code: i32::from(code),
                reason: reason.to_string(),
                tick,
                pid,
            }));
            code
        };
        if corrupt {
            return Ok(exit(70, "corrupt"));
        }
        if args.exit_at_tick == Some(tick) {
            return Ok(exit(args.exit_code, "tick"));
        }

        // Sleep until the next tick, handling signals as they come.
        let deadline = tick_started + period;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            while let Some(info) = signals.read_signal()? {
                let signo = info.ssi_signo as i32;
                let name = Signal::try_from(signo)
                    .map_or_else(|_| format!("SIG{signo}"), |s| s.as_str().to_string());
                signal_count += 1;
                let record = Record::Signal(SignalRecord {
                    name,
                    signo,
                    tick,
                    count: signal_count,
                    pid,
                });
                emit(&record);
                if let Some(f) = signals_file.as_mut() {
                    writeln!(f, "{record}")?;
                }
                if signo == Signal::SIGUSR2 as i32 {
                    verify_requested = true;
                }
                if signo == Signal::SIGTERM as i32 || signo == Signal::SIGINT as i32 {
                    return Ok(exit(args.sigterm_code, "signal"));
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.echo_child {
        return echo_child();
    }
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lodger-workload: {e}");
            ExitCode::from(1)
        }
    }
}
