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
            .stdout(Stdio::null())
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

fn testjob(mem_mib: u32, ticks: &Path) -> Vec<String> {
    vec![
        built_binary("lodger-testjob")
            .to_string_lossy()
            .into_owned(),
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
            started.elapsed() < Duration::from_secs(60),
            "the job did not start ticking within 60 s"
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
