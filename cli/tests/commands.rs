//! The plugin's commands against a mocked API server (kube-rs tower-test verifier pattern): each
//! test scripts the requests it expects, asserts method, URI and body, and replies as the API
//! server would.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kubectl_lodger::args::{LogsArgs, MigrateArgs, OutputFormat, PsArgs, RunArgs, SignalArgs};
use kubectl_lodger::commands::{self, Io};
use kubectl_lodger::error::CliError;
use lodger_stub::forward::RetryPolicy;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const NS: &str = "alice";
const JOBS: &str = "/apis/lodger.dev/v1alpha1/namespaces/alice/migratablejobs";

fn mock() -> (Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, NS), handle)
}

/// The next request: method, path+query, content type, JSON body (Null when empty), responder.
async fn next(handle: &mut Handle) -> (Method, String, String, Value, Send) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .expect("the command made no request within 1 s")
        .expect("the client is gone");
    let (parts, body) = request.into_parts();
    let ct = parts
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = body.collect_bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (
        parts.method,
        parts.uri.path_and_query().unwrap().as_str().to_string(),
        ct,
        value,
        send,
    )
}

fn reply(send: Send, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn reply_text(send: Send, text: &str) {
    send.send_response(Response::new(Body::from(text.as_bytes().to_vec())));
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{what} not found"), "metadata": {}})
}

fn job(name: &str, phase: &str, node: Option<&str>, exit_code: Option<i32>) -> Value {
    json!({
        "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {"template": {"spec": {"containers": [{"name": "job", "command": ["x"]}]}}},
        "status": {"phase": phase, "node": node, "exitCode": exit_code},
    })
}

fn pod(name: &str, generation: i64, terminated: bool) -> Value {
    let state = if terminated {
        json!({"terminated": {"exitCode": 0}})
    } else {
        json!({"running": {}})
    };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"lodger.dev/job": "sim", "lodger.dev/role": "workload", "lodger.dev/generation": generation.to_string()}},
           "spec": {"nodeName": "ws-12", "containers": [{"name": "job"}]},
           "status": {"phase": "Running", "containerStatuses": [{"name": "job", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": state}]}})
}

fn run_args(extra: &[&str]) -> RunArgs {
    use clap::Parser;
    let mut argv = vec!["kubectl-lodger", "run"];
    argv.extend_from_slice(extra);
    match kubectl_lodger::args::Cli::try_parse_from(argv)
        .expect("parses")
        .command
    {
        kubectl_lodger::args::Command::Run(a) => a,
        _ => unreachable!(),
    }
}

struct Captured {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Captured {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            err: Vec::new(),
        }
    }
    fn io(&mut self) -> Io<'_, Vec<u8>, Vec<u8>> {
        Io {
            out: &mut self.out,
            err: &mut self.err,
        }
    }
    fn out(&self) -> String {
        String::from_utf8(self.out.clone()).unwrap()
    }
    fn err(&self) -> String {
        String::from_utf8(self.err.clone()).unwrap()
    }
}

/// If this fails, `kubectl lodger run` would create a different object than it prints with
/// --dry-run, or without its field manager.
#[tokio::test]
async fn run_creates_the_job() {
    let (client, mut handle) = mock();
    let args = run_args(&[
        "--strategy",
        "PreCopy",
        "--home",
        "ws-alice",
        "--",
        "./sim",
        "--steps",
        "10",
    ]);
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let code = commands::run(
            client,
            NS,
            &args,
            None,
            Duration::from_millis(1),
            &mut c.io(),
        )
        .await;
        (code, c)
    });
    let (m, uri, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m, uri.as_str()),
        (
            Method::POST,
            format!("{JOBS}?&fieldManager=kubectl-lodger").as_str()
        )
    );
    assert_eq!(body["metadata"]["generateName"], "sim-");
    assert_eq!(body["spec"]["homeNode"], "ws-alice");
    assert_eq!(body["spec"]["migration"]["strategy"], "PreCopy");
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["./sim", "--steps", "10"])
    );
    assert_eq!(body["spec"]["template"]["spec"]["restartPolicy"], "Never");
    let mut created = body.clone();
    created["metadata"]["name"] = json!("sim-7xk2p");
    reply(send, 201, &created);
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    assert_eq!(c.out(), "migratablejob.lodger.dev/sim-7xk2p created\n");
}

/// If this fails, `run --wait` would not stream the job's output or not exit with its code.
#[tokio::test]
async fn run_wait_streams_output_and_exits_with_the_job_code() {
    let (client, mut handle) = mock();
    let args = run_args(&["--name", "sim", "--wait", "--", "./sim"]);
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let code = commands::run(
            client,
            NS,
            &args,
            None,
            Duration::from_millis(1),
            &mut c.io(),
        )
        .await;
        (code, c)
    });
    let (m, _, _, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(body["metadata"]["name"], "sim");
    reply(send, 201, &body);
    let pods = "/api/v1/namespaces/alice/pods";
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("sim-1", 1, true)]});
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert!(uri.starts_with(&format!("{pods}?")), "{uri}");
    reply(send, 200, &list);
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{pods}/sim-1"));
    reply(send, 200, &pod("sim-1", 1, true));
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        format!("{pods}/sim-1/log?&container=job&timestamps=true")
    );
    reply_text(
        send,
        "2026-11-22T10:00:00Z step 1\n2026-11-22T10:00:01Z diverged\n",
    );
    for _ in 0..2 {
        let (_, _, _, _, send) = next(&mut handle).await;
        reply(send, 200, &list);
        let (_, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(uri, format!("{JOBS}/sim"));
        reply(send, 200, &job("sim", "Failed", Some("ws-12"), Some(3)));
    }
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 3);
    assert_eq!(
        c.out(),
        "migratablejob.lodger.dev/sim created\nstep 1\ndiverged\n"
    );
    assert!(
        c.err().contains("migratablejob/sim Failed (exit code 3)"),
        "{}",
        c.err()
    );
}

/// If this fails, `migrate` would not set the annotation the operator acts on, or would send
/// something other than a merge patch of just that annotation.
#[tokio::test]
async fn migrate_sets_the_annotation() {
    let (client, mut handle) = mock();
    let args = MigrateArgs {
        job: "sim".into(),
        to: Some("ws-03".into()),
    };
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let code = commands::migrate(client, NS, &args, &mut c.io()).await;
        (code, c)
    });
    let (m, uri, _, _, send) = next(&mut handle).await;
    assert_eq!((m, uri), (Method::GET, format!("{JOBS}/sim")));
    reply(send, 200, &job("sim", "Running", Some("ws-12"), None));
    let (m, uri, ct, body, send) = next(&mut handle).await;
    assert_eq!(
        (m, uri),
        (
            Method::PATCH,
            format!("{JOBS}/sim?&fieldManager=kubectl-lodger")
        )
    );
    assert_eq!(ct, "application/merge-patch+json");
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"lodger.dev/migrate-to": "ws-03"}}})
    );
    reply(send, 200, &job("sim", "Running", Some("ws-12"), None));
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    assert_eq!(
        c.out(),
        "migratablejob.lodger.dev/sim migration to node ws-03 requested\n"
    );
}

/// If this fails, migrating a finished job or onto the node it already runs on would be sent to
/// the operator instead of being refused with a reason.
#[tokio::test]
async fn migrate_refuses_pointless_moves() {
    for (phase, node, want) in [
        ("Succeeded", None, "has ended (Succeeded)"),
        ("Running", Some("ws-03"), "already runs on ws-03"),
    ] {
        let (client, mut handle) = mock();
        let args = MigrateArgs {
            job: "sim".into(),
            to: Some("ws-03".into()),
        };
        let task = tokio::spawn(async move {
            commands::migrate(client, NS, &args, &mut Captured::new().io()).await
        });
        let (_, _, _, _, send) = next(&mut handle).await;
        reply(send, 200, &job("sim", phase, node, None));
        let err = task.await.unwrap().expect_err("refused");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(err.exit_code(), 2);
        drop(handle); // no PATCH was made: the verifier saw only the GET
    }
}

/// If this fails, `kubectl lodger signal` would number or name its JobSignal differently from
/// the stub (duplicate or skipped seqs), or not say that it is queued while the job migrates.
#[tokio::test]
async fn signal_creates_the_next_jobsignal() {
    let (client, mut handle) = mock();
    let args = SignalArgs {
        job: "sim".into(),
        signal: "usr1".into(),
    };
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let retry = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            max_attempts: Some(2),
        };
        let code = commands::signal(client, NS, &args, retry, &mut c.io()).await;
        (code, c)
    });
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{JOBS}/sim"));
    reply(send, 200, &job("sim", "Checkpointing", Some("ws-12"), None));
    let sigs = "/apis/lodger.dev/v1alpha1/namespaces/alice/jobsignals";
    let (m, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        (m, uri),
        (
            Method::GET,
            format!("{sigs}?&labelSelector=lodger.dev%2Fjob%3Dsim")
        )
    );
    let existing =
        serde_json::to_value(lodger_stub::forward::build_signal("sim", 4, 15, "stub")).unwrap();
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": [existing]}),
    );
    let (m, uri, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m, uri),
        (Method::POST, format!("{sigs}?&fieldManager=kubectl-lodger"))
    );
    assert_eq!(body["metadata"]["name"], "sim-sig-5");
    assert_eq!(body["spec"], json!({"job": "sim", "signal": 10, "seq": 5}));
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-sim");
    reply(send, 201, &body);
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    assert_eq!(
        c.out(),
        "jobsignal.lodger.dev/sim-sig-5 created (SIGUSR1, seq 5)\n"
    );
    assert!(
        c.err().contains("queued: the job is Checkpointing"),
        "{}",
        c.err()
    );
}

/// If this fails, `kubectl lodger signal JOB SIGRTMIN+3` would send another number than glibc's
/// SIGRTMIN+3 (Linux 37) or name it differently from `kill -l` in its output.
#[tokio::test]
async fn signal_sends_real_time_signals_by_their_linux_number() {
    let (client, mut handle) = mock();
    let args = SignalArgs {
        job: "sim".into(),
        signal: "SIGRTMIN+3".into(),
    };
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let code = commands::signal(client, NS, &args, RetryPolicy::cli(), &mut c.io()).await;
        (code, c)
    });
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{JOBS}/sim"));
    reply(send, 200, &job("sim", "Running", Some("ws-12"), None));
    let (m, _, _, _, send) = next(&mut handle).await;
    assert_eq!(m, Method::GET);
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    let (m, _, _, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(body["spec"], json!({"job": "sim", "signal": 37, "seq": 1}));
    reply(send, 201, &body);
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    assert_eq!(
        c.out(),
        "jobsignal.lodger.dev/sim-sig-1 created (SIGRTMIN+3, seq 1)\n"
    );
}

/// If this fails, signalling a job that does not exist would create an orphan JobSignal instead
/// of telling the user how to find their jobs.
#[tokio::test]
async fn signal_to_a_missing_job_says_how_to_find_jobs() {
    let (client, mut handle) = mock();
    let args = SignalArgs {
        job: "nope".into(),
        signal: "TERM".into(),
    };
    let task = tokio::spawn(async move {
        commands::signal(
            client,
            NS,
            &args,
            RetryPolicy::cli(),
            &mut Captured::new().io(),
        )
        .await
    });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 404, &not_found("migratablejobs.lodger.dev \"nope\""));
    let err = task.await.unwrap().expect_err("not found");
    assert!(matches!(err, CliError::JobNotFound { .. }));
    assert_eq!(
        err.to_string(),
        "migratablejob \"nope\" not found in namespace \"alice\" (list them with `kubectl lodger ps -n alice`)"
    );
}

/// If this fails, `ps -o json` would not print a valid kubectl-style List.
#[tokio::test]
async fn ps_json_lists_the_jobs() {
    let (client, mut handle) = mock();
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        let code = commands::ps(
            client,
            NS,
            &PsArgs::default(),
            Some(OutputFormat::Json),
            now,
            &mut c.io(),
        )
        .await;
        (code, c)
    });
    let (m, uri, _, _, send) = next(&mut handle).await;
    assert_eq!((m, uri), (Method::GET, format!("{JOBS}?")));
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJobList", "metadata": {},
                              "items": [job("b", "Running", Some("ws-1"), None), job("a", "Parked", None, None)]}),
    );
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    let parsed: Value = serde_json::from_str(&c.out()).expect("valid JSON");
    assert_eq!(parsed["kind"], "List");
    assert_eq!(
        parsed["items"][0]["metadata"]["name"], "a",
        "sorted by name"
    );
    assert_eq!(parsed["items"][1]["status"]["phase"], "Running");
}

/// If this fails, `ps` against a cluster without Lodger's CRDs would print a raw 404 instead of
/// saying how to install them.
#[tokio::test]
async fn missing_crd_says_how_to_install_it() {
    let (client, mut handle) = mock();
    let task = tokio::spawn(async move {
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        commands::ps(
            client,
            NS,
            &PsArgs::default(),
            None,
            now,
            &mut Captured::new().io(),
        )
        .await
    });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(
        send,
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                             "message": "the server could not find the requested resource", "metadata": {}}),
    );
    let err = task.await.unwrap().expect_err("404");
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "failed to list migratablejobs in namespace alice: the server could not find"
        ),
        "{msg}"
    );
    assert!(msg.contains("kubectl apply -f crds/"), "{msg}");
}

/// If this fails, a user who may not list pods cluster-wide would get an error from `nodes`
/// instead of the nodes with their own namespace's lodgers.
#[tokio::test]
async fn nodes_fall_back_to_the_namespace_when_forbidden() {
    let (client, mut handle) = mock();
    let task = tokio::spawn(async move {
        let mut c = Captured::new();
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        let code = commands::nodes(client, NS, None, now, &mut c.io()).await;
        (code, c)
    });
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        "/api/v1/nodes?&labelSelector=lodger.dev%2Fworkstation%3Dtrue"
    );
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ws-12", "labels": {"lodger.dev/idle": "true", "lodger.dev/owner": "carol"},
         "annotations": {"lodger.dev/idle-since": "2026-11-22T09:00:00Z"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]}),
    );
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        "/api/v1/pods?&labelSelector=lodger.dev%2Frole%3Dworkload"
    );
    reply(
        send,
        403,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                             "message": "pods is forbidden", "metadata": {}}),
    );
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        "/api/v1/namespaces/alice/pods?&labelSelector=lodger.dev%2Frole%3Dworkload"
    );
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("sim-1", 1, false)]}),
    );
    let (code, c) = task.await.unwrap();
    assert_eq!(code.expect("ok"), 0);
    assert_eq!(
        c.out(),
        "NAME    STATUS   IDLE   IDLE-SINCE   OWNER   LODGERS\nws-12   Ready    true   60m          carol   alice/sim-1\n"
    );
    assert!(
        c.err().contains("LODGERS shows namespace alice only"),
        "{}",
        c.err()
    );
}

/// If this fails, `logs` of a job that does not exist would print nothing and succeed.
#[tokio::test]
async fn logs_of_a_missing_job_is_an_error() {
    let (client, mut handle) = mock();
    let args = LogsArgs {
        job: "nope".into(),
        follow: false,
    };
    let task = tokio::spawn(async move {
        commands::logs(
            client,
            NS,
            &args,
            Duration::from_millis(1),
            &mut Captured::new().io(),
        )
        .await
    });
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{JOBS}/nope"));
    reply(send, 404, &not_found("migratablejobs.lodger.dev \"nope\""));
    let err = task.await.unwrap().expect_err("missing");
    assert!(matches!(err, CliError::JobNotFound { .. }), "{err}");
}

/// If this fails, `logs` of a parallel job would print nothing instead of pointing at its
/// instances, whose output it is.
#[tokio::test]
async fn logs_of_a_parallel_job_points_at_its_instances() {
    let (client, mut handle) = mock();
    let args = LogsArgs {
        job: "render".into(),
        follow: true,
    };
    let task = tokio::spawn(async move {
        commands::logs(
            client,
            NS,
            &args,
            Duration::from_millis(1),
            &mut Captured::new().io(),
        )
        .await
    });
    let (_, _, _, _, send) = next(&mut handle).await;
    let mut parent = job("render", "Running", None, None);
    parent["spec"]["parallelism"] = json!(4);
    reply(send, 200, &parent);
    let err = task.await.unwrap().expect_err("parallel");
    assert_eq!(
        err.to_string(),
        "migratablejob/render is a parallel job: its output is in its 4 instances, e.g. `kubectl lodger logs render-0` (up to render-3)"
    );
}
