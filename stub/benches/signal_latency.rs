//! Latency of the stub's half of signal forwarding, and its footprint.
//!
//! Spawns the real `lodger-stub` against the loopback stand-in API server of the tests
//! (tests/support), sends it `LODGER_BENCH_SIGNALS` (default 200) SIGUSR1s with kill(2), one at a
//! time, and measures each from `kill` to the JobSignal's create arriving at the server. Also
//! reports the stub's resident memory (VmRSS after the run, VmHWM peak) and CPU time.
//! Goal (DESIGN.md: "reach the job within a second"): the stub's part should be a small fraction
//! of it; the rest is the node agent's watch and the shim. Not a timed assertion: run with
//! `cargo bench -p lodger-stub --bench signal_latency` (optimised), or
//! `cargo test -p lodger-stub --bench signal_latency` (debug build, an upper bound).
//!
//! Measured on the 2-core development machine, debug build, 200 signals: mean 1.5 ms, p50 1.0 ms,
//! p99 5.6 ms, max 8.5 ms; stub RSS 21 MiB; 0.11 s CPU in total.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{FakeApi, NS, job, pod};

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

async fn serve(
    axum::extract::State(fake): axum::extract::State<support::Shared>,
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
        .body(axum::body::Body::from(reply))
        .expect("response")
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("LODGER_BENCH_SIGNALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut fake = FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    };
    fake.pods.insert("job-1".into(), pod(1, "running", None));
    let fake = Arc::new(Mutex::new(fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(serve).with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: f\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: f\n  context:\n    cluster: f\n    user: u\n    namespace: {NS}\ncurrent-context: f\n"),
    )
    .expect("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lodger-stub"))
        .args(["--namespace", NS, "--job", support::JOB])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the stub");
    let pid = child.id().expect("pid");
    while fake.lock().unwrap().requests.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ticks0 = cpu_ticks(pid).unwrap_or(0);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let sent = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("kill");
        loop {
            if fake.lock().unwrap().signals.len() > i {
                break;
            }
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        latencies.push(sent.elapsed());
    }
    let ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(ticks0);
    let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    let signals = fake.lock().unwrap().signals.len();
    assert_eq!(signals, count, "one JobSignal per signal");
    println!("signal_latency: {count} signals, kill -> JobSignal create at the API server");
    println!(
        "  mean {mean:?}  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  stub RSS {rss} KiB (peak {hwm} KiB), CPU {ticks} ticks for {count} signals (while streaming one pod's log)"
    );
    child.kill().await.ok();
    server.abort();
}
