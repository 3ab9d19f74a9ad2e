//! Real migrations between two shims in separate "nodes" (own PID + mount namespaces) that share
//! only a staging directory. Real CRIU, real processes. Run as root.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use common::*;
use lodger_shim::control::{
    CheckpointOutcome, ErrorKind, JobState, Op, PageCheckState, Reply, SignalDisposition, Strategy,
};

const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;

fn checkpointed(reply: Reply) -> CheckpointOutcome {
    match reply {
        Reply::Checkpointed(o) => o,
        other => panic!("checkpoint failed: {other:?}"),
    }
}

fn disposition(reply: Reply) -> SignalDisposition {
    match reply {
        Reply::Signal(s) => s.disposition,
        other => panic!("signal failed: {other:?}"),
    }
}

fn error_kind(reply: Reply) -> (ErrorKind, String) {
    match reply {
        Reply::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Everything the source printed plus everything the target printed must be ticks 1..=N exactly
/// once, in order, with the same PIDs, a working relay child, and a file offset that kept
/// growing by exactly one line per tick.
fn assert_continuity(before: &[Tick], after: &[Tick], file: &std::path::Path) {
    assert!(
        !before.is_empty() && !after.is_empty(),
        "ticks on both sides"
    );
    let all: Vec<&Tick> = before.iter().chain(after).collect();
    let numbers: Vec<u64> = all.iter().map(|t| t.n).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "lost or duplicated output lines across the migration"
    );
    let mut off = 0u64;
    for t in &all {
        off += format!("line {}\n", t.n).len() as u64;
        assert_eq!(t.off, off, "file offset did not continue at tick {}", t.n);
        assert_eq!(
            t.relay,
            2 * t.n,
            "pipe to the child process broke at tick {}",
            t.n
        );
        assert_eq!(
            (t.pid, t.child),
            (before[0].pid, before[0].child),
            "PIDs changed at tick {}",
            t.n
        );
    }
    let content = std::fs::read_to_string(file).unwrap();
    let lines: Vec<String> = content.lines().map(str::to_owned).collect();
    let last = all.last().unwrap().n;
    assert!(lines.len() as u64 >= last);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("line {}", i + 1), "file content broken");
    }
}

/// StopAndCopy of a job holding 256 MiB: the counter, memory checksum, file offset, child
/// process + pipe and PIDs survive; a signal sent during the checkpoint is delivered exactly once
/// after restore (and its seq stays a duplicate there); output continues on the target with no
/// lost or duplicated line; the job's exit code reaches the new shim. If this fails, Lodger's
/// core promise (the job does not notice the move) is broken.
#[test]
fn stop_and_copy_moves_a_256mib_job_intact() {
    let lab = Lab::new();
    let file = lab.path("work.txt");
    let file_arg = file.display().to_string();
    let source = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&[
            "--mem-mib",
            "256",
            "--interval-ms",
            "20",
            "--file",
            &file_arg,
        ]),
    );
    let caps = source
        .stdout
        .wait_for("caps line", |l| l.starts_with("caps "));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            caps.contains(&format!("{set}=0000000000000000")),
            "{set} not empty: {caps}"
        );
    }
    assert!(caps.contains("NoNewPrivs=1"), "{caps}");
    wait_tick(&source, 5);
    assert_eq!(
        disposition(source.signal(SIGUSR1, 1)),
        SignalDisposition::Delivered
    );
    source
        .stdout
        .wait_for("usr1 1", |l| l == "usr1 count=1 mem_ok=true");

    let mut source = source;
    let outcome = std::thread::scope(|s| {
        let node = &source;
        let dump =
            s.spawn(move || node.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
        // A signal that arrives while the checkpoint runs travels inside it.
        let mut queued = None;
        let deadline = std::time::Instant::now() + PATIENCE;
        while queued.is_none() && std::time::Instant::now() < deadline {
            if let Reply::Status(st) = node.call(lodger_shim::control::Op::Status)
                && st.job == JobState::Checkpointing
            {
                queued = Some(disposition(node.signal(SIGUSR1, 2)));
            }
        }
        assert_eq!(queued, Some(SignalDisposition::Queued));
        checkpointed(dump.join().unwrap())
    });
    assert_eq!(outcome.strategy, Strategy::StopAndCopy);
    assert!(outcome.image_bytes >= 256 << 20, "{outcome:?}");
    assert!(
        outcome.freeze_ms > 0 && outcome.stopped_at_unix_ms.is_some(),
        "{outcome:?}"
    );
    assert_eq!(source.wait(), 0, "a migrated-away shim exits 0");
    let dir = lab.staging().join("lab/render/1");
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(&dir).unwrap() {
        assert_eq!(e.unwrap().metadata().unwrap().mode() & 0o777, 0o600);
    }
    let manifest = lodger_engine::Manifest::read(&dir).unwrap();
    assert_eq!(manifest.seq, 1);
    assert_eq!(manifest.job.uid, "uid-1");
    assert!(
        manifest.criu_version.starts_with('4'),
        "{}",
        manifest.criu_version
    );
    assert_eq!(manifest.kernel, lodger_engine::kernel_release());
    // Figures come from CRIU's stats-dump: 256 MiB is at least 65536 pages written.
    assert!(
        manifest.figures.frozen_us > 0 && manifest.figures.pages_written >= 65_536,
        "{:?}",
        manifest.figures
    );
    assert_eq!(manifest.figures.freeze_ms, outcome.freeze_ms);
    assert_eq!(
        manifest.image_bytes,
        manifest.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    assert_eq!(manifest.travel.last_signal_seq, 2);
    assert_eq!(
        manifest.travel.queued_signals,
        [lodger_engine::QueuedSignal {
            seq: 2,
            signo: SIGUSR1
        }]
    );
    assert_eq!(
        manifest
            .travel
            .stdio
            .iter()
            .map(|p| p.fd)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let before = ticks(&source.stdout.snapshot());
    assert!(
        !source
            .stdout
            .snapshot()
            .iter()
            .any(|l| l.starts_with("usr1 count=2"))
    );

    let mut target = Node::start(&lab, NodeSpec::new(&lab, "b").restore("lab/render/1"));
    // The queued signal, delivered once after restore, finds the memory intact.
    target
        .stdout
        .wait_for("queued usr1", |l| l == "usr1 count=2 mem_ok=true");
    assert_eq!(
        disposition(target.signal(SIGUSR1, 2)),
        SignalDisposition::Duplicate
    );
    assert_eq!(
        disposition(target.signal(SIGUSR1, 1)),
        SignalDisposition::Duplicate
    );
    let last = before.last().unwrap().n;
    wait_tick(&target, last + 5);
    assert_eq!(
        disposition(target.signal(SIGTERM, 3)),
        SignalDisposition::Delivered
    );
    assert_eq!(
        target.wait(),
        42,
        "the job's exit code reaches the new shim"
    );
    let out = target.stdout.snapshot();
    assert_eq!(
        out.iter().filter(|l| l.starts_with("usr1")).count(),
        1,
        "{out:?}"
    );
    assert_continuity(&before, &ticks(&out), &file);
}

/// The background page check a lazy restore reports in `status`, once it has finished.
fn finished_page_check(node: &Node) -> PageCheckState {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match node.call(Op::Status) {
            Reply::Status(status) => match status.page_check {
                Some(PageCheckState::Pending) => {}
                Some(done) => return done,
                None => panic!("a lazy restore must report its page check: {status:?}"),
            },
            other => panic!("status: {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "page check never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn small_migration(strategy: Strategy) {
    let lab = Lab::new();
    let file = lab.path("work.txt");
    let file_arg = file.display().to_string();
    let mut source = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&[
            "--mem-mib",
            "32",
            "--interval-ms",
            "20",
            "--file",
            &file_arg,
        ]),
    );
    wait_tick(&source, 5);
    let outcome = checkpointed(source.checkpoint("lab/render/7", 7, strategy, false));
    assert_eq!(outcome.strategy, strategy, "{outcome:?}");
    let mut target = Node::start(&lab, NodeSpec::new(&lab, "b").restore("lab/render/7"));
    if strategy == Strategy::PostCopy {
        assert!(outcome.page_server.is_some());
        assert!(
            outcome.image_bytes < 32 << 20,
            "PostCopy images hold no memory: {outcome:?}"
        );
    }
    let before = ticks(&source.stdout.snapshot());
    let last = before.last().unwrap().n;
    wait_tick(&target, last + 5);
    assert_eq!(finished_page_check(&target), PageCheckState::Passed);
    assert_eq!(
        disposition(target.signal(SIGUSR1, 1)),
        SignalDisposition::Delivered
    );
    target
        .stdout
        .wait_for("usr1", |l| l == "usr1 count=1 mem_ok=true");
    assert_eq!(
        disposition(target.signal(SIGTERM, 2)),
        SignalDisposition::Delivered
    );
    assert_eq!(target.wait(), 42);
    // The source shim exits only after the target has every page (PostCopy).
    assert_eq!(source.wait(), 0);
    let before = ticks(&source.stdout.snapshot());
    assert_continuity(&before, &ticks(&target.stdout.snapshot()), &file);
}

/// LazyRestore: the target resumes at once and pages memory in from the volume; the memory
/// checksum after restore proves every page arrived.
#[test]
fn lazy_restore_pages_in_from_the_volume() {
    small_migration(Strategy::LazyRestore);
}

/// PostCopy: the target fetches pages from the source's page server (loopback); the images on
/// the volume hold no memory, yet the checksum is intact.
#[test]
fn post_copy_pages_in_from_the_source() {
    small_migration(Strategy::PostCopy);
}

/// LazyRestore resumes before its pages are hashed (its point); a page image corrupted on the
/// volume must then be reported loudly: `status.pageCheck` failed and an error log line. If this
/// fails, a job could run on corrupt memory with nobody told.
#[test]
fn lazy_restore_reports_a_corrupt_page_image() {
    let lab = Lab::new();
    let mut source = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&["--mem-mib", "32", "--interval-ms", "20"]),
    );
    wait_tick(&source, 3);
    checkpointed(source.checkpoint("lab/render/8", 8, Strategy::LazyRestore, false));
    assert_eq!(source.wait(), 0);
    let dir = lab.staging().join("lab/render/8");
    let pages = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pages).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&pages, bytes).unwrap();
    let target = Node::start(&lab, NodeSpec::new(&lab, "b").restore("lab/render/8"));
    match finished_page_check(&target) {
        PageCheckState::Failed { message } => {
            assert!(message.contains("the checkpoint is corrupt"), "{message}");
        }
        other => panic!("corrupt page image not reported: {other:?}"),
    }
    target.stderr.wait_for("corrupt checkpoint log", |l| {
        l.contains("CORRUPT CHECKPOINT")
    });
}

/// PreCopy falls back to StopAndCopy where the kernel lacks soft-dirty tracking and says why; a
/// leave-running checkpoint keeps the job running here and a later checkpoint still works.
#[test]
fn precopy_falls_back_and_leave_running_keeps_the_job() {
    let lab = Lab::new();
    let mut node = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]),
    );
    wait_tick(&node, 3);
    let outcome = checkpointed(node.checkpoint("lab/render/1", 1, Strategy::PreCopy, true));
    let criu = lodger_engine::Criu::locate(std::path::Path::new(lodger_engine::DEFAULT_CRIU_PATH))
        .unwrap();
    if criu.features().mem_dirty_track {
        assert_eq!(outcome.strategy, Strategy::PreCopy);
    } else {
        assert_eq!(outcome.strategy, Strategy::StopAndCopy);
        assert!(outcome.fallback_reason.unwrap().contains("soft-dirty"));
    }
    assert_eq!(outcome.stopped_at_unix_ms, None);
    let after = last_tick(&node.stdout) + 3;
    wait_tick(&node, after);
    match node.call(lodger_shim::control::Op::Status) {
        Reply::Status(st) => assert_eq!(st.job, JobState::Running),
        other => panic!("{other:?}"),
    }
    // The finished checkpoint is never overwritten.
    let (kind, _) = error_kind(node.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, true));
    assert_eq!(kind, ErrorKind::BadRequest);
    assert_eq!(
        disposition(node.signal(SIGTERM, 1)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 42);
}

/// A staging volume that is full (1 MiB tmpfs) or read-only: the checkpoint fails with a Storage
/// error a person can read, nothing is left behind, and the job keeps running on the source.
#[test]
fn full_or_read_only_staging_keeps_the_job_running() {
    for (name, options) in [("full", "size=1M"), ("ro", "ro,size=1M")] {
        let lab = Lab::new();
        let staging = lab.path("small");
        std::fs::create_dir(&staging).unwrap();
        let mut spec =
            NodeSpec::new(&lab, name).testjob(&["--mem-mib", "16", "--interval-ms", "20"]);
        spec.checkpoint_root = staging.clone();
        spec.setup = Some(format!(
            "mount -t tmpfs -o {options} lodger-test {}",
            staging.display()
        ));
        let mut node = Node::start(&lab, spec);
        wait_tick(&node, 3);
        let (kind, message) =
            error_kind(node.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
        assert_eq!(kind, ErrorKind::Storage, "{name}: {message}");
        assert!(message.contains("keeps running"), "{message}");
        let after = last_tick(&node.stdout) + 3;
        wait_tick(&node, after);
        match node.call(lodger_shim::control::Op::Status) {
            Reply::Status(st) => assert_eq!(st.job, JobState::Running),
            other => panic!("{other:?}"),
        }
        // The tmpfs lived only in the node's mount namespace: the test's view is untouched.
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        assert_eq!(
            disposition(node.signal(SIGTERM, 1)),
            SignalDisposition::Delivered
        );
        assert_eq!(node.wait(), 42);
        let ticks = ticks(&node.stdout.snapshot());
        let numbers: Vec<u64> = ticks.iter().map(|t| t.n).collect();
        assert_eq!(
            numbers,
            (1..=numbers.len() as u64).collect::<Vec<_>>(),
            "job stalled or restarted"
        );
    }
}

/// Restores from a missing, corrupt or foreign checkpoint are refused before CRIU runs, with a
/// clear error, and change nothing on the volume; the refusing shim exits 125.
#[test]
fn bad_checkpoints_are_refused_and_left_untouched() {
    let lab = Lab::new();
    let mut source = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]),
    );
    wait_tick(&source, 3);
    checkpointed(source.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
    assert_eq!(source.wait(), 0);
    let good = lab.staging().join("lab/render/1");
    let copy = |seq: &str| {
        let dst = lab.staging().join("lab/render").join(seq);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&good)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(status.success());
        dst
    };
    let corrupt = copy("2");
    let pages = std::fs::read_dir(&corrupt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&pages, bytes).unwrap();
    let missing = copy("3");
    std::fs::remove_file(missing.join("manifest.json")).unwrap();

    let cases = [
        ("lab/render/2", "uid-1", "the checkpoint is corrupt"),
        ("lab/render/3", "uid-1", "manifest.json"),
        ("lab/render/1", "uid-other", "belongs to job"),
        ("lab/render/../../etc", "uid-1", "`..`"),
    ];
    for (path, uid, expect) in cases {
        let before = tree_fingerprint(&lab.staging());
        let mut spec = NodeSpec::new(&lab, &format!("r{}", uid.len() + path.len())).restore(path);
        spec.job_uid = uid.into();
        let mut node = Node::start(&lab, spec);
        assert_eq!(node.wait(), lodger_shim::EXIT_SHIM_FAILED, "{path} {uid}");
        let err = node.stderr.snapshot().join("\n");
        assert!(err.contains(expect), "{path}: expected {expect:?} in {err}");
        assert_eq!(
            tree_fingerprint(&lab.staging()),
            before,
            "{path}: the volume changed"
        );
    }
}

/// Without CRIU the job still runs, a checkpoint fails with an error naming `make deps`, and a
/// restore refuses to start with the same hint.
#[test]
fn missing_criu_is_named_with_the_install_step() {
    let lab = Lab::new();
    let mut spec = NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]);
    spec.criu = "/nonexistent/criu".into();
    let mut node = Node::start(&lab, spec);
    wait_tick(&node, 2);
    let (kind, message) =
        error_kind(node.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
    assert_eq!(kind, ErrorKind::CheckpointFailed);
    assert!(
        message.contains("make deps") && message.contains("install-criu.sh"),
        "{message}"
    );
    assert_eq!(
        disposition(node.signal(SIGTERM, 1)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 42);

    let mut spec = NodeSpec::new(&lab, "b").restore("lab/render/1");
    spec.criu = "/nonexistent/criu".into();
    let mut node = Node::start(&lab, spec);
    assert_eq!(node.wait(), lodger_shim::EXIT_SHIM_FAILED);
    assert!(node.stderr.snapshot().join("\n").contains("make deps"));
}

/// The shim exits with the job's code, or 128 + the signal number when a signal killed it, and
/// runs the job as the requested user; signals never sent twice for one seq.
#[test]
fn exit_codes_identity_and_signal_dedup() {
    let lab = Lab::new();
    let mut spec = NodeSpec::new(&lab, "code");
    spec.command = vec!["sh".into(), "-c".into(), "echo hello; exit 3".into()];
    let mut node = Node::start(&lab, spec);
    assert_eq!(node.wait(), 3);
    assert_eq!(node.stdout.snapshot(), ["hello"]);

    let mut spec = NodeSpec::new(&lab, "killed");
    spec.command = vec!["sh".into(), "-c".into(), "kill -9 $$".into()];
    let mut node = Node::start(&lab, spec);
    assert_eq!(node.wait(), 128 + 9);

    let mut spec = NodeSpec::new(&lab, "user").testjob(&["--interval-ms", "20"]);
    spec.extra.extend([
        "--uid".into(),
        "65534".into(),
        "--gid".into(),
        "65534".into(),
    ]);
    let mut node = Node::start(&lab, spec);
    let caps = node.stdout.wait_for("caps", |l| l.starts_with("caps "));
    assert!(caps.ends_with("uid=65534"), "{caps}");
    assert!(caps.contains("CapEff=0000000000000000"), "{caps}");
    assert_eq!(
        disposition(node.signal(SIGUSR1, 5)),
        SignalDisposition::Delivered
    );
    assert_eq!(
        disposition(node.signal(SIGUSR1, 5)),
        SignalDisposition::Duplicate
    );
    assert_eq!(
        disposition(node.signal(SIGUSR1, 4)),
        SignalDisposition::Duplicate
    );
    node.stdout
        .wait_for("usr1", |l| l.starts_with("usr1 count=1"));
    assert_eq!(
        disposition(node.signal(SIGTERM, 6)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 42);
    let seen: BTreeSet<_> = node
        .stdout
        .snapshot()
        .into_iter()
        .filter(|l| l.starts_with("usr1"))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// A checkpoint that cannot finish within its deadline is abandoned (CRIU is killed) with
/// `deadlineExceeded`, and the job keeps running here untouched.
#[test]
fn deadline_exceeded_keeps_the_job_running() {
    let lab = Lab::new();
    let mut node = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]),
    );
    wait_tick(&node, 3);
    let reply = node.call(lodger_shim::control::Op::Checkpoint(
        lodger_shim::control::CheckpointRequest {
            path: "lab/render/1".into(),
            strategy: Strategy::StopAndCopy,
            leave_running: false,
            job: job(),
            seq: 1,
            deadline_ms: 1,
        },
    ));
    let (kind, message) = error_kind(reply);
    assert_eq!(kind, ErrorKind::DeadlineExceeded, "{message}");
    assert!(
        !lab.staging().join("lab/render/1").exists(),
        "partial image left behind"
    );
    let after = last_tick(&node.stdout) + 3;
    wait_tick(&node, after);
    assert_eq!(
        disposition(node.signal(SIGTERM, 1)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 42);
    let numbers: Vec<u64> = ticks(&node.stdout.snapshot()).iter().map(|t| t.n).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
}

/// The capability set docs/engine.md asks pods for (SYS_ADMIN, SYS_PTRACE, CHECKPOINT_RESTORE,
/// NET_ADMIN, SYS_TIME, SYS_CHROOT, nothing else) is enough for both shims to start, dump and
/// restore a job with every strategy; if this fails, workload pods built from the documented
/// securityContext cannot migrate.
#[test]
fn the_documented_pod_capabilities_are_enough() {
    const POD_CAPS: &str =
        "-all,+sys_admin,+sys_ptrace,+checkpoint_restore,+net_admin,+sys_time,+sys_chroot";
    for (seq, strategy) in [
        (1u64, Strategy::StopAndCopy),
        (2, Strategy::LazyRestore),
        (3, Strategy::PostCopy),
    ] {
        let lab = Lab::new();
        let mut spec = NodeSpec::new(&lab, "a").testjob(&["--mem-mib", "8", "--interval-ms", "20"]);
        spec.caps = Some(POD_CAPS.into());
        let mut source = Node::start(&lab, spec);
        wait_tick(&source, 3);
        let path = format!("lab/render/{seq}");
        let outcome = checkpointed(source.checkpoint(&path, seq, strategy, false));
        assert_eq!(outcome.strategy, strategy);
        let mut spec = NodeSpec::new(&lab, "b").restore(&path);
        spec.caps = Some(POD_CAPS.into());
        let mut target = Node::start(&lab, spec);
        let last = last_tick(&source.stdout);
        wait_tick(&target, last + 3);
        assert_eq!(
            disposition(target.signal(SIGTERM, 1)),
            SignalDisposition::Delivered
        );
        assert_eq!(target.wait(), 42, "{strategy:?}");
        assert_eq!(source.wait(), 0, "{strategy:?}");
    }
}

/// Without SYS_CHROOT (the five capabilities DESIGN.md started from) the dump works (the
/// container's mounts are external: CRIU no longer enters the job's mount namespace to copy
/// them), but the restore cannot: CRIU must `setns` between the mount namespaces it builds,
/// which needs CAP_SYS_CHROOT. The restoring shim fails with CRIU's reason (exit 125) and the
/// checkpoint stays for another try. If this starts passing, SYS_CHROOT may be dropped from the
/// documented pod capabilities.
#[test]
fn without_sys_chroot_the_restore_fails_safely() {
    const FIVE_CAPS: &str = "-all,+sys_admin,+sys_ptrace,+checkpoint_restore,+net_admin,+sys_time";
    let lab = Lab::new();
    let mut spec = NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]);
    spec.caps = Some(FIVE_CAPS.into());
    let mut source = Node::start(&lab, spec);
    wait_tick(&source, 3);
    checkpointed(source.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
    assert_eq!(source.wait(), 0);
    let dir = lab.staging().join("lab/render/1");
    let before = tree_fingerprint(&dir);
    let mut spec = NodeSpec::new(&lab, "b").restore("lab/render/1");
    spec.caps = Some(FIVE_CAPS.into());
    let mut target = Node::start(&lab, spec);
    assert_eq!(target.wait(), lodger_shim::EXIT_SHIM_FAILED);
    let stderr = target.stderr.snapshot().join("\n");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert_eq!(
        tree_fingerprint(&dir),
        before,
        "a failed restore changes nothing"
    );
}

/// The shim is a container's PID 1: orphans reparented to it are reaped (else `kubectl exec`
/// leftovers pile up as zombies), while the job keeps being supervised.
#[test]
fn orphans_reparented_to_the_shim_are_reaped() {
    let lab = Lab::new();
    let mut spec = NodeSpec::new(&lab, "a").testjob(&["--interval-ms", "20"]);
    // The subshell exits at once; its `sleep` is orphaned to the node's PID 1, which then execs
    // the shim.
    spec.setup = Some("(sleep 0.2 &)".into());
    let mut node = Node::start(&lab, spec);
    wait_tick(&node, 2);
    let shim = node.shim_pid().to_string();
    let zombies = || -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.len() > 1 && f[0] == "Z" && f[1] == shim
            })
            .count()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    // The orphan exits after 0.2 s: first it must show up as the shim's zombie (proof it was
    // reparented to the shim), then the shim's 5 s sweep must reap it.
    while zombies() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "orphan never became the shim's zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    while zombies() > 0 {
        assert!(std::time::Instant::now() < deadline, "zombie never reaped");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let after = last_tick(&node.stdout) + 2;
    wait_tick(&node, after);
    assert_eq!(
        disposition(node.signal(SIGTERM, 1)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 42);
}
