//! Real migrations between two *container-like* pods: each "pod" is a shim started the way runc
//! and the kubelet start a workload container, with nothing but root, `unshare`, `mount` and
//! `pivot_root`. This is the mount layout the shim meets in a real cluster, which
//! `tests/migration.rs` (shims on a copy of the host's mount tree) does not have:
//!
//! - the root is an overlayfs (containerd's snapshotter) whose lower layer is a prepared image
//!   holding the job's binary and its libraries; the shim and CRIU come from the self-contained
//!   bundle of `scripts/make-bundle.sh`, bound read-only at `lodger_api::TOOLS_MOUNT_PATH`;
//! - bind mounts of single files (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`,
//!   `/dev/termination-log`) and of directories (the control emptyDir, the checkpoint volume, a
//!   data volume, the read-only service-account token tmpfs);
//! - a tmpfs `/dev` with bind-mounted device nodes, devpts and shm; a fresh `/proc` with runc's
//!   masked paths (`/dev/null` bound over files, read-only tmpfs over directories) and read-only
//!   paths; a read-only sysfs; then `pivot_root`, and the shim exec'd as PID 1 of a new PID, UTS
//!   and IPC namespace.
//!
//! The restoring pod is a *new* container: another overlay instance, other files behind
//! `/etc/hosts` & co., another control directory and token tmpfs; only the volumes (checkpoint
//! and data, the ReadWriteMany PVCs) are the same directories. The tests check that the job
//! continues there (counter, memory checksum, file offset, child process, PIDs) and that it
//! sees the *new* pod's files afterwards.
//!
//! Not reproduced (see docs/engine.md, "Inside a container"): cgroups, seccomp, AppArmor/SELinux,
//! user namespaces, a network namespace per pod, a real snapshotter, another kernel on node B.
//! Device nodes are bind-mounted as runc does for user-namespaced containers (rootful runc
//! uses mknod instead; bind mounts are the harder case for CRIU).
//!
//! Each pod lives in its own mount namespace (`unshare --mount`, propagation private), so every
//! mount goes with it; dropping a [`Pod`] SIGKILLs its `unshare`, whose `--kill-child` kills the
//! shim (PID 1), hence every process of the pod, and the drop waits until the shim is gone.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, SHIM, TESTJOB, Tick, checkpoint_op, control_call, job, ticks, wait_exit};
use lodger_api::{CHECKPOINT_MOUNT_PATH, CONTROL_MOUNT_PATH, TOOLS_MOUNT_PATH};
use lodger_shim::control::{
    self, CheckpointOutcome, Op, PageCheckState, Reply, SignalDisposition, Strategy,
};

const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;

/// Where the job binary lives in the image.
const JOB_IN_IMAGE: &str = "/usr/local/bin/lodger-testjob";
/// An ordinary ReadWriteMany volume of the job (its working file lives there).
const DATA_MOUNT_PATH: &str = "/data";
/// The service-account token volume.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the old root is put by pivot_root (a directory of the image, so the overlay's upper
/// layer stays clean).
const OLD_ROOT: &str = "/.oldroot";

// ---- The shell steps of a container start, in order. Each stands for one runc/kubelet step. ----

/// containerd's overlayfs snapshotter: the container's root is an overlay whose lower layer is
/// the image and whose upper layer is private to this container.
const ROOTFS_OVERLAY: &str = r##"
mkdir -p "$R" "$N/upper" "$N/work"
mount -t overlay overlay -o "lowerdir=$IMAGE,upperdir=$N/upper,workdir=$N/work" "$R"
"##;

/// runc's /proc: a proc of the container's PID namespace; `maskedPaths` (files: `/dev/null`
/// bound over them, directories: a read-only tmpfs; only those that exist, as runc does) and
/// `readonlyPaths` (bound onto themselves, remounted read-only).
const PROC_WITH_MASKS: &str = r##"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for p in kcore keys timer_list timer_stats latency_stats sched_debug; do
    if [ -f "$R/proc/$p" ]; then mount --bind /dev/null "$R/proc/$p"; fi
done
for p in proc/acpi proc/asound proc/scsi sys/firmware; do
    if [ -d "$R/$p" ]; then mount -t tmpfs -o ro tmpfs "$R/$p"; fi
done
for p in bus fs irq sys sysrq-trigger; do
    if [ -e "$R/proc/$p" ]; then
        mount --bind "$R/proc/$p" "$R/proc/$p"
        mount -o remount,bind,ro "$R/proc/$p"
    fi
done
"##;

/// runc's /dev: a tmpfs with device nodes (bind-mounted, as runc does in user-namespaced
/// containers), a new devpts instance and /dev/shm; the kubelet binds the container's
/// termination-log file at /dev/termination-log.
const DEV_TMPFS: &str = r##"
mount -t tmpfs -o nosuid,strictatime,mode=755,size=65536k tmpfs "$R/dev"
for d in null zero urandom; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm "$R/dev/shm"
: > "$N/termination-log"
touch "$R/dev/termination-log"
mount --bind "$N/termination-log" "$R/dev/termination-log"
"##;

/// runc's /sys for a non-privileged container: sysfs, read-only.
const SYSFS_RO: &str = r##"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
"##;

/// The kubelet's per-pod files, bind-mounted as single files.
const ETC_FILES: &str = r##"
for f in hosts hostname resolv.conf; do
    echo "# $f of pod $POD" > "$N/$f"
    mount --bind "$N/$f" "$R/etc/$f"
done
"##;

/// The pod's volumes: the tools emptyDir (read-only), the control emptyDir, the checkpoint PVC,
/// a data PVC, and the service-account token (a tmpfs the kubelet fills, bound read-only).
const VOLUMES: &str = r##"
mount --bind "$BUNDLE" "$R$TOOLS"
mount -o remount,bind,ro "$R$TOOLS"
mkdir -p "$N/control"
mount --bind "$N/control" "$R$CONTROL"
mount --bind "$STAGING" "$R$CHECKPOINTS"
mount --bind "$DATA" "$R$DATA_PATH"
mkdir -p "$N/token"
mount -t tmpfs -o size=1m tmpfs "$N/token"
echo "token of pod $POD" > "$N/token/token"
mount --bind "$N/token" "$R$TOKEN"
mount -o remount,bind,ro "$R$TOKEN"
"##;

/// runc's pivot_root, then the old root detached. After the pivot nothing of the host is on
/// the path, so the host's umount runs through the host's loader under the old root.
/// NB: the loader's path is Debian's x86_64 multiarch one (the machines Lodger is tested on);
/// `set -e` stops the pod if it is wrong, so the job never runs with the host still mounted.
const PIVOT_ROOT: &str = r##"
cd "$R"
pivot_root . ".$OLD_ROOT"
"$OLD_ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$OLD_ROOT/lib/x86_64-linux-gnu:$OLD_ROOT/usr/lib/x86_64-linux-gnu" \
    "$OLD_ROOT/usr/bin/umount" -l "$OLD_ROOT"
cd /
"##;

/// The whole container start; `exec "$@"` becomes PID 1 of the container (the shim).
fn container_script() -> String {
    [
        "set -eu\nmount --make-rprivate /\n",
        ROOTFS_OVERLAY,
        PROC_WITH_MASKS,
        DEV_TMPFS,
        SYSFS_RO,
        ETC_FILES,
        VOLUMES,
        PIVOT_ROOT,
        "exec \"$@\"\n",
    ]
    .concat()
}

// ---- The cluster: an image, the tools bundle, two shared volumes. ----

/// What both pods share: the image's lower layer, the bundle, and the two RWX volumes.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lodger-container-like")
            .tempdir()
            .unwrap();
        for d in ["staging", "data"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let cluster = Self { dir };
        prepare_image(&cluster.path("image"));
        make_bundle(&cluster.path("bundle"));
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The container image: the job's binary, every library it links (as ldd resolves them here),
/// the mount points the runtime needs, and empty /etc files for the kubelet's binds.
fn prepare_image(image: &Path) {
    let dirs = [
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "usr/local/bin",
        DATA_MOUNT_PATH,
        TOKEN_MOUNT_PATH,
        CONTROL_MOUNT_PATH,
        CHECKPOINT_MOUNT_PATH,
        TOOLS_MOUNT_PATH,
        OLD_ROOT,
    ];
    for d in dirs {
        std::fs::create_dir_all(image.join(d.trim_start_matches('/'))).unwrap();
    }
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        std::fs::write(image.join(f), "").unwrap();
    }
    std::fs::copy(TESTJOB, image.join(JOB_IN_IMAGE.trim_start_matches('/'))).unwrap();
    let ldd = Command::new("ldd").arg(TESTJOB).output().unwrap();
    assert!(ldd.status.success(), "ldd {TESTJOB}: {ldd:?}");
    let mut copied = 0;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path else { continue };
        let target = image.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // NB: copy follows symlinks (/lib64/ld-linux-x86-64.so.2 is one on Debian).
        std::fs::copy(path, &target).unwrap_or_else(|e| panic!("copy {path}: {e}"));
        copied += 1;
    }
    assert!(copied >= 2, "the job links at least libc and the loader");
    std::fs::set_permissions(
        image.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// The init container's bundle (scripts/make-bundle.sh): this build's lodger-shim and the
/// installed CRIU with their own loader and libraries, usable only at TOOLS_MOUNT_PATH.
fn make_bundle(bundle: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-bundle.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(bundle)
        .env("SHIM", SHIM)
        .env("PREFIX_IN_IMAGE", TOOLS_MOUNT_PATH)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-bundle.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- A pod: the container above with the shim as PID 1. ----

/// Lines a pod printed on one stream, and whether the stream has ended (the pod is gone).
#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    ended: bool,
}

/// Output of a pod, with a condition variable to wait on.
#[derive(Default)]
struct Output {
    state: Mutex<Lines>,
    changed: Condvar,
}

impl Output {
    fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits until a line satisfies `pred`; fails at once if the stream ends first (e.g. a
    /// restore refused: the shim exits 125), with `context` in the message.
    fn wait_for(&self, what: &str, context: &Output, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(l) = state.lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !state.ended,
                "{} waiting for {what}; output: {:?}; stderr: {:?}",
                if state.ended {
                    "pod ended"
                } else {
                    "timed out"
                },
                state.lines.iter().rev().take(10).collect::<Vec<_>>(),
                context.snapshot()
            );
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

struct Pod {
    child: Child,
    /// The pod's directory on the "node": overlay upper layer, /etc files, control dir.
    dir: PathBuf,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exited: bool,
}

impl Pod {
    /// Starts pod `name` whose shim gets `shim_args` after the contract's fixed flags
    /// (docs/contracts.md, "Workload pod").
    fn start(cluster: &Cluster, name: &str, shim_args: &[String]) -> Self {
        let dir = cluster.path(name);
        std::fs::create_dir(&dir).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            &container_script(),
            name,
        ]);
        cmd.arg(format!("{TOOLS_MOUNT_PATH}/bin/lodger-shim"))
            .args(["--control-dir", CONTROL_MOUNT_PATH])
            .args(["--checkpoint-root", CHECKPOINT_MOUNT_PATH])
            .args(["--criu", &format!("{TOOLS_MOUNT_PATH}/bin/criu")])
            .args(["--job-namespace", &job().namespace])
            .args(["--job-name", &job().name])
            .args(["--job-uid", &job().uid])
            .args(shim_args);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LODGER_LOG", "info")
            .env("POD", name)
            .env("N", &dir)
            .env("R", dir.join("rootfs"))
            .env("IMAGE", cluster.path("image"))
            .env("BUNDLE", cluster.path("bundle"))
            .env("STAGING", cluster.path("staging"))
            .env("DATA", cluster.path("data"))
            .env("TOOLS", TOOLS_MOUNT_PATH)
            .env("CONTROL", CONTROL_MOUNT_PATH)
            .env("CHECKPOINTS", CHECKPOINT_MOUNT_PATH)
            .env("DATA_PATH", DATA_MOUNT_PATH)
            .env("TOKEN", TOKEN_MOUNT_PATH)
            .env("OLD_ROOT", OLD_ROOT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("unshare is installed (util-linux)");
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        let mut readers = Vec::new();
        for (pipe, lines) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
            ),
            (Box::new(child.stderr.take().unwrap()), Arc::clone(&stderr)),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lines.state.lock().unwrap().lines.push(line);
                    lines.changed.notify_all();
                }
                lines.state.lock().unwrap().ended = true;
                lines.changed.notify_all();
            }));
        }
        Self {
            child,
            dir,
            stdout,
            stderr,
            readers,
            exited: false,
        }
    }

    fn job_args(file: &str) -> Vec<String> {
        [
            "--exit-after-migration",
            "--",
            JOB_IN_IMAGE,
            "--mem-mib",
            "64",
            "--interval-ms",
            "20",
            "--file",
            file,
        ]
        .map(String::from)
        .to_vec()
    }

    /// PID (in the test's namespace) of the container's PID 1 (the shim), once it runs.
    fn shim_pid(&self) -> i32 {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("unshare has forked")
            .parse()
            .unwrap()
    }

    /// PID (in the test's namespace) of the job: the process of the pod's tree that is PID 2 of
    /// the job's own (third-level) PID namespace.
    fn job_pid(&self) -> i32 {
        lodger_engine::checkpoint::process_tree(self.shim_pid())
            .into_iter()
            .find(|pid| {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                status.lines().any(|l| {
                    let ids: Vec<&str> = l
                        .strip_prefix("NSpid:")
                        .map(|v| v.split_whitespace().collect())
                        .unwrap_or_default();
                    ids.len() == 3 && ids[2] == "2"
                })
            })
            .expect("the job runs in the pod")
    }

    fn call(&self, op: Op) -> Reply {
        let socket = self.dir.join("control").join(control::SOCKET_NAME);
        control_call(&socket, op, || self.stderr.snapshot())
    }

    fn checkpoint(&self, path: &str, seq: u64, strategy: Strategy) -> CheckpointOutcome {
        match self.call(checkpoint_op(path, seq, strategy, false)) {
            Reply::Checkpointed(o) => o,
            other => panic!(
                "checkpoint failed: {other:?}; stderr: {:?}",
                self.stderr.snapshot()
            ),
        }
    }

    fn signal(&self, signo: i32, seq: u64) -> SignalDisposition {
        match self.call(Op::Signal { signo, seq }) {
            Reply::Signal(s) => s.disposition,
            other => panic!("signal failed: {other:?}"),
        }
    }

    fn wait_tick(&self, n: u64) {
        self.stdout
            .wait_for(&format!("tick {n}"), &self.stderr, |l| {
                l.starts_with("tick=") && ticks(&[l.to_owned()])[0].n >= n
            });
    }

    /// Waits for the pod to end; returns the shim's exit code.
    fn wait(&mut self) -> i32 {
        let stderr = Arc::clone(&self.stderr);
        let status = wait_exit(&mut self.child, &mut self.readers, "pod", || {
            stderr.snapshot()
        });
        self.exited = true;
        status.code().unwrap_or(-1)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        let shim = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
            .ok()
            .and_then(|c| c.split_whitespace().next().map(str::to_owned));
        let _ = self.child.kill();
        let _ = self.child.wait();
        // NB: --kill-child SIGKILLs the shim (PID 1) when unshare dies; the namespace's other
        // processes die with it. Wait until it is gone so the next test starts clean.
        if let Some(shim) = shim {
            let deadline = Instant::now() + PATIENCE;
            while Path::new(&format!("/proc/{shim}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---- Checks ----

/// Source and target output together are ticks 1..=N exactly once, in order, with the same
/// PIDs, a working relay child, and a file offset that grew by one line per tick.
fn assert_continuity(before: &[Tick], after: &[Tick], file: &Path) {
    assert!(
        !before.is_empty() && !after.is_empty(),
        "ticks on both sides"
    );
    let all: Vec<&Tick> = before.iter().chain(after).collect();
    let numbers: Vec<u64> = all.iter().map(|t| t.n).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "lost or duplicated output lines");
    let mut off = 0u64;
    for t in &all {
        off += format!("line {}\n", t.n).len() as u64;
        assert_eq!(t.off, off, "file offset did not continue at tick {}", t.n);
        assert_eq!(t.relay, 2 * t.n, "pipe to the child broke at tick {}", t.n);
        assert_eq!(
            (t.pid, t.child),
            (before[0].pid, before[0].child),
            "PIDs changed at tick {}",
            t.n
        );
    }
    let content = std::fs::read_to_string(file).unwrap();
    for (i, line) in content.lines().enumerate() {
        assert_eq!(line, format!("line {}", i + 1), "file content broken");
    }
}

/// What the job sees at `path` through its own root (its mount namespace).
fn seen_by_job(pod: &Pod, path: &str) -> String {
    let pid = pod.job_pid();
    std::fs::read_to_string(format!("/proc/{pid}/root{path}"))
        .unwrap_or_else(|e| panic!("job cannot read {path}: {e}"))
}

/// The job's /proc shows its own PID namespace: exactly the job's three processes (init 1,
/// job 2, its child 3), not the container's shim and the rest of the pod. (Listing, not reading
/// /proc/1/cmdline: that reads the process's memory, which a lazy restore may not have paged in
/// yet.)
fn assert_job_has_its_own_proc(pod: &Pod) {
    let proc = format!("/proc/{}/root/proc", pod.job_pid());
    let mut pids: Vec<u32> = std::fs::read_dir(&proc)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    assert_eq!(
        pids,
        [1, 2, 3],
        "the job's /proc is not its own PID namespace's"
    );
}

/// No mount of the test's namespace refers to the cluster's directory: the pods' mounts stayed
/// in their own namespaces.
fn assert_no_mount_leaked(cluster: &Cluster) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = cluster.dir.path().display().to_string();
    assert!(
        !mountinfo.contains(&dir),
        "a pod's mount leaked into the host: {mountinfo}"
    );
}

/// Migrates the job from pod a to a new pod b with `strategy` and checks it continued.
fn migrate_between_pods(strategy: Strategy, seq: u64) {
    let cluster = Cluster::new();
    let file = format!("{DATA_MOUNT_PATH}/work.txt");
    let path = format!("{}/{}/{seq}", job().namespace, job().name);
    let mut source = Pod::start(&cluster, "a", &Pod::job_args(&file));
    source.wait_tick(5);
    assert!(seen_by_job(&source, "/etc/hostname").contains("pod a"));
    assert_job_has_its_own_proc(&source);
    let outcome = source.checkpoint(&path, seq, strategy);
    assert_eq!(outcome.strategy, strategy, "{outcome:?}");
    let restore = ["--exit-after-migration", "--restore", &path].map(String::from);
    let mut target = Pod::start(&cluster, "b", &restore);
    if strategy != Strategy::PostCopy {
        // PostCopy's source serves pages until the target has them all.
        assert_eq!(source.wait(), 0, "a migrated-away shim exits 0");
    }
    let last = ticks(&source.stdout.snapshot()).last().unwrap().n;
    target.wait_tick(last + 5);
    // The job now sees the new pod's files and volumes: CRIU bound them from pod b.
    for (path, pod) in [
        ("/etc/hostname", "b"),
        ("/etc/hosts", "b"),
        ("/etc/resolv.conf", "b"),
        (&format!("{TOKEN_MOUNT_PATH}/token") as &str, "b"),
    ] {
        assert!(
            seen_by_job(&target, path).contains(&format!("pod {pod}")),
            "{path} in the restored job is not pod b's"
        );
    }
    // ... but its /proc is still its own PID namespace's (PID 1 there is the job's init, not
    // pod b's shim): CRIU mounted it anew rather than binding the container's.
    assert_job_has_its_own_proc(&target);
    if matches!(strategy, Strategy::LazyRestore | Strategy::PostCopy) {
        assert_eq!(finished_page_check(&target), PageCheckState::Passed);
    }
    assert_eq!(target.signal(SIGUSR1, 1), SignalDisposition::Delivered);
    target
        .stdout
        .wait_for("usr1", &target.stderr, |l| l == "usr1 count=1 mem_ok=true");
    assert_eq!(target.signal(SIGTERM, 2), SignalDisposition::Delivered);
    assert_eq!(target.wait(), 42, "the job's exit code reaches pod b");
    assert_eq!(source.wait(), 0, "a migrated-away shim exits 0");
    assert_continuity(
        &ticks(&source.stdout.snapshot()),
        &ticks(&target.stdout.snapshot()),
        &cluster.path("data").join("work.txt"),
    );
    drop((source, target));
    assert_no_mount_leaked(&cluster);
}

/// The background page check a lazy restore reports in `status`, once it has finished.
fn finished_page_check(pod: &Pod) -> PageCheckState {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match pod.call(Op::Status) {
            Reply::Status(status) => match status.page_check {
                Some(PageCheckState::Pending) => {}
                Some(done) => return done,
                None => panic!("a lazy restore must report its page check: {status:?}"),
            },
            other => panic!("status: {other:?}"),
        }
        assert!(Instant::now() < deadline, "page check never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// StopAndCopy between two container-like pods (overlay root, file and directory bind mounts,
/// tmpfs /dev with bound device nodes, masked /proc, read-only sysfs, pivot_root): the job's
/// counter, 64 MiB memory checksum, file offset on a volume, child process and PIDs survive, it
/// sees pod b's /etc files and token afterwards, and its exit code reaches pod b. If this fails,
/// CRIU refuses or mis-restores the runtime's mounts (docs/engine.md, "Inside a container"):
/// Lodger would fail on its first real pod.
#[test]
fn stop_and_copy_between_container_like_pods() {
    migrate_between_pods(Strategy::StopAndCopy, 1);
}

/// LazyRestore between container-like pods: the target pages memory in from the volume through
/// userfaultfd while bound to pod b's mounts; the page check passes and the memory checksum
/// holds. If this fails, lazy restores break inside containers even where eager ones work.
#[test]
fn lazy_restore_between_container_like_pods() {
    migrate_between_pods(Strategy::LazyRestore, 2);
}

/// PostCopy between container-like pods: pod b fetches pages from pod a's page server
/// (loopback: the pods share the test's network namespace), the rest comes from the volume.
/// If this fails, post-copy migration breaks inside containers.
#[test]
fn post_copy_between_container_like_pods() {
    migrate_between_pods(Strategy::PostCopy, 3);
}
