//! The shim's only unsafe code: `fork` and `sigaction`. Everything else (unshare, prctl, setsid,
//! exec, capabilities) goes through safe wrappers of `nix` and `caps`.
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
}
