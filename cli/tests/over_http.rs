//! The real `kubectl-lodger` binary against the stub's stand-in API server over loopback HTTP,
//! configured only through a kubeconfig file: proves the kubeconfig/context/namespace handling
//! and that `signal`, `logs` and `history` work end to end through a real client stack.

#[path = "../../stub/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use support::{FakeApi, JOB, Shared, job, pod};

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
        .body(axum::body::Body::from(reply))
        .expect("response")
}

/// A kubeconfig with two contexts: `fake` (namespace `ns`, the stand-in server, current) and
/// `elsewhere` (an unreachable server).
fn kubeconfig(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n- name: gone\n  cluster:\n    server: http://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n    namespace: ns\n- name: elsewhere\n  context:\n    cluster: gone\n    user: u\n    namespace: ns\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    path
}

async fn plugin(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-lodger"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .expect("run kubectl-lodger");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// If this fails, the plugin would not use the kubeconfig's current context and its namespace
/// as kubectl does, `--context` would be ignored, or `signal`/`logs`/`history` would not work
/// through a real HTTP client.
#[tokio::test]
async fn plugin_talks_to_the_cluster_its_kubeconfig_names() {
    let mut fake = FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    };
    fake.pods.insert("job-1".into(), pod(1, "terminated", None));
    fake.logs.insert(
        "job-1".into(),
        "2026-11-22T10:00:00Z hello from generation 1\n".into(),
    );
    let fake = Arc::new(Mutex::new(fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(serve).with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path(), port);

    let (code, out, err) = plugin(&config, &["signal", JOB, "USR2"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "jobsignal.lodger.dev/job-sig-1 created (SIGUSR2, seq 1)\n"
    );
    let (code, out, err) = plugin(&config, &["signal", JOB, "term"]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "jobsignal.lodger.dev/job-sig-2 created (SIGTERM, seq 2)\n"
        ),
        "{err}"
    );
    assert_eq!(fake.lock().unwrap().signals.len(), 2);

    let (code, out, err) = plugin(&config, &["logs", JOB]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from generation 1\n"),
        "{err}"
    );

    let (code, out, err) = plugin(&config, &["history", JOB]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "migratablejob/job has not migrated.\n"),
        "{err}"
    );

    // Another namespace: the stand-in server knows only `ns`, so the job is not found there.
    let requests_before = fake.lock().unwrap().requests.len();
    let (code, _, err) = plugin(&config, &["-n", "other", "history", JOB]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("migratablejob \"job\" not found in namespace \"other\""),
        "{err}"
    );
    let requests = fake.lock().unwrap().requests.clone();
    assert_eq!(
        requests[requests_before..],
        ["GET /apis/lodger.dev/v1alpha1/namespaces/other/migratablejobs/job".to_string()]
    );

    // --context picks the other cluster, which is unreachable.
    let (code, _, err) = plugin(&config, &["--context", "elsewhere", "history", JOB]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Is the cluster reachable?"), "{err}");
    server.abort();
}
