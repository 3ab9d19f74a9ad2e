//! The checkpoint driver against the real shim (`target/debug/lodger-shim`, built by
//! `cargo build -p lodger-shim`, which `make test` does first) running a real job
//! (`lodger-testjob`) under real CRIU (`/usr/local/sbin/criu`, `make criu`), as root. Only the
//! Kubernetes API is mocked.
//!
//! The shim's control directory is placed where the kubelet would put the pod's `lodger-control`
//! emptyDir, so the agent finds the socket exactly as on a node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use lodger_api::Checkpoint;
use lodger_shim::control::{self, JobState, Op, Reply};
use serde_json::{Value, json};

use super::checkpoint::reconcile;
use crate::testing::{ApiServerVerifier, context, timeout_after};

const POD_URI: &str = "/api/v1/namespaces/lab/pods/sim-2";
const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/lab/events?";
const CRIU: &str = "/usr/local/sbin/criu";

fn status_uri() -> String {
    "/apis/lodger.dev/v1alpha1/namespaces/lab/checkpoints/sim-ckpt-3/status?&force=true&fieldManager=lodger-node-agent".to_string()
}

/// `target/debug/<name>` next to this test binary (`target/debug/deps/...`).
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p lodger-shim` (make test does)",
        path.display()
    );
    path
}

fn require_root_and_criu() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real-shim tests need root (CRIU, PID namespaces); CI runs them as root"
    );
    assert!(
        Path::new(CRIU).is_file(),
        "{CRIU} is missing: run `make criu` (scripts/install-criu.sh)"
    );
}

/// A real shim running a real job; killed with its job when dropped.
struct RealShim {
    child: Child,
    socket: PathBuf,
    init_pid: Option<i32>,
    _log: PathBuf,
}

impl RealShim {
    fn start(kubelet_root: &Path, checkpoint_root: &Path, job: &[String]) -> Self {
        let socket = super::shim_socket(kubelet_root, "pod-uid-1");
        let control_dir = socket.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&control_dir).unwrap();
        let log = kubelet_root.join("shim.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let out_file = std::fs::File::create(kubelet_root.join("job.out")).unwrap();
        let child = Command::new(built_binary("lodger-shim"))
            .arg("--control-dir")
            .arg(&control_dir)
            .arg("--checkpoint-root")
            .arg(checkpoint_root)
            .args(["--criu", CRIU])
            .args([
                "--job-namespace",
                "lab",
                "--job-name",
                "sim",
                "--job-uid",
                "job-uid-1",
            ])
            .arg("--")
            .args(job)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(log_file)
            .spawn()
            .expect("the shim starts");
        Self {
            child,
            socket,
            init_pid: None,
            _log: log,
        }
    }

    /// Waits until the shim answers and reports the job running.
    async fn wait_running(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Reply::Status(s)) =
                control::call(&self.socket, Op::Status, Duration::from_secs(2)).await
                && s.job == JobState::Running
            {
                self.init_pid = s.init_pid;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the shim did not report a running job within 30 s; log: {}",
                std::fs::read_to_string(&self._log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn job_state(&self) -> JobState {
        match control::call(&self.socket, Op::Status, Duration::from_secs(5)).await {
            Ok(Reply::Status(s)) => s.job,
            other => panic!("no status from the shim: {other:?}"),
        }
    }
}

impl Drop for RealShim {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        // The job is PID 1 of its own PID namespace: killing it ends every process of the job.
        if let Some(pid) = self.init_pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job's command line. NB: the binary is copied into the test's directory first: CRIU
/// cannot dump a process whose executable was replaced on disk meanwhile (a "ghost file"), which
/// happens when anything rebuilds `target/debug` while the test runs.
fn testjob(mem_mib: u32, ticks: &Path) -> Vec<String> {
    let copy = ticks.with_file_name("lodger-testjob");
    std::fs::copy(built_binary("lodger-testjob"), &copy).expect("copy the test job");
    vec![
        copy.to_string_lossy().into_owned(),
        "--interval-ms".into(),
        "20".into(),
        "--mem-mib".into(),
        mem_mib.to_string(),
        "--file".into(),
        ticks.to_string_lossy().into_owned(),
    ]
}

/// Waits until the job has filled its memory and started ticking (its tick file grows).
async fn wait_for_ticks(ticks: &Path) {
    let started = Instant::now();
    while std::fs::metadata(ticks).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the job did not start ticking within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn checkpoint(deadline_seconds: i32) -> Checkpoint {
    serde_json::from_value(json!({
        "apiVersion": "lodger.dev/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {
            "name": "sim-ckpt-3", "namespace": "lab",
            "ownerReferences": [{
                "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
                "name": "sim", "uid": "job-uid-1", "controller": true
            }]
        },
        "spec": {
            "job": "sim", "pod": "sim-2", "node": "desk-7", "seq": 3,
            "strategy": "StopAndCopy", "reason": "OwnerReturned",
            "leaveRunning": false, "deadlineSeconds": deadline_seconds
        }
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sim-2", "namespace": "lab", "uid": "pod-uid-1"},
        "spec": {"nodeName": "desk-7", "containers": [{"name": "job"}]},
        "status": {"phase": "Running"}
    })
}

fn echo(body: &Value) -> Value {
    let mut out = serde_json::to_value(checkpoint(300)).unwrap();
    out["status"] = body["status"].clone();
    out
}

/// If this fails, a Checkpoint does not become a real CRIU image of the real job on the volume
/// through the real shim's socket, or its outcome does not reach the Checkpoint's status:
/// request in (mocked API) → dump of a running job → Completed with the image's path and size.
#[tokio::test]
async fn real_shim_dumps_a_real_job_and_status_comes_back() {
    require_root_and_criu();
    let kubelet = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let ticks = kubelet.path().join("ticks");
    let mut shim = RealShim::start(kubelet.path(), volume.path(), &testjob(16, &ticks));
    shim.wait_running().await;
    wait_for_ticks(&ticks).await;

    let (client, verifier) = ApiServerVerifier::new();
    let server = tokio::spawn(async move {
        let mut v = verifier;
        v.expect("GET", POD_URI, None, pod()).await;
        let progress = v.expect_fn("PATCH", &status_uri(), echo).await;
        assert_eq!(progress["status"]["phase"], "InProgress");
        let done = v.expect_fn("PATCH", &status_uri(), echo).await;
        let s = &done["status"];
        assert_eq!(s["phase"], "Completed", "{s}");
        assert_eq!(s["path"], "lab/sim/3");
        assert_eq!(s["strategy"], "StopAndCopy");
        assert!(s["imageBytes"].as_i64().unwrap() > 16 << 20, "{s}");
        assert!(
            s["freezeMillis"].is_i64() && s["durationMillis"].is_i64(),
            "{s}"
        );
        assert!(s["stoppedAt"].is_string(), "{s}");
        let event = v.expect("POST", EVENTS_URI, None, json!({})).await;
        assert_eq!(event["reason"], "Checkpointed");
    });
    let ctx = Arc::new(context(client, kubelet.path()));
    let action = reconcile(Arc::new(checkpoint(120)), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    timeout_after(5, server).await;

    let image = volume.path().join("lab/sim/3");
    assert!(
        image.join(lodger_api::MANIFEST_FILE).is_file(),
        "manifest in {}",
        image.display()
    );
    assert_eq!(shim.job_state().await, JobState::Migrated);
}

/// If this fails, a dump that runs past the Checkpoint's deadline leaves the job frozen (or
/// gone) on this node: the Checkpoint must end Failed and the job must be running again here,
/// its tick file still growing.
#[tokio::test]
async fn real_shim_deadline_leaves_the_job_running() {
    require_root_and_criu();
    let kubelet = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let ticks = kubelet.path().join("ticks");
    // 768 MiB of pseudo-random memory takes several seconds to dump here (about 130 MB/s with
    // CRIU's page pipes and the image's checksums), far past the 1 s deadline.
    let mut shim = RealShim::start(kubelet.path(), volume.path(), &testjob(768, &ticks));
    shim.wait_running().await;
    wait_for_ticks(&ticks).await;

    let (client, verifier) = ApiServerVerifier::new();
    let server = tokio::spawn(async move {
        let mut v = verifier;
        v.expect("GET", POD_URI, None, pod()).await;
        v.expect_fn("PATCH", &status_uri(), echo).await;
        let done = v.expect_fn("PATCH", &status_uri(), echo).await;
        let s = &done["status"];
        assert_eq!(s["phase"], "Failed", "{s}");
        let msg = s["message"].as_str().unwrap();
        assert!(msg.contains("DeadlineExceeded"), "{msg}");
        v.expect("POST", EVENTS_URI, None, json!({})).await;
    });
    let ctx = Arc::new(context(client, kubelet.path()));
    reconcile(Arc::new(checkpoint(1)), ctx).await.unwrap();
    timeout_after(30, server).await;

    assert_eq!(shim.job_state().await, JobState::Running);
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let started = Instant::now();
    while size() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the job stopped ticking after the abandoned dump"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !volume
            .path()
            .join("lab/sim/3")
            .join(lodger_api::MANIFEST_FILE)
            .exists(),
        "an abandoned dump must not leave a manifest behind"
    );
}

/// If this fails, a JobSignal does not reach the real job through the real shim exactly once:
/// seq 1 (SIGUSR1) is delivered, a second hand-over of the same seq (an agent that restarted
/// before its status write landed) is a duplicate that still ends Delivered, and the job saw
/// the signal once.
#[tokio::test]
async fn real_shim_delivers_a_signal_exactly_once() {
    use super::signals::{Delivery, PendingSignal, deliver};
    require_root_and_criu();
    let kubelet = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let ticks = kubelet.path().join("ticks");
    let mut shim = RealShim::start(kubelet.path(), volume.path(), &testjob(4, &ticks));
    shim.wait_running().await;
    wait_for_ticks(&ticks).await;

    let sig_uri = "/apis/lodger.dev/v1alpha1/namespaces/lab/jobsignals/sim-sig-1/status?&force=true&fieldManager=lodger-node-agent";
    let (client, verifier) = ApiServerVerifier::new();
    let server = tokio::spawn(async move {
        let mut v = verifier;
        for (i, needle) in ["delivered to the job", "already handed"]
            .into_iter()
            .enumerate()
        {
            let body = v
                .expect_fn("PATCH", sig_uri, |b| {
                    json!({
                        "apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignal",
                        "metadata": {"name": "sim-sig-1", "namespace": "lab"},
                        "spec": {"job": "sim", "signal": 10, "seq": 1},
                        "status": b["status"].clone(),
                    })
                })
                .await;
            assert_eq!(body["status"]["phase"], "Delivered");
            let msg = body["status"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{msg}");
            if i == 0 {
                v.expect("POST", EVENTS_URI, None, json!({})).await;
            } else {
                // The recorder folds a repeated Event into a series: a merge patch.
                let series = v
                    .expect_prefix(
                        "PATCH",
                        "/apis/events.k8s.io/v1/namespaces/lab/events/sim-sig-1.",
                    )
                    .await;
                assert_eq!(series["series"]["count"], 2, "{series}");
            }
        }
    });
    let ctx = context(client, kubelet.path());
    let delivery = Delivery {
        namespace: "lab".into(),
        job: "sim".into(),
        pod: "sim-2".into(),
        pod_uid: "pod-uid-1".into(),
        signals: vec![PendingSignal {
            name: "sim-sig-1".into(),
            signo: 10,
            seq: 1,
        }],
    };
    assert_eq!(
        deliver(&ctx, &delivery).await.unwrap(),
        vec!["lab/sim-sig-1"]
    );
    assert_eq!(
        deliver(&ctx, &delivery).await.unwrap(),
        vec!["lab/sim-sig-1"]
    );
    timeout_after(5, server).await;

    let out = kubelet.path().join("job.out");
    let started = Instant::now();
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("usr1 count=1")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the job never saw SIGUSR1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrongly repeated signal time to arrive, then check it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.matches("usr1 count=").count(), 1, "{text}");
    assert!(text.contains("usr1 count=1 mem_ok=true"), "{text}");
}
