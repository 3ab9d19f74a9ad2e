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
//! Kernel semantics that bound "exactly once, in order" (POSIX, not Lodger's choice): a standard
//! signal sent again while an earlier instance of it is still pending is merged into it, and when
//! several different standard signals are pending at once the kernel hands out the lowest number
//! first. Each `kubectl exec <job>-home -- kill -SIG 1` is a separate round trip of ~100 ms while
//! the stub reads a signal in microseconds, so in practice every signal is read, in send order.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Signals the stub catches and forwards to the job. Synchronous signals (SIGSEGV, SIGBUS, ...)
/// and SIGPIPE (which the stub's own writes can raise) are not forwarded; SIGKILL and SIGSTOP
/// cannot be caught. Real-time signals are not forwarded (nix's `Signal` does not name them).
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
    /// A signal name or number the user gave is not one Lodger forwards.
    #[error(
        "unknown signal '{0}': use a name like TERM, SIGUSR1 or usr2, or a number like 10 (see `kill -l`)"
    )]
    Unknown(String),
}

/// The forwarded signals as a set.
fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
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

/// Parses a signal as users write it: `TERM`, `SIGTERM`, `sigterm`, `15`. Only signals Lodger
/// forwards are accepted (plus SIGKILL, which the job's shim can deliver).
pub fn parse_signal(text: &str) -> Result<i32, SignalError> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return Signal::try_from(n)
            .ok()
            .filter(|s| FORWARDED.contains(s) || *s == Signal::SIGKILL)
            .map(|s| s as i32)
            .ok_or_else(|| SignalError::Unknown(text.to_string()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    FORWARDED
        .iter()
        .copied()
        .chain([Signal::SIGKILL])
        .find(|s| s.as_str() == full)
        .map(|s| s as i32)
        .ok_or_else(|| SignalError::Unknown(text.to_string()))
}

/// The name of a signal number (`SIGUSR1`), or `signal <n>` for numbers nix does not name.
pub fn signal_name(signo: i32) -> String {
    Signal::try_from(signo)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signo}"))
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

    /// If this fails, a typo or a synchronous signal would be sent to the job instead of being
    /// refused with a message naming valid signals.
    #[test]
    fn refuses_unknown_and_unforwardable_signals() {
        for bad in ["FOO", "SIGSEGV", "11", "0", "65", "", "SIGPIPE"] {
            let err = parse_signal(bad).unwrap_err();
            assert!(err.to_string().contains("unknown signal"), "{bad}: {err}");
        }
    }

    /// If this fails, stub messages and `kubectl lodger` output would name signals wrongly.
    #[test]
    fn names_signals() {
        assert_eq!(signal_name(10), "SIGUSR1");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "signal 40");
    }
}
