//! The shim's only unsafe code: `fork`, `sigaction`, and the signal calls that take raw signal
//! numbers (sets, `sigwaitinfo`, `kill`, `waitpid`), which nix only offers for the standard
//! signals its `Signal` enum names, not for the real-time ones (34..=64). Everything else
//! (unshare, prctl, setsid, exec, capabilities) goes through safe wrappers of `nix` and `caps`.
#![allow(unsafe_code)]

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::{ForkResult, fork};

/// Which side of a fork this is.
#[derive(Debug)]
pub enum Forked {
    /// The parent, with the child's PID.
    Parent(nix::unistd::Pid),
    /// The child.
    Child,
}

/// Forks the calling process.
///
/// Callers must only call this while the process is single-threaded: the shim forks the job's
/// init before it starts its async runtime or any thread, and the init (a fresh exec of the
/// shim binary) forks the job before doing anything else that could start a thread.
pub fn fork_process() -> nix::Result<Forked> {
    // SAFETY: both callers (crate::job::start, crate::job::run_init) run single-threaded (see
    // above), so no lock can be held by another thread in the child and the child may run
    // arbitrary code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Restores the default disposition of every catchable signal (for the job's process before
/// exec: ignored signals, like SIGPIPE which Rust's runtime ignores, would survive `execve`).
pub fn reset_signal_dispositions() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours.
        let _ = unsafe { sigaction(signal, &action) };
    }
    for signo in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: as above; signal(2) with SIG_DFL for a real-time number nix cannot name.
        let _ = unsafe { libc::signal(signo, libc::SIG_DFL) };
    }
}

/// A signal set holding exactly `signos` (raw Linux numbers, real-time ones included: nix's
/// `SigSet::add` only takes the standard signals its `Signal` enum names). EINVAL for a number
/// the C library does not accept (0, 32 and 33 which glibc keeps for itself, above 64).
pub fn signal_set(signos: impl IntoIterator<Item = i32>) -> nix::Result<SigSet> {
    let mut raw = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole sigset_t it is given.
    nix::errno::Errno::result(unsafe { libc::sigemptyset(raw.as_mut_ptr()) })?;
    // SAFETY: initialised by sigemptyset just above.
    let mut raw = unsafe { raw.assume_init() };
    for signo in signos {
        // SAFETY: `raw` is an initialised sigset_t; sigaddset checks `signo` (EINVAL).
        nix::errno::Errno::result(unsafe { libc::sigaddset(&mut raw, signo) })?;
    }
    // SAFETY: `raw` was initialised by sigemptyset and only changed by sigaddset.
    Ok(unsafe { SigSet::from_sigset_t_unchecked(raw) })
}

/// Waits for one of the signals of `set` (which must be blocked) and returns its raw number:
/// `sigwaitinfo(2)`. nix's `SigSet::wait` only knows the standard signals (it panics on a
/// real-time one), so the job's init and the test job use this.
pub fn wait_signal(set: &SigSet) -> nix::Result<i32> {
    // SAFETY: `set` is a valid sigset_t for the call's duration; a null siginfo pointer is
    // allowed (the number is the return value).
    nix::errno::Errno::result(unsafe { libc::sigwaitinfo(set.as_ref(), std::ptr::null_mut()) })
}

/// Sends signal number `signo` (any of 1..=64, real-time included) to `pid`: `kill(2)`, which
/// nix only offers for its `Signal` enum.
pub fn send_signal(pid: nix::unistd::Pid, signo: i32) -> nix::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the kernel checks both.
    nix::errno::Errno::result(unsafe { libc::kill(pid.as_raw(), signo) }).map(drop)
}

/// How a reaped child ended, with the raw signal number (nix's `WaitStatus` cannot represent a
/// child killed by a real-time signal: its `waitpid` reaps it and then returns EINVAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// No child has changed state (WNOHANG).
    Nothing,
    /// The child exited with this code.
    Exited(nix::unistd::Pid, i32),
    /// A signal with this number killed the child.
    Signaled(nix::unistd::Pid, i32),
    /// Another state change (stopped, continued).
    Other(nix::unistd::Pid),
}

/// Reaps any one child without blocking: `waitpid(-1, WNOHANG)`.
pub fn reap_any() -> nix::Result<Reaped> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid c_int the kernel writes through; -1 means any child.
    let pid = nix::errno::Errno::result(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) })?;
    if pid == 0 {
        return Ok(Reaped::Nothing);
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    Ok(if libc::WIFEXITED(status) {
        Reaped::Exited(pid, libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Reaped::Signaled(pid, libc::WTERMSIG(status))
    } else {
        Reaped::Other(pid)
    })
}
