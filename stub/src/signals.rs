//! Catching the signals a user sends the stub, and naming signals.
//!
//! The stub is PID 1 of its container. The kernel drops a signal sent to a namespace's init
//! process when the signal's disposition is `SIG_DFL` — unless the signal is *blocked*: blocked
//! signals are never ignored (`sig_ignored()` in kernel/signal.c checks the blocked mask first),
//! they stay pending until read. So the stub blocks every forwarded signal in the main thread
//! before the runtime starts any thread (threads inherit the mask) and reads them one at a time
//! from a `signalfd(2)`. No signal handler runs, so no `unsafe` code is needed, and each signal is
//! read exactly once, in the order the kernel dequeues it. The test
//! `tests/stub_process.rs::stub_as_pid1_of_a_pid_namespace_receives_signals` proves this for a
//! stub that is PID 1 of a real PID namespace.
//!
//! Real-time signals (SIGRTMIN..=SIGRTMAX, Linux 34..=64) are forwarded too. nix's `Signal` enum
//! does not name them, so the blocked set is built the other way round: `SigSet::all()`
//! (`sigfillset`: every signal the C library lets programs use, 1..=31 and 34..=64; glibc leaves
//! out 32 and 33, its own) minus the standard signals that are not forwarded.
//!
//! Kernel semantics that bound "exactly once, in order" (POSIX, not Lodger's choice): a standard
//! signal sent again while an earlier instance of it is still pending is merged into it (a
//! real-time one is queued: every instance is read), and when several different signals are
//! pending at once the kernel hands out standard ones before real-time ones, each lowest number
//! first. Each `kubectl exec <job>-home -- kill -SIG 1` is a separate round trip of ~100 ms while
//! the stub reads a signal in microseconds, so in practice every signal is read, in send order.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Lowest real-time signal number, Linux numbering as programs see it: the kernel's real-time
/// signals start at 32, but glibc keeps 32 and 33 for its threads, so `SIGRTMIN` is 34 and
/// `SIGRTMIN+n` is `34 + n`. Fixed, not `libc::SIGRTMIN()`: `kubectl lodger` may run on another
/// system, while the numbers always reach a Linux job.
pub const SIGRTMIN: i32 = 34;

/// Highest real-time signal number (the kernel's `_NSIG`).
pub const SIGRTMAX: i32 = 64;

/// Standard signals the stub catches and forwards to the job; every real-time signal
/// ([`SIGRTMIN`]..=[`SIGRTMAX`]) is forwarded as well ([`is_forwarded`]). Synchronous signals
/// (SIGSEGV, SIGBUS, ...) and SIGPIPE (which the stub's own writes can raise) are not forwarded;
/// SIGKILL and SIGSTOP cannot be caught; SIGCHLD, SIGSTKFLT and SIGIO are about the stub's own
/// children and files.
pub const FORWARDED: [Signal; 18] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGPWR,
];

/// Errors of signal catching and parsing.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Blocking the signals or creating the signalfd failed.
    #[error("failed to set up signal catching: {0}")]
    Setup(#[source] std::io::Error),
    /// Reading the signalfd failed.
    #[error("failed to read a caught signal: {0}")]
    Read(#[source] std::io::Error),
    /// A signal name the user gave is not one Linux knows.
    #[error(
        "unknown signal '{0}': use a name like TERM, SIGUSR1, usr2 or SIGRTMIN+3, or a number like 10 (see `kill -l`)"
    )]
    Unknown(String),
    /// A signal number (or real-time offset) outside what Linux has.
    #[error(
        "signal '{0}' is out of range: signal numbers are 1 to 64, real-time signals SIGRTMIN+0..SIGRTMIN+30 = SIGRTMAX-30..SIGRTMAX = 34 to 64"
    )]
    OutOfRange(String),
    /// A real signal that Lodger does not send to jobs.
    #[error("signal '{text}' cannot be sent to a job: {reason}")]
    NotForwarded {
        /// What the user wrote.
        text: String,
        /// Why, for people.
        reason: &'static str,
    },
}

/// Whether Lodger forwards signal number `signo` to a job (the stub catches it; `kubectl lodger
/// signal` and the shim accept it): the [`FORWARDED`] standard signals and every real-time one.
/// SIGKILL is not *caught* by the stub but may be sent with `kubectl lodger signal`.
pub fn is_forwarded(signo: i32) -> bool {
    (SIGRTMIN..=SIGRTMAX).contains(&signo) || FORWARDED.iter().any(|s| *s as i32 == signo)
}

/// Every signal number the stub catches, in increasing order.
pub fn forwarded_signos() -> Vec<i32> {
    let mut all: Vec<i32> = FORWARDED
        .iter()
        .map(|s| *s as i32)
        .chain(SIGRTMIN..=SIGRTMAX)
        .collect();
    all.sort_unstable();
    all
}

/// The forwarded signals as a set: everything `sigfillset` holds (standard and real-time) minus
/// the standard signals that are not forwarded. nix's `SigSet::add` cannot add real-time
/// signals, and this way no `unsafe` is needed; the test `blocks_exactly_the_forwarded_signals`
/// checks the result against the kernel's view of the mask.
fn forwarded_set() -> SigSet {
    let mut set = SigSet::all();
    for sig in Signal::iterator() {
        if !FORWARDED.contains(&sig) {
            set.remove(sig);
        }
    }
    set
}

/// Blocks every forwarded signal in the calling thread and returns a (blocking) signalfd that
/// receives them.
///
/// NB: call this on the main thread before any other thread exists (before building the tokio
/// runtime or calling [`spawn_reader`]): a thread created earlier keeps its own mask, and a process-directed signal would be
/// handled by that thread with the default action (which kills the stub) instead of being queued.
pub fn block_forwarded() -> Result<SignalFd, SignalError> {
    let set = forwarded_set();
    set.thread_block()
        .map_err(|e| SignalError::Setup(std::io::Error::from(e)))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| SignalError::Setup(std::io::Error::from(e)))
}

/// A caught signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caught {
    /// Signal number.
    pub signo: i32,
    /// PID of the sender (in the stub's PID namespace; 0 when sent from an ancestor namespace).
    pub sender_pid: u32,
}

/// Reads the signalfd on a dedicated thread (a blocking `read(2)`: no async registration, so no
/// `unsafe`) and sends each signal to `tx` in the order read. The thread ends when `tx`'s
/// receiver is dropped (after the next signal) or the process exits.
pub fn spawn_reader(
    fd: SignalFd,
    tx: tokio::sync::mpsc::UnboundedSender<Caught>,
) -> Result<std::thread::JoinHandle<()>, SignalError> {
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            loop {
                match fd.read_signal() {
                    Ok(Some(info)) => {
                        let caught = Caught {
                            signo: info.ssi_signo as i32,
                            sender_pid: info.ssi_pid,
                        };
                        if tx.send(caught).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        eprintln!("[lodger-stub] error: {}", SignalError::Read(e.into()));
                        return;
                    }
                }
            }
        })
        .map_err(SignalError::Setup)
}

/// Why a known signal is not sent to jobs.
fn refusal(signal: Signal) -> &'static str {
    match signal {
        Signal::SIGSTOP => "SIGSTOP would freeze the job's process where no one can resume it",
        Signal::SIGPIPE => "SIGPIPE belongs to the job's own pipes",
        Signal::SIGCHLD | Signal::SIGSTKFLT | Signal::SIGIO => {
            "it reports on the job's own children, stack or files"
        }
        _ => {
            "it reports a fault of the job's own code (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT)"
        }
    }
}

const RESERVED: &str = "32 and 33 are reserved by the C library (glibc) for its threads; real-time signals start at SIGRTMIN = 34";

/// A number as a signal: forwarded ones and SIGKILL are taken.
fn from_number(n: i32, text: &str) -> Result<i32, SignalError> {
    match n {
        32 | 33 => Err(SignalError::NotForwarded {
            text: text.to_string(),
            reason: RESERVED,
        }),
        n if is_forwarded(n) || n == Signal::SIGKILL as i32 => Ok(n),
        1..=31 => Err(SignalError::NotForwarded {
            text: text.to_string(),
            reason: Signal::try_from(n).map_or("not forwarded", refusal),
        }),
        _ => Err(SignalError::OutOfRange(text.to_string())),
    }
}

/// `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n` (upper case, without `SIG`): the real-time number,
/// `None` if `name` is not of that form.
fn parse_real_time(name: &str, text: &str) -> Option<Result<i32, SignalError>> {
    let (base, rest) = if let Some(rest) = name.strip_prefix("RTMIN") {
        (SIGRTMIN, rest)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        (SIGRTMAX, rest)
    } else {
        return None;
    };
    let offset = match rest.chars().next() {
        None => 0,
        Some(sign @ ('+' | '-')) => {
            let digits = rest[1..].trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Some(Err(SignalError::Unknown(text.to_string())));
            }
            // Too many digits for an i32 is out of range as well.
            let Ok(n) = digits.parse::<i32>() else {
                return Some(Err(SignalError::OutOfRange(text.to_string())));
            };
            if sign == '+' { n } else { -n }
        }
        Some(_) => return Some(Err(SignalError::Unknown(text.to_string()))),
    };
    Some(match base.checked_add(offset) {
        Some(n) if (SIGRTMIN..=SIGRTMAX).contains(&n) => Ok(n),
        _ => Err(SignalError::OutOfRange(text.to_string())),
    })
}

/// Parses a signal as users write it: `TERM`, `SIGTERM`, `sigterm`, `15`, and real-time signals
/// as `SIGRTMIN+3`, `rtmin+3`, `SIGRTMAX-1`, `RTMAX` or a number 34..=64 (`SIGRTMIN+n` is
/// `34 + n`, `SIGRTMAX-n` is `64 - n`, as in glibc and `kill -l`). Only signals Lodger forwards
/// are accepted (plus SIGKILL, which the job's shim can deliver); the error says whether the
/// signal is unknown, out of range or one Lodger does not send, and why.
pub fn parse_signal(text: &str) -> Result<i32, SignalError> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i64>() {
        let n = i32::try_from(n).map_err(|_| SignalError::OutOfRange(text.to_string()))?;
        return from_number(n, text);
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(real_time) = parse_real_time(bare, text) {
        return real_time;
    }
    let full = format!("SIG{bare}");
    match Signal::iterator().find(|s| s.as_str() == full) {
        Some(s) => from_number(s as i32, text),
        None => Err(SignalError::Unknown(text.to_string())),
    }
}

/// The name of a signal number: `SIGUSR1`; real-time ones as `kill -l` names them
/// (`SIGRTMIN`, `SIGRTMIN+1`..`SIGRTMIN+15`, `SIGRTMAX-14`..`SIGRTMAX-1`, `SIGRTMAX`); `signal
/// <n>` for numbers that name no signal.
pub fn signal_name(signo: i32) -> String {
    match signo {
        SIGRTMIN => "SIGRTMIN".to_string(),
        SIGRTMAX => "SIGRTMAX".to_string(),
        n if n > SIGRTMIN && n <= SIGRTMIN + 15 => format!("SIGRTMIN+{}", n - SIGRTMIN),
        n if n > SIGRTMIN + 15 && n < SIGRTMAX => format!("SIGRTMAX-{}", SIGRTMAX - n),
        n => Signal::try_from(n)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, `kubectl lodger signal JOB usr1` (or `SIGUSR1`, `10`) would be refused or
    /// send the wrong signal.
    #[test]
    fn parses_names_numbers_and_prefixes() {
        assert_eq!(parse_signal("usr1").unwrap(), 10);
        assert_eq!(parse_signal("SIGUSR2").unwrap(), 12);
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal(" 1 ").unwrap(), 1);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("SIGWINCH").unwrap(), 28);
    }

    /// If this fails, `kubectl lodger signal JOB SIGRTMIN+3` (or `RTMIN+3`, `SIGRTMAX-1`, `37`)
    /// would be refused or send another real-time signal than glibc's `SIGRTMIN+3` (34 + 3).
    #[test]
    fn parses_real_time_signals() {
        for (text, want) in [
            ("SIGRTMIN", 34),
            ("RTMIN", 34),
            ("SIGRTMIN+0", 34),
            ("SIGRTMIN+3", 37),
            ("rtmin+3", 37),
            ("sigrtmin+3", 37),
            (" RTMIN+30 ", 64),
            ("SIGRTMAX", 64),
            ("rtmax", 64),
            ("SIGRTMAX-1", 63),
            ("RTMAX-30", 34),
            ("34", 34),
            ("37", 37),
            ("64", 64),
        ] {
            assert_eq!(parse_signal(text).unwrap(), want, "{text}");
        }
        // Every number has a name that parses back to it.
        for signo in SIGRTMIN..=SIGRTMAX {
            assert_eq!(parse_signal(&signal_name(signo)).unwrap(), signo);
        }
    }

    /// If this fails, a typo would be sent to the job instead of being refused with a message
    /// naming valid signals.
    #[test]
    fn refuses_unknown_signals() {
        for bad in [
            "FOO",
            "",
            "SIGRTMIN3",
            "RTMIN+",
            "RTMIN+x",
            "RTMIN*2",
            "RTMID",
        ] {
            let err = parse_signal(bad).unwrap_err();
            assert!(matches!(err, SignalError::Unknown(_)), "{bad}: {err:?}");
            assert!(err.to_string().contains("unknown signal"), "{bad}: {err}");
            assert!(err.to_string().contains("SIGRTMIN+3"), "{bad}: {err}");
        }
    }

    /// If this fails, a number or real-time offset past what Linux has would be sent (and
    /// refused later, far from the user) or reported as an unknown name instead of out of range.
    #[test]
    fn refuses_out_of_range_signals() {
        for bad in [
            "0",
            "-1",
            "65",
            "99999999999",
            "SIGRTMIN+31",
            "RTMIN-1",
            "SIGRTMAX+1",
            "RTMAX-31",
            "RTMIN+99999999999",
        ] {
            let err = parse_signal(bad).unwrap_err();
            assert!(matches!(err, SignalError::OutOfRange(_)), "{bad}: {err:?}");
            assert!(err.to_string().contains("1 to 64"), "{bad}: {err}");
        }
    }

    /// If this fails, a synchronous fault, SIGPIPE, SIGSTOP or glibc's reserved 32/33 would be
    /// sent to the job, or refused without saying why.
    #[test]
    fn refuses_signals_lodger_does_not_send() {
        for (bad, why) in [
            ("SIGSEGV", "fault"),
            ("11", "fault"),
            ("SIGPIPE", "pipes"),
            ("stop", "freeze"),
            ("CHLD", "children"),
            ("32", "reserved by the C library"),
            ("33", "reserved by the C library"),
        ] {
            let err = parse_signal(bad).unwrap_err();
            assert!(
                matches!(err, SignalError::NotForwarded { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    /// If this fails, stub messages and `kubectl lodger` output would name signals wrongly
    /// (real-time ones as `kill -l` names them).
    #[test]
    fn names_signals() {
        assert_eq!(signal_name(10), "SIGUSR1");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(34), "SIGRTMIN");
        assert_eq!(signal_name(37), "SIGRTMIN+3");
        assert_eq!(signal_name(49), "SIGRTMIN+15");
        assert_eq!(signal_name(50), "SIGRTMAX-14");
        assert_eq!(signal_name(63), "SIGRTMAX-1");
        assert_eq!(signal_name(64), "SIGRTMAX");
        assert_eq!(signal_name(32), "signal 32");
        assert_eq!(signal_name(65), "signal 65");
    }

    /// If this fails, [`SIGRTMIN`]/[`SIGRTMAX`] disagree with the C library the stub runs on,
    /// so `SIGRTMIN+n` would mean another signal to Lodger than to the job's C code.
    #[test]
    fn real_time_range_matches_the_c_library() {
        assert_eq!((SIGRTMIN, SIGRTMAX), (libc::SIGRTMIN(), libc::SIGRTMAX()));
    }

    /// The blocked-signal mask of the calling thread, from the kernel (`SigBlk` in
    /// /proc/thread-self/status), as a list of signal numbers.
    fn kernel_blocked_mask() -> Vec<i32> {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .unwrap()
            .trim();
        let mask = u64::from_str_radix(hex, 16).unwrap();
        (1..=64).filter(|n| mask & (1u64 << (n - 1)) != 0).collect()
    }

    /// If this fails, the stub would block (and so catch) a signal it must not — a fault, SIGPIPE,
    /// SIGCHLD, glibc's 32/33 — or leave a forwarded one, real-time ones included, to its
    /// default action (which kills the stub, or, as PID 1, drops the signal).
    #[test]
    fn blocks_exactly_the_forwarded_signals() {
        // A thread of its own: the mask is per thread and tests share the process.
        let blocked = std::thread::spawn(|| {
            let _fd = block_forwarded().unwrap();
            kernel_blocked_mask()
        })
        .join()
        .unwrap();
        assert_eq!(blocked, forwarded_signos());
        assert!(blocked.contains(&37) && blocked.contains(&34) && blocked.contains(&64));
        assert!(!blocked.contains(&32) && !blocked.contains(&33) && !blocked.contains(&13));
    }
}
