//! The engine on its own, with real CRIU: checkpoint a real process tree (PID 1 of its own PID and
//! mount namespace, made by `unshare`), verify, restore, and see it keep counting. Run as root.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lodger_engine::{
    CheckpointSpec, DEFAULT_CRIU_PATH, Engine, JobId, Manifest, RestoreSpec, Strategy, TravelState,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PATIENCE: Duration = Duration::from_secs(60);

/// A shell loop counting into a file, as PID 1 of a new PID + mount namespace.
struct Counter {
    unshare: Child,
    /// PID of the loop (the namespace's init) in our namespace.
    root: i32,
}

impl Counter {
    fn start(file: &Path) -> Self {
        let script = format!(
            "for fd in /proc/self/fd/*; do n=${{fd##*/}}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done; \
             i=0; while :; do i=$((i+1)); echo $i > {}.tmp; mv {0}.tmp {0}; sleep 0.02; done",
            file.display()
        );
        // NB: stdio are pipes, not /dev/null opened out here, and every other inherited fd is
        // closed: CRIU resolves files through the dumped task's mount namespace.
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--fork",
                "--mount-proc",
                // NB: no --kill-child: CRIU restores the parent-death signal, which would kill
                // the restored tree as soon as the restoring CRIU exits.
                // A session of its own: CRIU refuses trees whose session leader is outside.
                "setsid",
                "bash",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let root = loop {
            let children = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                unshare.id(),
                unshare.id()
            ))
            .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "unshare did not fork");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self { unshare, root }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // The loop is PID 1 of its namespace: killing it ends the namespace. Only while unshare
        // still runs, i.e. has not reaped it, so the PID cannot have been reused.
        if matches!(self.unshare.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.root), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Kills a restored tree (PID 1 of its namespace: the kernel takes the rest) on drop.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn count(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_count(file: &Path, at_least: u64) {
    let deadline = Instant::now() + PATIENCE;
    while count(file) < at_least {
        assert!(
            Instant::now() < deadline,
            "counter stuck at {}",
            count(file)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn job() -> JobId {
    JobId {
        namespace: "lab".into(),
        name: "counter".into(),
        uid: "u-1".into(),
    }
}

/// Checkpoint → verify → restore through the library alone: the dumped tree is gone from the
/// source, the manifest carries CRIU's statistics and the travel state, and the restored tree
/// continues counting from where it stopped. If this fails, the engine cannot move a job.
#[test]
fn engine_moves_a_process_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("count");
    let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), &tmp.path().join("volume")).unwrap();
    let mut counter = Counter::start(&file);
    wait_count(&file, 5);

    let spec = CheckpointSpec::new(
        counter.root,
        job(),
        1,
        Strategy::StopAndCopy,
        tmp.path().join("work-dump"),
    );
    let travel = TravelState {
        last_signal_seq: 9,
        ..TravelState::default()
    };
    let done = engine.checkpoint(&spec, &mut || travel.clone()).unwrap();
    assert_eq!(done.strategy, Strategy::StopAndCopy);
    assert!(done.page_server.is_none());
    // The source tree was killed after the manifest was written: its unshare ends.
    let status = counter.unshare.wait().unwrap();
    assert!(!status.success());
    let at_dump = count(&file);

    let manifest = Manifest::read(&done.dir).unwrap();
    assert_eq!(manifest, done.manifest);
    assert_eq!(manifest.travel.last_signal_seq, 9);
    assert!(manifest.figures.frozen_us > 0, "{:?}", manifest.figures);
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.name.to_string_lossy().starts_with("pages-"))
    );

    let verified = engine.verify(&done.path, &job()).unwrap();
    let restored = engine
        .restore(
            &verified,
            &RestoreSpec::new(tmp.path().join("work-restore")),
        )
        .unwrap();
    let _guard = Restored(restored.pid);
    assert!(restored.downtime_ms.is_some());
    assert!(restored.lazy_pages.is_none());
    wait_count(&file, at_dump + 5);

    // The same seq cannot be written twice.
    let again = engine
        .checkpoint(&spec, &mut TravelState::default)
        .unwrap_err();
    assert_eq!(again.category(), "CheckpointExists");
}

/// A leave-running checkpoint does not stop the job; a restore for another job is refused.
#[test]
fn leave_running_checkpoint_keeps_counting() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("count");
    let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), &tmp.path().join("volume")).unwrap();
    let mut counter = Counter::start(&file);
    wait_count(&file, 3);
    let mut spec = CheckpointSpec::new(
        counter.root,
        job(),
        2,
        Strategy::LazyRestore,
        tmp.path().join("work"),
    );
    spec.leave_running = true;
    let done = engine.checkpoint(&spec, &mut TravelState::default).unwrap();
    assert_eq!(done.stopped_at_unix_ms, None);
    let now = count(&file);
    wait_count(&file, now + 5);
    assert!(counter.unshare.try_wait().unwrap().is_none(), "job stopped");
    let other = JobId {
        uid: "u-2".into(),
        ..job()
    };
    let err = engine.verify(&done.path, &other).unwrap_err();
    assert_eq!(err.category(), "ManifestOtherJob");
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `T`, `Z`, ...), None once the pid is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // NB: the command name (field 2) may contain spaces; the state follows its closing paren.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The largest `pages-*.img` of an image directory.
fn largest_pages(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// Every file below `dir` with its bytes, to prove a refused restore changed nothing.
fn fingerprint(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// StopAndCopy restore with page checks overlapped: one flipped bit in a page image is refused
/// with the "corrupt" error before the restored job runs a single step (its counter never
/// moves), the stopped tree is killed and the volume is left byte for byte as it was. If this
/// fails, a job can resume on corrupt memory.
#[test]
fn corrupt_pages_are_refused_before_the_job_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("count");
    let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), &tmp.path().join("volume")).unwrap();
    let mut counter = Counter::start(&file);
    wait_count(&file, 3);
    let spec = CheckpointSpec::new(
        counter.root,
        job(),
        1,
        Strategy::StopAndCopy,
        tmp.path().join("work-dump"),
    );
    let done = engine.checkpoint(&spec, &mut TravelState::default).unwrap();
    counter.unshare.wait().unwrap();
    let at_dump = count(&file);
    let pages = largest_pages(&done.dir);
    let mut bytes = std::fs::read(&pages).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&pages, bytes).unwrap();
    let before = fingerprint(&tmp.path().join("volume"));

    // The metadata part passes: only the page check can catch this.
    let verified = engine.verify_metadata(&done.path, &job()).unwrap();
    assert!(!verified.pages_verified);
    let work = tmp.path().join("work-restore");
    let mut restore_spec = RestoreSpec::new(&work);
    // A job resumed too early would tick several times during this.
    restore_spec.page_check_delay = Some(Duration::from_millis(500));
    let err = engine.restore(&verified, &restore_spec).unwrap_err();
    assert_eq!(err.category(), "ImageCorrupt", "{err}");
    assert!(
        err.to_string().contains("the checkpoint is corrupt"),
        "{err}"
    );
    // CRIU did restore the tree (stopped); it must be dead now, not running.
    let pid: i32 = std::fs::read_to_string(work.join("restore.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = Restored(pid);
    let deadline = Instant::now() + PATIENCE;
    while !matches!(proc_state(pid), None | Some('Z')) {
        assert!(
            Instant::now() < deadline,
            "refused tree still alive: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&file), at_dump, "the refused job ran");
    assert_eq!(
        fingerprint(&tmp.path().join("volume")),
        before,
        "the volume changed"
    );
}

/// Every task of the tree is stopped (`T`) or a zombie (`Z`): none can run user code.
fn held(root: i32) -> bool {
    lodger_engine::checkpoint::process_tree(root)
        .into_iter()
        .all(|task| matches!(proc_state(task), Some('T' | 'Z')))
}

/// While the page images are still being checked, the restored tree exists but is stopped
/// (state `T`) and does not count; it resumes only once the check passed. If this fails, the
/// job may run on pages nobody verified.
#[test]
fn restored_tree_stays_stopped_until_pages_are_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("count");
    let engine = Engine::new(Path::new(DEFAULT_CRIU_PATH), &tmp.path().join("volume")).unwrap();
    let mut counter = Counter::start(&file);
    wait_count(&file, 3);
    let spec = CheckpointSpec::new(
        counter.root,
        job(),
        1,
        Strategy::StopAndCopy,
        tmp.path().join("work-dump"),
    );
    let done = engine.checkpoint(&spec, &mut TravelState::default).unwrap();
    counter.unshare.wait().unwrap();
    let at_dump = count(&file);
    let verified = engine.verify_metadata(&done.path, &job()).unwrap();
    let work = tmp.path().join("work-restore");
    let mut restore_spec = RestoreSpec::new(&work);
    // Long enough to look at the tree; the assertions below do not depend on the exact value.
    restore_spec.page_check_delay = Some(Duration::from_secs(3));
    std::thread::scope(|scope| {
        let restoring = scope.spawn(|| engine.restore(&verified, &restore_spec));
        let deadline = Instant::now() + PATIENCE;
        let pid = loop {
            let pid = std::fs::read_to_string(work.join("restore.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            // NB: CRIU queues a SIGSTOP for every task, then detaches them one by one: a task
            // just detached is briefly `R` in the kernel until it takes that SIGSTOP (it runs no
            // user code). A zombie (the counter's `sleep` that had exited at the dump) is restored
            // as a zombie and stays `Z`. The tree counts as seen once every task is one of them.
            if let Some(pid) = pid
                && proc_state(pid) == Some('T')
                && held(pid)
            {
                break pid;
            }
            assert!(
                !restoring.is_finished(),
                "restore returned before the tree was seen"
            );
            assert!(
                Instant::now() < deadline,
                "restored tree never seen stopped"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let _guard = Restored(pid);
        for _ in 0..20 {
            for task in lodger_engine::checkpoint::process_tree(pid) {
                assert!(
                    matches!(proc_state(task), Some('T' | 'Z')),
                    "task {task} runs unverified: {:?}",
                    proc_state(task)
                );
            }
            assert_eq!(
                count(&file),
                at_dump,
                "the job ran before its pages were verified"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !restoring.is_finished(),
            "the observation must fall inside the page check"
        );
        let restored = restoring.join().unwrap().unwrap();
        assert_eq!(restored.pid, pid);
        assert!(restored.page_check.is_none());
        wait_count(&file, at_dump + 3);
    });
}
