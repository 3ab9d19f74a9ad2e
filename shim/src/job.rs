//! Starting the job: a nested PID namespace whose PID 1 is a tiny init of ours, which drops every
//! privilege and runs the job's command as its only child.
//!
//! ```text
//! lodger-shim (container PID 1, keeps CRIU's capabilities, child subreaper)
//!  └─ init  (PID 1 of a new PID namespace; session leader; no capabilities, no_new_privs)
//!      └─ CMD ARGS...  (PID 2; stdout/stderr are pipes the shim copies to its own)
//! ```
//!
//! The init takes every signal with `sigwaitinfo`: SIGCHLD reaps (it is the namespace's reaper),
//! anything else, real-time signals (34..=64) included, is forwarded to the job. When the job ends the init exits with the job's code
//! (128 + signal number if a signal killed it) and the kernel kills whatever is left in the
//! namespace. CRIU dumps the init's whole tree, so the namespace, the PIDs in it and the init
//! itself travel together.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use caps::CapSet;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::stat::fstat;
use nix::unistd::{Gid, Pid, Uid, execvp, setgid, setgroups, setsid, setuid};

use crate::sys::{self, Forked};

/// Errors of starting the job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A system call failed.
    #[error("failed to {action}: {source}")]
    Sys {
        /// What was being done.
        action: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The command line is unusable.
    #[error("failed to use the job's command: {0}")]
    Command(String),
}

impl JobError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            JobError::Sys { .. } => "Sys",
            JobError::Command(_) => "BadCommand",
        }
    }
}

fn sys(action: &'static str) -> impl FnOnce(nix::Error) -> JobError {
    move |source| JobError::Sys { action, source }
}

/// The user and group the job runs as.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity {
    /// User id (None = keep the shim's).
    pub uid: Option<u32>,
    /// Group id (None = keep the shim's).
    pub gid: Option<u32>,
}

/// One stdio pipe of the job: our read end and CRIU's name of the pipe.
#[derive(Debug)]
pub struct OutputPipe {
    /// The shim's read end.
    pub read: OwnedFd,
    /// `pipe:[<inode>]`.
    pub id: String,
}

/// A freshly made pipe: our read end, the write end for the job, and its CRIU name.
#[derive(Debug)]
pub struct NewPipe {
    /// The shim's read end (close-on-exec).
    pub read: OwnedFd,
    /// The job's write end (inheritable, so CRIU can be handed it with `--inherit-fd`).
    pub write: OwnedFd,
    /// `pipe:[<inode>]`.
    pub id: String,
}

/// Makes a pipe whose read end is close-on-exec and whose write end is inheritable.
pub fn new_pipe() -> Result<NewPipe, JobError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    fcntl(&write, FcntlArg::F_SETFD(FdFlag::empty())).map_err(sys("make a pipe inheritable"))?;
    let ino = fstat(&read).map_err(sys("stat a pipe"))?.st_ino;
    Ok(NewPipe {
        read,
        write,
        id: format!("pipe:[{ino}]"),
    })
}

/// A started job.
#[derive(Debug)]
pub struct Started {
    /// PID of the init (in the shim's namespace).
    pub init: Pid,
    /// The job's stdout pipe.
    pub stdout: OutputPipe,
    /// The job's stderr pipe.
    pub stderr: OutputPipe,
}

/// First argument that makes `lodger-shim` act as the job's init (see [`init_main`]).
pub const INIT_ARG: &str = "__lodger_init";

/// Starts `command` under a fresh init in a new PID namespace. Must be called while the process
/// is single-threaded.
pub fn start(command: &[String], identity: Identity) -> Result<Started, JobError> {
    if command.is_empty() {
        return Err(JobError::Command("no command given after `--`".into()));
    }
    let id_arg = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut init_argv = vec![
        "lodger-init".to_owned(),
        INIT_ARG.to_owned(),
        id_arg(identity.uid),
        id_arg(identity.gid),
        "--".to_owned(),
    ];
    init_argv.extend(command.iter().cloned());
    let init_argv: Vec<CString> = init_argv
        .into_iter()
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(|_| JobError::Command("an argument contains a NUL byte".into()))?;
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| JobError::Command(format!("cannot find the shim's own binary: {e}")))?;
    let exe = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| JobError::Command("the shim's path contains a NUL byte".into()))?;
    let out = new_pipe()?;
    let err = new_pipe()?;
    let own_ns = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| JobError::Command(format!("cannot open /proc/self/ns/pid: {e}")))?;
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(sys("create a PID namespace (needs CAP_SYS_ADMIN)"))?;
    let forked = sys::fork_process();
    if matches!(forked, Ok(Forked::Parent(_)) | Err(_)) {
        // NB: while our children's PID namespace differs from our own the kernel refuses new
        // threads (EINVAL), and CRIU started later must not land in the job's namespace: point
        // "PID namespace for children" back at our own.
        setns(&own_ns, CloneFlags::CLONE_NEWPID)
            .map_err(sys("return to the shim's PID namespace"))?;
    }
    match forked.map_err(sys("fork the job's init"))? {
        Forked::Child => {
            let error = exec_init(&exe, &init_argv, &out.write, &err.write);
            eprintln!("lodger-shim: failed to start the job's init: {error}");
            std::process::exit(127);
        }
        Forked::Parent(init) => {
            drop(out.write);
            drop(err.write);
            Ok(Started {
                init,
                stdout: OutputPipe {
                    read: out.read,
                    id: out.id,
                },
                stderr: OutputPipe {
                    read: err.read,
                    id: err.id,
                },
            })
        }
    }
}

/// In the forked child (PID 1 of the new namespace): a mount namespace of its own with a /proc
/// of the job's PID namespace, stdio onto the pipes, then exec the shim binary as the init.
///
/// NB: the exec matters. CRIU resolves every mapped file through the task's mount namespace;
/// a forked shim would still map its binary through a mount of the old namespace, which CRIU
/// cannot find ("Can't lookup mount"). And CRIU's parasite needs /proc/self to be the task
/// itself, else it must mount a proc, which needs capabilities the job no longer has.
fn exec_init(exe: &CString, argv: &[CString], stdout: &OwnedFd, stderr: &OwnedFd) -> String {
    if let Err(e) = private_proc() {
        return format!("set up the job's mount namespace and /proc: {e}");
    }
    if let Err(e) = nix::unistd::dup2_stdout(stdout).and_then(|()| nix::unistd::dup2_stderr(stderr))
    {
        return format!("set up stdio: {e}");
    }
    // Keep nothing but stdio: every descriptor of the init travels in the checkpoint.
    for fd in 3..1024 {
        let _ = nix::unistd::close(fd);
    }
    match nix::unistd::execv(exe, argv) {
        Err(e) => format!("exec {}: {e}", exe.to_string_lossy()),
        Ok(never) => match never {},
    }
}

/// `lodger-shim __lodger_init UID GID -- CMD...`: the job's init. Returns its exit code.
pub fn init_main(args: &[String]) -> i32 {
    let parse = |v: Option<&String>| -> Result<Option<u32>, String> {
        match v.map(String::as_str) {
            Some("-") => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|e| format!("bad id {n:?}: {e}")),
            None => Err("missing id".into()),
        }
    };
    let identity = match (parse(args.first()), parse(args.get(1))) {
        (Ok(uid), Ok(gid)) => Identity { uid, gid },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("lodger-shim init: {e}");
            return 127;
        }
    };
    let command: Vec<CString> = match args
        .iter()
        .skip(3)
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(c) => c,
        Err(_) => return 127,
    };
    if command.is_empty() {
        eprintln!("lodger-shim init: no command");
        return 127;
    }
    run_init(&command, identity)
}

/// Body of the init (PID 1 of the job's namespace). Returns its exit code.
fn run_init(argv: &[CString], identity: Identity) -> i32 {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("lodger-shim init: failed to {what}: {e}");
        127
    };
    // NB: stdin is opened inside the job's mount namespace so CRIU can resolve it there.
    let stdin = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail("open /dev/null", &e),
    };
    if let Err(e) = nix::unistd::dup2_stdin(&stdin) {
        return fail("set up stdin", &e);
    }
    drop(stdin);
    // A session of its own: CRIU refuses trees whose session leader is outside them.
    if let Err(e) = setsid() {
        return fail("start a session", &e);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
        return fail("block signals", &e);
    }
    // NB: no handlers are needed for the kernel to deliver signals from the shim to this
    // namespace init: blocked signals are never discarded as "ignored" (kernel/signal.c
    // sig_ignored), so sigwait below sees them.
    if let Err(e) = drop_privileges(identity) {
        return fail("drop privileges", &e);
    }
    let job = match sys::fork_process() {
        Ok(Forked::Child) => {
            sys::reset_signal_dispositions();
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let err = execvp(&argv[0], argv).unwrap_err();
            eprintln!(
                "lodger-shim: failed to run {}: {err}",
                argv[0].to_string_lossy()
            );
            std::process::exit(127);
        }
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => return fail("fork the job", &e),
    };
    supervise(job)
}

/// Enters a new mount namespace, makes every mount private to it and mounts a fresh /proc.
fn private_proc() -> nix::Result<()> {
    use nix::mount::{MsFlags, mount};
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// The init's loop: reap children, forward signals, exit with the job's code.
///
/// NB: the signal number is taken raw ([`sys::wait_signal`], `sigwaitinfo`), and the job is
/// reaped raw ([`sys::reap_any`]): nix's `SigSet::wait` panics on a real-time signal and its
/// `waitpid` cannot report a child killed by one (the default action of every real-time signal
/// is to terminate), so either would lose the signal or the job's exit code.
fn supervise(job: Pid) -> i32 {
    let all = SigSet::all();
    loop {
        let signo = match sys::wait_signal(&all) {
            Ok(s) => s,
            // Interrupted (e.g. by a checkpoint's ptrace seize or a restore): wait again.
            Err(_) => continue,
        };
        if signo == Signal::SIGCHLD as i32 {
            loop {
                match sys::reap_any() {
                    Ok(sys::Reaped::Exited(pid, code)) if pid == job => return code,
                    Ok(sys::Reaped::Signaled(pid, sig)) if pid == job => return 128 + sig,
                    Ok(sys::Reaped::Nothing) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } else {
            let _ = sys::send_signal(job, signo);
        }
    }
}

/// Drops every capability (ambient, inheritable, bounding, effective, permitted), sets
/// `no_new_privs`, and switches to the job's user and group.
pub fn drop_privileges(identity: Identity) -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("set no_new_privs: {e}"))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clear inheritable capabilities: {e}"))?;
    // NB: dropping from the bounding set needs CAP_SETPCAP, which pods usually lack. Without it
    // the bounding set stays as the runtime made it; no_new_privs and empty permitted/effective
    // sets still keep the job from gaining any capability.
    for cap in caps::all() {
        if caps::drop(None, CapSet::Bounding, cap).is_err() {
            break;
        }
    }
    if let Some(gid) = identity.gid {
        let gid = Gid::from_raw(gid);
        setgroups(&[gid]).map_err(|e| format!("set supplementary groups to [{gid}]: {e}"))?;
        setgid(gid).map_err(|e| format!("set group id {gid}: {e}"))?;
    }
    if let Some(uid) = identity.uid {
        let uid = Uid::from_raw(uid);
        setuid(uid).map_err(|e| format!("set user id {uid}: {e}"))?;
    }
    caps::clear(None, CapSet::Effective)
        .map_err(|e| format!("clear effective capabilities: {e}"))?;
    caps::clear(None, CapSet::Permitted)
        .map_err(|e| format!("clear permitted capabilities: {e}"))?;
    Ok(())
}
