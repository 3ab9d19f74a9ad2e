//! The stub's request paths against a mocked API server (kube-rs tower-test pattern): JobSignal
//! creation (seq allocation, ordering, exactly-once across ambiguous failures), output stitching
//! across generations, queueing while migrating, cancellation and exit codes.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::{Api, Client};
use lodger_api::{JobPhase, MANAGER_STUB};
use lodger_stub::forward::{RetryPolicy, SendError, SignalSender, build_signal};
use lodger_stub::output::{Ended, FollowOptions, Stitcher, exit_code_of};
use lodger_stub::signals::Caught;
use lodger_stub::stub::{StubConfig, run};
use serde_json::{Value, json};
use support::{FakeApi, JOB, NS, job, pod, status};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(2),
        max_attempts: Some(4),
    }
}

fn sender(client: Client) -> SignalSender {
    SignalSender::new(client, NS, JOB, "stub-a", MANAGER_STUB, fast_retry()).with_owner_uid("u-1")
}

/// The next request: method, path+query, JSON body (Null when empty) and its responder.
async fn next(
    handle: &mut Handle,
) -> (
    Method,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .expect("the client made no request within 1 s")
        .expect("the client is gone");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    let pq = parts
        .uri
        .path_and_query()
        .expect("path")
        .as_str()
        .to_string();
    (parts.method, pq, value, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

fn signal_json(seq: i64, signo: i32, id: &str, job: &str) -> Value {
    serde_json::to_value(build_signal(job, seq, signo, id)).expect("json")
}

const SIGS: &str = "/apis/lodger.dev/v1alpha1/namespaces/ns/jobsignals";

/// If this fails, a restarted stub would reuse a seq (the shim would drop the signal as a
/// duplicate) or number signals out of order.
#[tokio::test]
async fn seq_continues_after_the_highest_existing_one() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move {
        let mut s = sender(client);
        let a = s.send(10).await.expect("first");
        let b = s.send(12).await.expect("second");
        (a, b)
    });
    let (m, uri, _, send) = next(&mut handle).await;
    assert_eq!(m, Method::GET);
    assert_eq!(uri, format!("{SIGS}?&labelSelector=lodger.dev%2Fjob%3Djob"));
    let items = vec![
        signal_json(1, 15, "x", JOB),
        signal_json(5, 10, "x", JOB),
        signal_json(2, 1, "x", JOB),
        // Same label by mistake, other job: must not count.
        signal_json(9, 1, "x", "other"),
    ];
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": items}),
    );
    for (seq, signo) in [(6, 10), (7, 12)] {
        let (m, uri, body, send) = next(&mut handle).await;
        assert_eq!(m, Method::POST);
        assert_eq!(uri, format!("{SIGS}?&fieldManager=lodger-stub"));
        assert_eq!(body["metadata"]["name"], format!("job-sig-{seq}"));
        assert_eq!(
            body["spec"],
            json!({"job": JOB, "signal": signo, "seq": seq})
        );
        assert_eq!(body["metadata"]["labels"]["lodger.dev/job"], JOB);
        assert_eq!(
            body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob", "name": JOB, "uid": "u-1"}])
        );
        reply(send, 201, &body);
    }
    let (a, b) = task.await.expect("task");
    assert_eq!(
        (a.seq, a.name.as_str(), a.attempts, a.recovered),
        (6, "job-sig-6", 1, false)
    );
    assert_eq!((b.seq, b.name.as_str()), (7, "job-sig-7"));
}

/// If this fails, a retry after an ambiguous failure (the create landed but the reply was lost)
/// would create a second JobSignal and the job would get the signal twice.
#[tokio::test]
async fn ambiguous_failure_then_already_exists_makes_no_duplicate() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move {
        let mut s = sender(client);
        let a = s.send(10).await.expect("first signal");
        let b = s.send(15).await.expect("second signal");
        (a, b)
    });
    let (_, _, _, send) = next(&mut handle).await; // list
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    // Attempt 1 lands on the server, but the connection drops before the reply.
    let (m, _, first, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(first["metadata"]["name"], "job-sig-1");
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset",
    ));
    // Attempt 2: the very same object (name and signal id).
    let (m, _, second, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(second, first, "a retry re-sends the same object");
    reply(
        send,
        409,
        &status(
            409,
            "AlreadyExists",
            "jobsignals.lodger.dev \"job-sig-1\" already exists",
        ),
    );
    // The sender reads it back and recognises its own signal id.
    let (m, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        (m, uri.as_str()),
        (
            Method::GET,
            "/apis/lodger.dev/v1alpha1/namespaces/ns/jobsignals?&fieldSelector=metadata.name%3Djob-sig-1&labelSelector=lodger.dev%2Fjob%3Djob"
        )
    );
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": [first]}),
    );
    // The next signal gets the next seq; nothing else was created for the first.
    let (m, _, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(body["metadata"]["name"], "job-sig-2");
    assert_eq!(body["spec"]["signal"], 15);
    reply(send, 201, &body);
    let (a, b) = task.await.expect("task");
    assert_eq!((a.seq, a.attempts, a.recovered), (1, 2, true));
    assert_eq!((b.seq, b.recovered), (2, false));
}

/// If this fails, when the plugin and the stub pick the same seq at once, one signal would be
/// lost (treated as already sent) instead of moving to the next seq.
#[tokio::test]
async fn seq_taken_by_another_sender_moves_to_the_next_seq() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move { sender(client).send(10).await });
    let (_, _, _, send) = next(&mut handle).await;
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    let (_, _, body, send) = next(&mut handle).await;
    assert_eq!(body["metadata"]["name"], "job-sig-1");
    reply(send, 409, &status(409, "AlreadyExists", "exists"));
    let (m, uri, _, send) = next(&mut handle).await;
    assert_eq!(m, Method::GET);
    assert!(
        uri.contains("fieldSelector=metadata.name%3Djob-sig-1"),
        "{uri}"
    );
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {},
                             "items": [signal_json(1, 12, "kubectl-lodger-other-1", JOB)]}),
    );
    let (m, _, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(body["metadata"]["name"], "job-sig-2");
    assert_eq!(body["spec"]["signal"], 10);
    reply(send, 201, &body);
    let sent = task.await.expect("task").expect("sent");
    assert_eq!((sent.seq, sent.recovered), (2, false));
}

/// If this fails, an RBAC refusal would be retried forever or silently burn a seq, leaving a
/// gap the node agent waits on.
#[tokio::test]
async fn permanent_refusal_is_an_error_and_consumes_no_seq() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move {
        let mut s = sender(client);
        let err = s.send(10).await.expect_err("forbidden");
        let ok = s.send(10).await.expect("second try");
        (err, ok)
    });
    let (_, _, _, send) = next(&mut handle).await;
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    let (_, _, body, send) = next(&mut handle).await;
    assert_eq!(body["metadata"]["name"], "job-sig-1");
    reply(
        send,
        403,
        &status(403, "Forbidden", "jobsignals.lodger.dev is forbidden"),
    );
    let (_, _, body, send) = next(&mut handle).await;
    assert_eq!(body["metadata"]["name"], "job-sig-1");
    reply(send, 201, &body);
    let (err, ok) = task.await.expect("task");
    assert!(matches!(err, SendError::Refused { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("failed to create JobSignal job-sig-1"),
        "{err}"
    );
    assert_eq!(ok.seq, 1);
}

/// If this fails, a plugin user would wait forever on an API server that keeps failing instead
/// of getting an error after the retry budget.
#[tokio::test]
async fn transient_failures_give_up_after_the_budget() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move { sender(client).send(10).await });
    let (_, _, _, send) = next(&mut handle).await;
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    for _ in 0..4 {
        let (_, _, body, send) = next(&mut handle).await;
        assert_eq!(
            body["metadata"]["name"], "job-sig-1",
            "retries keep the seq"
        );
        reply(
            send,
            503,
            &status(503, "ServiceUnavailable", "etcd is away"),
        );
    }
    let err = task.await.expect("task").expect_err("gave up");
    assert!(
        matches!(err, SendError::GaveUp { attempts: 4, .. }),
        "{err}"
    );
}

fn log_lines(lines: &[(&str, &str)]) -> String {
    lines
        .iter()
        .map(|(ts, text)| format!("{ts} {text}\n"))
        .collect()
}

fn stitcher(client: &Client, follow: bool) -> Stitcher {
    Stitcher::new(
        Api::namespaced(client.clone(), NS),
        Api::<Pod>::namespaced(client.clone(), NS),
        JOB,
        FollowOptions {
            follow,
            poll: Duration::from_millis(5),
        },
    )
}

/// If this fails, `kubectl logs -f <job>-home` would lose or repeat output where a job migrated:
/// generation 1 must be read to its end (including lines its following stream had not yet
/// delivered) and generation 2 from its start, each line once.
#[tokio::test]
async fn two_generations_are_stitched_without_loss_or_duplication() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let ended = stitcher(&client, true)
            .run(&mut out)
            .await
            .expect("stitched");
        (ended, String::from_utf8(out).expect("utf-8"))
    });
    let pods = "/api/v1/namespaces/ns/pods";
    let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        format!("{pods}?&labelSelector=lodger.dev%2Fjob%3Djob%2Clodger.dev%2Frole%3Dworkload")
    );
    reply(send, 200, &list(vec![pod(1, "running", None)]));
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{pods}/job-1"));
    reply(send, 200, &pod(1, "running", None));
    // Following generation 1: the stream ends when the container stops for the checkpoint, before
    // it delivered the last line ("d").
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        format!("{pods}/job-1/log?&container=main&follow=true&timestamps=true")
    );
    send.send_response(Response::new(Body::from(
        log_lines(&[
            ("2026-11-22T10:00:00.100000000Z", "a"),
            ("2026-11-22T10:00:01.200000000Z", "b"),
            ("2026-11-22T10:00:01.200000000Z", "b2"),
        ])
        .into_bytes(),
    )));
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{pods}/job-1"));
    reply(send, 200, &pod(1, "terminated", None));
    // The drain read resumes at the last second and must skip a, b, b2.
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        format!(
            "{pods}/job-1/log?&container=main&sinceTime=2026-11-22T10%3A00%3A01Z&timestamps=true"
        )
    );
    send.send_response(Response::new(Body::from(
        log_lines(&[
            ("2026-11-22T10:00:01.200000000Z", "b"),
            ("2026-11-22T10:00:01.200000000Z", "b2"),
            ("2026-11-22T10:00:01.900000000Z", "d"),
        ])
        .into_bytes(),
    )));
    // Generation 2, a restore: its log starts after the checkpoint.
    let (_, _, _, send) = next(&mut handle).await;
    reply(
        send,
        200,
        &list(vec![
            pod(1, "terminated", None),
            pod(2, "terminated", Some("job-ckpt-1")),
        ]),
    );
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(uri, format!("{pods}/job-2"));
    reply(send, 200, &pod(2, "terminated", Some("job-ckpt-1")));
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        uri,
        format!("{pods}/job-2/log?&container=main&timestamps=true")
    );
    send.send_response(Response::new(Body::from(
        log_lines(&[
            ("2026-11-22T10:00:05.000000000Z", "e"),
            ("2026-11-22T10:00:06.000000000Z", "f"),
        ])
        .into_bytes(),
    )));
    // No generation 3; the job has ended: list once more, then finish.
    for _ in 0..2 {
        let (_, _, _, send) = next(&mut handle).await;
        reply(
            send,
            200,
            &list(vec![
                pod(1, "terminated", None),
                pod(2, "terminated", Some("job-ckpt-1")),
            ]),
        );
        let (_, uri, _, send) = next(&mut handle).await;
        assert_eq!(
            uri,
            "/apis/lodger.dev/v1alpha1/namespaces/ns/migratablejobs/job"
        );
        reply(send, 200, &job("Succeeded", Some(0)));
    }
    let (ended, out) = task.await.expect("task");
    assert_eq!(out, "a\nb\nb2\nd\ne\nf\n");
    assert_eq!(
        ended,
        Ended::Finished {
            phase: JobPhase::Succeeded,
            exit_code: Some(0)
        }
    );
}

/// If this fails, a job restarted from scratch (no checkpoint) would silently repeat output that
/// users would take for new work.
#[tokio::test]
async fn restart_is_marked_before_replayed_output() {
    let fake = Arc::new(Mutex::new(FakeApi {
        job: Some(job("Failed", Some(2))),
        ..FakeApi::default()
    }));
    {
        let mut f = fake.lock().unwrap();
        f.pods.insert("job-1".into(), pod(1, "terminated", None));
        f.pods.insert("job-2".into(), pod(2, "terminated", None));
        f.logs.insert(
            "job-1".into(),
            log_lines(&[
                ("2026-11-22T10:00:00Z", "step 1"),
                ("2026-11-22T10:00:01Z", "step 2"),
            ]),
        );
        f.logs.insert(
            "job-2".into(),
            log_lines(&[
                ("2026-11-22T11:00:00Z", "step 1"),
                ("2026-11-22T11:00:01Z", "boom"),
            ]),
        );
    }
    let (client, server) = support::mock_client(fake.clone());
    let mut out = Vec::new();
    let ended = stitcher(&client, true)
        .run(&mut out)
        .await
        .expect("stitched");
    server.abort();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "step 1\nstep 2\n[lodger] job restarted from the beginning (generation 2, node node-2): the output below repeats earlier output\nstep 1\nboom\n"
    );
    assert_eq!(exit_code_of(&ended), 2);
}

/// If this fails, `kubectl lodger logs JOB` (no -f) would hang on a running job instead of
/// printing what exists and returning.
#[tokio::test]
async fn without_follow_prints_what_exists_and_returns() {
    let fake = Arc::new(Mutex::new(FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    }));
    {
        let mut f = fake.lock().unwrap();
        f.pods.insert("job-1".into(), pod(1, "running", None));
        f.logs.insert(
            "job-1".into(),
            log_lines(&[("2026-11-22T10:00:00Z", "hello")]),
        );
    }
    let (client, server) = support::mock_client(fake.clone());
    let mut out = Vec::new();
    let ended = stitcher(&client, false)
        .run(&mut out)
        .await
        .expect("printed");
    server.abort();
    assert_eq!(String::from_utf8(out).unwrap(), "hello\n");
    assert_eq!(ended, Ended::Caught);
    let requests = fake.lock().unwrap().requests.clone();
    assert!(
        requests.iter().all(|r| !r.contains("follow=true")),
        "{requests:?}"
    );
}

async fn wait_until(fake: &support::Shared, what: &str, cond: impl Fn(&FakeApi) -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond(&fake.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn stub_config() -> StubConfig {
    StubConfig {
        namespace: NS.into(),
        job: JOB.into(),
        sender_id: "job-home-1-1".into(),
        poll: Duration::from_millis(5),
    }
}

/// If this fails, signals sent while the job is Parked or being checkpointed would be dropped,
/// delayed behind the migration, or numbered out of order; and the stub would not end with the
/// job's exit code once the job finishes after the restore.
#[tokio::test]
async fn signals_while_parked_are_queued_in_order_and_exit_code_propagates() {
    let fake = Arc::new(Mutex::new(FakeApi {
        job: Some(job("Parked", None)),
        ..FakeApi::default()
    }));
    let (client, server) = support::mock_client(fake.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stub = tokio::spawn(async move {
        let mut out = Vec::new();
        let ended = run(client, &stub_config(), rx, &mut out).await;
        (ended, out)
    });
    wait_until(&fake, "the stub to look at its job", |f| {
        f.requests.iter().any(|r| r.contains("migratablejobs"))
    })
    .await;
    let sent = [10, 12, 1, 28, 15];
    for signo in sent {
        tx.send(Caught {
            signo,
            sender_pid: 7,
        })
        .unwrap();
    }
    wait_until(&fake, "five JobSignals", |f| f.signals.len() == 5).await;
    {
        let f = fake.lock().unwrap();
        let got: Vec<(i64, i64, String)> = f
            .signals
            .iter()
            .map(|s| {
                (
                    s["spec"]["seq"].as_i64().unwrap(),
                    s["spec"]["signal"].as_i64().unwrap(),
                    s["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(i64, i64, String)> = sent
            .iter()
            .enumerate()
            .map(|(i, s)| (i as i64 + 1, i64::from(*s), format!("job-sig-{}", i + 1)))
            .collect();
        assert_eq!(got, want);
        assert!(
            f.signals
                .iter()
                .all(|s| s.get("status").is_none_or(Value::is_null)),
            "created Pending (no status)"
        );
        assert_eq!(f.signal_posts, 5, "exactly one create per signal");
    }
    // The job is restored and runs to its end with code 7.
    {
        let mut f = fake.lock().unwrap();
        f.pods
            .insert("job-2".into(), pod(2, "terminated", Some("job-ckpt-1")));
        f.logs.insert(
            "job-2".into(),
            log_lines(&[("2026-11-22T10:00:00Z", "got USR1")]),
        );
        f.job = Some(job("Failed", Some(7)));
    }
    let (ended, out) = tokio::time::timeout(Duration::from_secs(5), stub)
        .await
        .expect("stub ended")
        .expect("task");
    server.abort();
    let ended = ended.expect("no error");
    assert_eq!(exit_code_of(&ended), 7);
    assert_eq!(String::from_utf8(out).unwrap(), "got USR1\n");
}

/// If this fails, deleting the MigratableJob would leave its stub running (and the stub pod's
/// owner would never see it end), or end it with a success code.
#[tokio::test]
async fn deleted_job_ends_the_stub_as_cancelled() {
    let fake = Arc::new(Mutex::new(FakeApi {
        job: Some(job("Running", None)),
        ..FakeApi::default()
    }));
    let (client, server) = support::mock_client(fake.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stub = tokio::spawn(async move { run(client, &stub_config(), rx, &mut Vec::new()).await });
    // The user deletes the stub pod: the kubelet sends SIGTERM, which is forwarded first.
    tx.send(Caught {
        signo: 15,
        sender_pid: 0,
    })
    .unwrap();
    wait_until(&fake, "the SIGTERM JobSignal", |f| f.signals.len() == 1).await;
    assert_eq!(fake.lock().unwrap().signals[0]["spec"]["signal"], 15);
    fake.lock().unwrap().job = None;
    let ended = tokio::time::timeout(Duration::from_secs(5), stub)
        .await
        .expect("ended")
        .expect("task")
        .expect("ok");
    server.abort();
    assert_eq!(ended, Ended::Deleted);
    assert_eq!(exit_code_of(&ended), 143);
}

/// If this fails, either a pod the operator deleted right after its container exited (the normal
/// end of a migration) would be reported as lost output, or a pod that vanished while its log
/// could not be read would go unreported.
#[tokio::test]
async fn vanished_pod_is_marked_only_when_output_may_be_missing() {
    for clean in [true, false] {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, NS);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let ended = stitcher(&client, true)
                .run(&mut out)
                .await
                .expect("stitched");
            (ended, String::from_utf8(out).expect("utf-8"))
        });
        let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
        let (_, _, _, send) = next(&mut handle).await;
        reply(send, 200, &list(vec![pod(1, "running", None)]));
        let (_, _, _, send) = next(&mut handle).await;
        reply(send, 200, &pod(1, "running", None));
        let (_, uri, _, send) = next(&mut handle).await;
        assert!(
            uri.contains("/job-1/log?") && uri.contains("follow=true"),
            "{uri}"
        );
        if clean {
            send.send_response(Response::new(Body::from(
                log_lines(&[("2026-11-22T10:00:00Z", "a")]).into_bytes(),
            )));
        } else {
            send.send_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "node unreachable",
            ));
        }
        // The operator removed the source pod.
        let (_, uri, _, send) = next(&mut handle).await;
        assert!(uri.ends_with("/pods/job-1"), "{uri}");
        reply(
            send,
            404,
            &status(404, "NotFound", "pods \"job-1\" not found"),
        );
        let (_, _, _, send) = next(&mut handle).await;
        reply(
            send,
            200,
            &list(vec![pod(2, "terminated", Some("job-ckpt-1"))]),
        );
        let (_, _, _, send) = next(&mut handle).await;
        reply(send, 200, &pod(2, "terminated", Some("job-ckpt-1")));
        let (_, _, _, send) = next(&mut handle).await;
        send.send_response(Response::new(Body::from(
            log_lines(&[("2026-11-22T10:00:09Z", "b")]).into_bytes(),
        )));
        for _ in 0..2 {
            let (_, _, _, send) = next(&mut handle).await;
            reply(
                send,
                200,
                &list(vec![pod(2, "terminated", Some("job-ckpt-1"))]),
            );
            let (_, _, _, send) = next(&mut handle).await;
            reply(send, 200, &job("Succeeded", Some(0)));
        }
        let (_, out) = task.await.expect("task");
        if clean {
            assert_eq!(out, "a\nb\n");
        } else {
            assert_eq!(
                out,
                "[lodger] pod job-1 vanished before its output was fully read: output may be missing here\nb\n"
            );
        }
    }
}

/// If this fails, a signal caught while the API server briefly fails reads (503 on the list that
/// finds the next seq) would be dropped instead of forwarded once the server answers.
#[tokio::test]
async fn transient_read_failures_are_retried_not_dropped() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let task = tokio::spawn(async move { sender(client).send(10).await });
    for _ in 0..2 {
        let (m, uri, _, send) = next(&mut handle).await;
        assert_eq!(m, Method::GET);
        assert!(uri.contains("labelSelector"), "{uri}");
        reply(
            send,
            503,
            &status(503, "ServiceUnavailable", "etcd is away"),
        );
    }
    let (_, _, _, send) = next(&mut handle).await;
    reply(
        send,
        200,
        &json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignalList", "metadata": {}, "items": []}),
    );
    let (m, _, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::POST);
    assert_eq!(body["metadata"]["name"], "job-sig-1");
    reply(send, 201, &body);
    assert_eq!(task.await.expect("task").expect("sent").seq, 1);
}

/// If this fails, a stub whose job sits Parked for hours would poll the API server every second
/// (two requests each) instead of backing off to one round per 8 polls. Virtual time: no waiting.
#[tokio::test(start_paused = true)]
async fn polling_backs_off_while_the_job_is_parked() {
    let fake = Arc::new(Mutex::new(FakeApi {
        job: Some(job("Parked", None)),
        ..FakeApi::default()
    }));
    let (client, server) = support::mock_client(fake.clone());
    let stitcher = Stitcher::new(
        Api::namespaced(client.clone(), NS),
        Api::<Pod>::namespaced(client, NS),
        JOB,
        FollowOptions {
            follow: true,
            poll: Duration::from_secs(1),
        },
    );
    let task = tokio::spawn(async move { stitcher.run(&mut Vec::new()).await });
    // Rounds at t = 0, 1, 3, 7, 15, 23, 31, 39, 47, 55 s: ten in the first minute.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        fake.lock().unwrap().requests.len(),
        20,
        "{:?}",
        fake.lock().unwrap().requests
    );
    // A change (the job is restored and ends) is picked up at the next round.
    fake.lock().unwrap().job = Some(job("Succeeded", Some(0)));
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("ended")
        .expect("task");
    assert_eq!(
        ended.expect("ok"),
        Ended::Finished {
            phase: JobPhase::Succeeded,
            exit_code: Some(0)
        }
    );
    server.abort();
}
