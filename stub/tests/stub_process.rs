//! The real `lodger-stub` binary, sent real signals with kill(2), talking HTTP over loopback to a
//! stand-in API server (tests/support) through a kubeconfig, as it would to a real one.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{FakeApi, JOB, NS, Shared, job, pod};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

struct Harness {
    fake: Shared,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    axum::extract::State(fake): axum::extract::State<Shared>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let (code, reply) = fake.lock().expect("lock").handle(&parts.method, &pq, &body);
    axum::response::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(reply))
        .expect("response")
}

async fn harness(fake: FakeApi) -> Harness {
    let fake = Arc::new(Mutex::new(fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(serve).with_state(fake.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: stub\n  user:\n    token: t\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: stub\n    namespace: {NS}\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    Harness {
        fake,
        _dir: dir,
        kubeconfig,
        server,
    }
}

fn stub_command(h: &Harness, wrapper: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_lodger-stub");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["--namespace", NS, "--job", JOB, "--poll-interval-ms", "20"])
        .env("KUBECONFIG", &h.kubeconfig)
        .env("HOSTNAME", "job-home")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn wait_until(fake: &Shared, what: &str, cond: impl Fn(&FakeApi) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond(&fake.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Waits until the stub made its first request (it blocks its signals before any request, so
/// from then on it can be signalled); fails with the stub's stderr if it exited instead.
async fn wait_ready(fake: &Shared, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.lock().unwrap().requests.is_empty() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).await.ok();
            }
            panic!(
                "the stub exited ({status}) before its first request (root is needed for unshare --pid): {err}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the stub's first request"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn signals_of(fake: &Shared) -> Vec<(i64, i64)> {
    fake.lock()
        .unwrap()
        .signals
        .iter()
        .map(|s| {
            (
                s["spec"]["seq"].as_i64().unwrap(),
                s["spec"]["signal"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Waits for the stub to exit; returns (exit code, stdout, stderr).
async fn finish(mut child: Child) -> (i32, String, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the stub exits once the job ended")
        .expect("wait");
    let (mut out, mut err) = (String::new(), String::new());
    stdout.read_to_string(&mut out).await.expect("stdout");
    stderr.read_to_string(&mut err).await.expect("stderr");
    (status.code().expect("exited, not killed"), out, err)
}

/// If this fails, a signal a user sends the home stub (`kubectl exec <job>-home -- kill -SIG 1`)
/// would not reach the job exactly once and in order, or the stub would not print the job's
/// output once and end with its exit code (here after a forwarded SIGTERM: cancellation).
#[tokio::test]
async fn real_signals_become_one_jobsignal_each_in_order_and_the_exit_code_propagates() {
    let mut fake = FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    };
    fake.pods.insert("job-1".into(), pod(1, "running", None));
    fake.logs.insert(
        "job-1".into(),
        "2026-11-22T10:00:00.5Z hello\n2026-11-22T10:00:00.5Z world\n".into(),
    );
    let h = harness(fake).await;
    let mut child = stub_command(&h, &[]).spawn().expect("spawn the stub");
    let pid = Pid::from_raw(child.id().expect("pid") as i32);
    // The stub blocks its signals before it makes any request: once it has asked, it is ready.
    wait_ready(&h.fake, &mut child).await;
    let sequence = [
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGUSR1,
        Signal::SIGTERM,
    ];
    let mut latencies = Vec::new();
    for (i, sig) in sequence.iter().enumerate() {
        let sent_at = Instant::now();
        kill(pid, *sig).expect("kill");
        wait_until(&h.fake, "the JobSignal", |f| f.signals.len() == i + 1).await;
        latencies.push(sent_at.elapsed());
    }
    let want: Vec<(i64, i64)> = sequence
        .iter()
        .enumerate()
        .map(|(i, s)| (i as i64 + 1, *s as i64))
        .collect();
    assert_eq!(signals_of(&h.fake), want);
    eprintln!(
        "kill -> JobSignal created: max {:?}, mean {:?}",
        latencies.iter().max().unwrap(),
        latencies.iter().sum::<Duration>() / latencies.len() as u32
    );
    // The job handles the SIGTERM and ends with 143.
    {
        let mut f = h.fake.lock().unwrap();
        f.pods.insert("job-1".into(), pod(1, "terminated", None));
        f.job = Some(job("Failed", Some(143)));
    }
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 143, "stderr: {err}");
    assert_eq!(
        out, "hello\nworld\n",
        "each line once, despite re-reads of the running container"
    );
    assert!(err.contains("SIGUSR2 from pid"), "{err}");
    assert!(
        err.contains("forwarded as JobSignal job-sig-9 (seq 9)"),
        "{err}"
    );
    let f = h.fake.lock().unwrap();
    assert_eq!(
        f.signal_posts,
        sequence.len(),
        "exactly one create per signal"
    );
    let ids: std::collections::BTreeSet<&str> = f
        .signals
        .iter()
        .map(|s| {
            s["metadata"]["annotations"]["lodger.dev/signal-id"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), sequence.len(), "each signal has its own id");
}

/// If this fails, a restarted stub would reuse seqs of signals already sent (the shim would
/// drop the new signal as a duplicate), a create whose reply was lost would be duplicated by its
/// retry, or the stub would exit non-zero for a job that succeeded.
#[tokio::test]
async fn a_restarted_stub_continues_after_the_highest_seq() {
    let mut fake = FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    };
    for seq in 1..=3 {
        let obj = lodger_stub::forward::build_signal(JOB, seq, 10, "old-stub");
        fake.signals.push(serde_json::to_value(obj).unwrap());
    }
    // The first create lands but its reply is lost (504): the retry must not duplicate it.
    fake.ambiguous_posts = 1;
    let h = harness(fake).await;
    let mut child = stub_command(&h, &[]).spawn().expect("spawn the stub");
    let pid = Pid::from_raw(child.id().expect("pid") as i32);
    wait_ready(&h.fake, &mut child).await;
    kill(pid, Signal::SIGUSR2).expect("kill");
    wait_until(&h.fake, "the retried create", |f| f.signal_posts == 2).await;
    kill(pid, Signal::SIGHUP).expect("kill");
    wait_until(&h.fake, "the JobSignal", |f| f.signals.len() == 5).await;
    assert_eq!(signals_of(&h.fake)[3..], [(4, 12), (5, 1)]);
    assert_eq!(
        h.fake.lock().unwrap().signal_posts,
        3,
        "ambiguous create, its retry (409), next signal"
    );
    h.fake.lock().unwrap().job = Some(job("Succeeded", Some(0)));
    let (code, out, err) = finish(child).await;
    assert_eq!((code, out.as_str()), (0, ""), "stderr: {err}");
}

/// If this fails, the stub as PID 1 of its container would never see the signals users send it
/// with `kubectl exec <job>-home -- kill -USR1 1` (the kernel drops signals to a namespace's init
/// that it does not handle or block), or deleting the job would not end it as cancelled.
#[tokio::test]
async fn stub_as_pid1_of_a_pid_namespace_receives_signals() {
    let h = harness(FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    })
    .await;
    let mut child = stub_command(&h, &["unshare", "--pid", "--fork", "--kill-child"])
        .spawn()
        .expect("spawn unshare (util-linux)");
    let unshare_pid = child.id().expect("pid");
    wait_ready(&h.fake, &mut child).await;
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("children");
    let stub_pid: i32 = children
        .split_whitespace()
        .next()
        .expect("the stub")
        .parse()
        .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{stub_pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "the stub is PID 1 of its namespace: {nspid}"
    );
    for (i, sig) in ["-USR1", "-TERM"].iter().enumerate() {
        // Like `kubectl exec`: a process inside the namespace signals PID 1.
        let out = std::process::Command::new("nsenter")
            .args([
                "--target",
                &stub_pid.to_string(),
                "--pid",
                "--",
                "/bin/kill",
                sig,
                "1",
            ])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(&h.fake, "the JobSignal", |f| f.signals.len() == i + 1).await;
    }
    assert_eq!(signals_of(&h.fake), vec![(1, 10), (2, 15)]);
    h.fake.lock().unwrap().job = None;
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 143, "stderr: {err}");
    assert!(err.contains("was deleted: the job is cancelled"), "{err}");
}

/// Sends `signal` (as `kill -s` spells it: `RTMIN+3`, `USR1`, ...) to `pid` with bash's `kill`,
/// as `kubectl exec <job>-home -- bash -c 'kill -s RTMIN+3 1'` would. (procps' `/bin/kill`
/// 4.0.2 knows `RTMIN+n` but fails on `RTMAX` with EINVAL.)
fn kill_named(pid: u32, signal: &str) {
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("kill -s {signal} {pid}")])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "kill -s {signal}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// If this fails, a real-time signal sent to the home stub (SIGRTMIN+3 = 37, SIGRTMAX = 64,
/// ...) would not become exactly one JobSignal with its Linux number, in order with standard
/// signals; or repeated instances of one real-time signal (which the kernel queues rather than
/// merges) would be merged or lost; or the stub, as PID 1 of its namespace, would drop them.
#[tokio::test]
async fn real_time_signals_become_one_jobsignal_each_in_order() {
    let h = harness(FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    })
    .await;
    let mut child = stub_command(&h, &["unshare", "--pid", "--fork", "--kill-child"])
        .spawn()
        .expect("spawn unshare (util-linux)");
    let unshare_pid = child.id().expect("pid");
    wait_ready(&h.fake, &mut child).await;
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("children");
    // The stub is PID 1 of its namespace; signalled from the parent namespace here (the
    // namespace-internal path is covered by `stub_as_pid1_of_a_pid_namespace_receives_signals`).
    let stub_pid: u32 = children
        .split_whitespace()
        .next()
        .expect("the stub")
        .parse()
        .expect("pid");
    let sequence = [
        ("RTMIN+3", 37),
        ("USR1", 10),
        ("RTMAX", 64),
        ("RTMIN", 34),
        ("RTMAX-1", 63),
        ("RTMIN+3", 37),
    ];
    for (i, (name, _)) in sequence.iter().enumerate() {
        kill_named(stub_pid, name);
        wait_until(&h.fake, "the JobSignal", |f| f.signals.len() == i + 1).await;
    }
    // A burst of one real-time signal: queued by the kernel, each instance is forwarded.
    for _ in 0..5 {
        kill_named(stub_pid, "RTMIN+3");
    }
    wait_until(&h.fake, "the burst", |f| {
        f.signals.len() == sequence.len() + 5
    })
    .await;
    let mut want: Vec<(i64, i64)> = sequence
        .iter()
        .enumerate()
        .map(|(i, (_, signo))| (i as i64 + 1, *signo))
        .collect();
    want.extend((0..5).map(|i| (sequence.len() as i64 + 1 + i, 37)));
    assert_eq!(signals_of(&h.fake), want);
    h.fake.lock().unwrap().job = Some(job("Succeeded", Some(0)));
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        err.contains("SIGRTMIN+3 from pid 0 forwarded as JobSignal job-sig-1 (seq 1)"),
        "{err}"
    );
    assert!(err.contains("SIGRTMAX-1 from pid 0"), "{err}");
    assert_eq!(
        h.fake.lock().unwrap().signal_posts,
        sequence.len() + 5,
        "exactly one create per signal"
    );
}
