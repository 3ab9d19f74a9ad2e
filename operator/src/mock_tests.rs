//! Reconciler tests against the mocked API server: each scenario scripts exactly the requests
//! the API server must see (method, path, the parts of the body that matter) and what it
//! answers; any request beyond the script fails the reconcile.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use lodger_api::{
    CheckpointReason, FINALIZER_CHECKPOINT, JobPhase, MigratableJob, TAINT_OWNER_ACTIVE,
};
use serde_json::{Value, json};

use crate::config::Settings;
use crate::fixtures::{
    ApiServer, CheckpointBuilder, Expectation, JobBuilder, NodeBuilder, PodBuilder, ts,
};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Error};

const NOW: i64 = 10_000;
const PODS: &str = "/api/v1/namespaces/ns/pods";
const CKS: &str = "/apis/lodger.dev/v1alpha1/namespaces/ns/checkpoints";
const JOBS: &str = "/apis/lodger.dev/v1alpha1/namespaces/ns/migratablejobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn context(
    client: Client,
    nodes: &[NodeBuilder],
    jobs: &[MigratableJob],
    mount: PathBuf,
) -> Arc<Context> {
    let mut node_writer = Writer::<Node>::default();
    for n in nodes {
        node_writer.apply_watcher_event(&watcher::Event::Apply(n.build()));
    }
    let pod_writer = Writer::<Pod>::default();
    let mut job_writer = Writer::<DeserializeGuard<MigratableJob>>::default();
    for j in jobs {
        job_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(j.clone()))));
    }
    let mut ctx = Context::new(
        client,
        Settings::for_tests(mount),
        Arc::new(Metrics::default()),
        node_writer.as_reader(),
        pod_writer.as_reader(),
        job_writer.as_reader(),
    );
    ctx.clock = Arc::new(|| ts(NOW));
    Arc::new(ctx)
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The two reads every reconcile of a single job starts with.
fn fetch(pods: Vec<Value>, cks: Vec<Value>) -> Vec<Expectation> {
    vec![
        ApiServer::expect("GET", PODS, move |_| (200, list("PodList", pods))),
        ApiServer::expect("GET", CKS, move |_| (200, list("CheckpointList", cks))),
    ]
}

fn ck_json(c: CheckpointBuilder) -> Value {
    serde_json::to_value(c.build()).unwrap()
}

/// Expect the status write; `check` sees the written status; the reply is the job with it.
fn status_write(
    job: &MigratableJob,
    seen: Arc<Mutex<Option<Value>>>,
    check: impl FnOnce(&Value) + Send + 'static,
) -> Expectation {
    let mut reply = serde_json::to_value(job).unwrap();
    let name = job.metadata.name.clone().unwrap();
    ApiServer::expect("PATCH", &format!("{JOBS}/{name}/status"), move |body| {
        // Server-side apply needs the type in the body.
        assert_eq!(body["apiVersion"], "lodger.dev/v1alpha1");
        assert_eq!(body["kind"], "MigratableJob");
        check(&body["status"]);
        reply["status"] = body["status"].clone();
        *seen.lock().unwrap() = Some(body["status"].clone());
        (200, reply)
    })
}

fn event(reason: &'static str) -> Expectation {
    ApiServer::expect("POST", EVENTS, move |body| {
        assert_eq!(body["reason"], reason, "event {body}");
        (201, body)
    })
}

fn echo(method: &str, path: &str, check: impl FnOnce(&Value) + Send + 'static) -> Expectation {
    ApiServer::expect(method, path, move |body| {
        check(&body);
        (200, body)
    })
}

fn delete(path: &str) -> Expectation {
    ApiServer::expect("DELETE", path, |_| (200, ApiServer::deleted()))
}

async fn reconcile_job(ctx: &Arc<Context>, job: &MigratableJob) -> Result<Action, Error> {
    let r = reconcile::reconcile(Arc::new(DeserializeGuard(Ok(job.clone()))), ctx.clone()).await;
    // Whatever happened, the error policy must not panic and must pick a sensible retry.
    if let Err(e) = &r {
        let _ =
            reconcile::error_policy(Arc::new(DeserializeGuard(Ok(job.clone()))), e, ctx.clone());
    }
    r
}

fn tmp() -> PathBuf {
    PathBuf::from("/nonexistent-lodger-test-mount")
}

/// Place: the stub's ServiceAccount, RoleBinding and pod, then the workload pod bound to the
/// longest-idle node, then status Running and a Placed Event. If this breaks, jobs never start
/// or start without their home stub.
#[tokio::test]
async fn place() {
    let (client, server) = ApiServer::new();
    let job = JobBuilder::new("j").build();
    let nodes = [
        NodeBuilder::new("n1").idle_since(500),
        NodeBuilder::new("n2").idle_since(100),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let seen = Arc::new(Mutex::new(None));
    let mut script = fetch(vec![], vec![]);
    script.extend([
        echo(
            "PATCH",
            "/api/v1/namespaces/ns/serviceaccounts/lodger-stub",
            |_| {},
        ),
        echo(
            "PATCH",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/lodger-stub",
            |b| {
                assert_eq!(b["roleRef"]["name"], "lodger-stub");
                assert_eq!(b["roleRef"]["kind"], "ClusterRole");
            },
        ),
        echo("PATCH", &format!("{PODS}/j-home"), |b| {
            assert_eq!(b["metadata"]["labels"]["lodger.dev/role"], "stub");
            assert!(
                b["spec"]["affinity"]["nodeAffinity"].is_object(),
                "no home node: kept off workstations"
            );
        }),
        echo("PATCH", &format!("{PODS}/j-1"), |b| {
            assert_eq!(b["spec"]["nodeName"], "n2", "longest idle");
            assert_eq!(b["metadata"]["ownerReferences"][0]["name"], "j");
        }),
        status_write(&job, seen.clone(), |s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["node"], "n2");
            assert_eq!(s["pod"], "j-1");
            assert_eq!(s["stubPod"], "j-home");
            assert_eq!(s["observedGeneration"], 1);
        }),
        event("Placed"),
    ]);
    let verifier = server.run(script);
    assert_eq!(
        reconcile_job(&ctx, &job).await.unwrap(),
        Action::await_change()
    );
    verifier.done().await;
}

fn running_job() -> JobBuilder {
    JobBuilder::new("j").running_on("a")
}

fn running_pods() -> Vec<Value> {
    vec![
        PodBuilder::workload("j", 1, "a").ready_at(100).json(),
        PodBuilder::stub("j").json(),
    ]
}

async fn evict_on(node: NodeBuilder, want: CheckpointReason) {
    let (client, server) = ApiServer::new();
    let job = running_job().build();
    let ctx = context(client, &[node], std::slice::from_ref(&job), tmp());
    let seen = Arc::new(Mutex::new(None));
    let mut script = fetch(running_pods(), vec![]);
    script.extend([
        echo("PATCH", &format!("{CKS}/j-ckpt-1"), move |b| {
            assert_eq!(b["spec"]["reason"], want.as_str());
            assert_eq!(b["spec"]["pod"], "j-1");
            assert_eq!(b["spec"]["node"], "a");
            assert_eq!(b["spec"]["seq"], 1);
            assert_eq!(b["spec"]["leaveRunning"], false);
            assert_eq!(b["metadata"]["finalizers"][0], FINALIZER_CHECKPOINT);
            assert_eq!(b["metadata"]["labels"]["lodger.dev/job"], "j");
        }),
        status_write(&job, seen, move |s| {
            assert_eq!(s["phase"], "Checkpointing");
            assert_eq!(s["pendingCheckpoint"], "j-ckpt-1");
            assert_eq!(s["evictionReason"], want.as_str());
        }),
        event("Evicting"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// Evict on taint: the owner-active taint on the job's node creates Checkpoint 1 with reason
/// OwnerReturned. If this breaks, a returning owner finds a stranger's job on their desktop.
#[tokio::test]
async fn evict_on_owner_taint() {
    evict_on(
        NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
        CheckpointReason::OwnerReturned,
    )
    .await;
}

/// Evict on cordon (kubectl drain sets spec.unschedulable): reason Drain. If this breaks,
/// drains wait for the taint manager to kill the job instead of migrating it.
#[tokio::test]
async fn evict_on_cordon() {
    evict_on(NodeBuilder::new("a").cordoned(), CheckpointReason::Drain).await;
}

fn checkpointing_job() -> JobBuilder {
    running_job().status(|s| {
        s.phase = Some(JobPhase::Checkpointing);
        s.pending_checkpoint = Some("j-ckpt-1".into());
        s.eviction_reason = Some(CheckpointReason::OwnerReturned);
        s.source_node = Some("a".into());
    })
}

/// Restore on target: a Completed checkpoint makes pod j-2 on the idle node, restoring from
/// it; the source pod stays. If this breaks, the job never resumes after its dump.
#[tokio::test]
async fn restore_on_target() {
    let (client, server) = ApiServer::new();
    let job = checkpointing_job().build();
    let nodes = [
        NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
        NodeBuilder::new("b").idle_since(0),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let mut script = fetch(
        running_pods(),
        vec![ck_json(
            CheckpointBuilder::new("j", 1)
                .completed(1000, 9_990)
                .path("ns/j/1"),
        )],
    );
    script.extend([
        echo("PATCH", &format!("{PODS}/j-2"), |b| {
            assert_eq!(b["spec"]["nodeName"], "b");
            assert_eq!(
                b["metadata"]["annotations"]["lodger.dev/restore-from"],
                "j-ckpt-1"
            );
            assert_eq!(
                b["metadata"]["annotations"]["lodger.dev/restore-path"],
                "ns/j/1"
            );
            let cmd: Vec<String> =
                serde_json::from_value(b["spec"]["containers"][0]["command"].clone()).unwrap();
            let i = cmd
                .iter()
                .position(|a| a == "--restore")
                .expect("--restore");
            assert_eq!(cmd[i + 1], "ns/j/1");
        }),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Restoring");
            assert_eq!(s["node"], "b");
            assert_eq!(s["pod"], "j-2");
            assert_eq!(s["lastCheckpoint"], "j-ckpt-1");
        }),
        event("Checkpointed"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// The restored pod is Ready: only now is the source pod deleted, the migration counted and
/// recorded with its downtime. If this breaks, sources linger on vacated desktops, or are
/// deleted before their successor runs.
#[tokio::test]
async fn migration_completes_when_target_ready() {
    let (client, server) = ApiServer::new();
    let job = running_job()
        .status(|s| {
            s.phase = Some(JobPhase::Restoring);
            s.node = Some("b".into());
            s.pod = Some("j-2".into());
            s.pod_generation = 2;
            s.pending_checkpoint = Some("j-ckpt-1".into());
            s.eviction_reason = Some(CheckpointReason::OwnerReturned);
            s.source_node = Some("a".into());
        })
        .build();
    let ctx = context(
        client,
        &[NodeBuilder::new("b")],
        std::slice::from_ref(&job),
        tmp(),
    );
    let mut pods = running_pods();
    pods.push(
        PodBuilder::workload("j", 2, "b")
            .restore_from("j-ckpt-1")
            .ready_at(9_995)
            .json(),
    );
    let mut script = fetch(
        pods,
        vec![ck_json(
            CheckpointBuilder::new("j", 1).completed(1000, 9_990),
        )],
    );
    script.extend([
        delete(&format!("{PODS}/j-1")),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["migrations"], 1);
            assert_eq!(s["history"][0]["from"], "a");
            assert_eq!(s["history"][0]["to"], "b");
            assert_eq!(s["history"][0]["downtimeMillis"], 5000);
            assert_eq!(s["history"][0]["freezeMillis"], 120);
            assert!(s.get("pendingCheckpoint").is_none());
        }),
        event("Migrated"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
    let text = ctx.metrics.encode();
    assert!(
        text.contains(
            "lodger_operator_migrations_total{reason=\"OwnerReturned\",strategy=\"StopAndCopy\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("lodger_operator_migration_downtime_seconds_count 1"),
        "{text}"
    );
}

/// Go home: no idle node, the home node is Ready: the job is restored there. If this breaks,
/// evicted jobs with a home are parked although their owner's machine could take them.
#[tokio::test]
async fn go_home() {
    let (client, server) = ApiServer::new();
    let job = checkpointing_job().home("h").build();
    let nodes = [
        NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
        NodeBuilder::new("h").not_workstation(),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let mut script = fetch(
        running_pods(),
        vec![ck_json(
            CheckpointBuilder::new("j", 1).completed(1000, 9_990),
        )],
    );
    script.extend([
        echo("PATCH", &format!("{PODS}/j-2"), |b| {
            assert_eq!(b["spec"]["nodeName"], "h")
        }),
        status_write(&job, Arc::default(), |s| assert_eq!(s["node"], "h")),
        event("Checkpointed"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// Park: no idle node and no home: the source pod goes, the job is Parked on the volume and
/// polls for an idle node. If this breaks, a parked job keeps a pod (and a desktop) busy.
#[tokio::test]
async fn park() {
    let (client, server) = ApiServer::new();
    let job = checkpointing_job().build();
    let nodes = [NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule")];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let mut script = fetch(
        running_pods(),
        vec![ck_json(
            CheckpointBuilder::new("j", 1).completed(1000, 9_990),
        )],
    );
    script.extend([
        delete(&format!("{PODS}/j-1")),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Parked");
            assert!(s.get("node").is_none() && s.get("pod").is_none());
            assert_eq!(s["lastCheckpoint"], "j-ckpt-1");
        }),
        event("Parked"),
    ]);
    let verifier = server.run(script);
    let action = reconcile_job(&ctx, &job).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    verifier.done().await;
}

/// Unpark: a node became idle: the parked job is restored there from its last checkpoint.
/// If this breaks, parked jobs never come back.
#[tokio::test]
async fn unpark() {
    let (client, server) = ApiServer::new();
    let job = JobBuilder::new("j")
        .status(|s| {
            s.phase = Some(JobPhase::Parked);
            s.pod_generation = 1;
            s.stub_pod = Some("j-home".into());
            s.last_checkpoint = Some("j-ckpt-1".into());
            s.source_node = Some("a".into());
        })
        .build();
    let ctx = context(
        client,
        &[NodeBuilder::new("c").idle_since(0)],
        std::slice::from_ref(&job),
        tmp(),
    );
    let mut script = fetch(
        vec![PodBuilder::stub("j").json()],
        vec![ck_json(
            CheckpointBuilder::new("j", 1).completed(1000, 9_990),
        )],
    );
    script.extend([
        echo("PATCH", &format!("{PODS}/j-2"), |b| {
            assert_eq!(b["spec"]["nodeName"], "c");
            assert_eq!(
                b["metadata"]["annotations"]["lodger.dev/restore-from"],
                "j-ckpt-1"
            );
        }),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Restoring");
            let parked = s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Parked")
                .unwrap();
            assert_eq!(parked["status"], "False");
        }),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// A failed checkpoint leaves the job Running where it was: no pod is created or deleted, a
/// Warning says so, and the retry backs off. If this breaks, a failed dump kills the job.
#[tokio::test]
async fn checkpoint_failure_leaves_job_running() {
    let (client, server) = ApiServer::new();
    let job = checkpointing_job().build();
    let nodes = [
        NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
        NodeBuilder::new("b").idle_since(0),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let mut script = fetch(
        running_pods(),
        vec![ck_json(
            CheckpointBuilder::new("j", 1).failed("criu dump: EPERM", NOW),
        )],
    );
    script.extend([
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["node"], "a");
            assert_eq!(s["pod"], "j-1");
            let c = s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Migrating")
                .unwrap();
            assert_eq!(c["reason"], "CheckpointFailed");
            assert!(c["message"].as_str().unwrap().contains("EPERM"));
        }),
        ApiServer::expect("POST", EVENTS, |b| {
            assert_eq!(b["reason"], "CheckpointFailed");
            assert_eq!(b["type"], "Warning");
            (201, b)
        }),
    ]);
    let verifier = server.run(script);
    assert_eq!(
        reconcile_job(&ctx, &job).await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    verifier.done().await;
}

/// Restore failure: the pod restoring checkpoint 2 failed before Ready: pod j-3 restores
/// checkpoint 1. If this breaks, a bad image loses the job.
#[tokio::test]
async fn restore_failure_falls_back() {
    let (client, server) = ApiServer::new();
    let job = running_job()
        .status(|s| {
            s.phase = Some(JobPhase::Restoring);
            s.node = Some("b".into());
            s.pod = Some("j-2".into());
            s.pod_generation = 2;
            s.pending_checkpoint = Some("j-ckpt-2".into());
            s.eviction_reason = Some(CheckpointReason::OwnerReturned);
            s.source_node = Some("a".into());
        })
        .build();
    // The plan is asked for a node other than the failed target.
    let nodes = [
        NodeBuilder::new("b").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
        NodeBuilder::new("c").idle_since(0),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let pods = vec![
        PodBuilder::workload("j", 1, "a").failed(137).json(),
        PodBuilder::workload("j", 2, "b")
            .restore_from("j-ckpt-2")
            .failed(1)
            .json(),
        PodBuilder::stub("j").json(),
    ];
    let cks = vec![
        ck_json(
            CheckpointBuilder::new("j", 1)
                .reason(CheckpointReason::Periodic)
                .completed(10, 5_000),
        ),
        ck_json(CheckpointBuilder::new("j", 2).completed(10, 9_990)),
    ];
    let mut script = fetch(pods, cks);
    script.extend([
        echo("PATCH", &format!("{PODS}/j-3"), |b| {
            assert_eq!(
                b["metadata"]["annotations"]["lodger.dev/restore-from"],
                "j-ckpt-1"
            );
            assert_eq!(b["spec"]["nodeName"], "c");
        }),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["pendingCheckpoint"], "j-ckpt-1");
            assert_eq!(s["pod"], "j-3");
        }),
        event("RestoreFailed"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// Completion: the workload container exited 3: phase Failed, exitCode 3, an Event. If this
/// breaks, `kubectl get mj` never shows the job ended, or shows the wrong code.
#[tokio::test]
async fn completion_with_exit_code() {
    let (client, server) = ApiServer::new();
    let job = running_job().build();
    let ctx = context(
        client,
        &[NodeBuilder::new("a")],
        std::slice::from_ref(&job),
        tmp(),
    );
    let mut script = fetch(
        vec![
            PodBuilder::workload("j", 1, "a").failed(3).json(),
            PodBuilder::stub("j").json(),
        ],
        vec![],
    );
    script.extend([
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Failed");
            assert_eq!(s["exitCode"], 3);
        }),
        event("Failed"),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}

/// Reconciling twice: the second reconcile of the state the first wrote makes no write at
/// all (only the two reads). If this breaks, every watch event causes an API write.
#[tokio::test]
async fn reconcile_twice_no_second_write() {
    let (client, server) = ApiServer::new();
    let job = running_job().build();
    let ctx = context(
        client,
        &[NodeBuilder::new("a").idle_since(0)],
        std::slice::from_ref(&job),
        tmp(),
    );
    let seen = Arc::new(Mutex::new(None));
    let mut script = fetch(running_pods(), vec![]);
    script.push(status_write(&job, seen.clone(), |s| {
        assert_eq!(s["phase"], "Running")
    }));
    script.extend(fetch(running_pods(), vec![]));
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    let mut again = job.clone();
    again.status = Some(serde_json::from_value(seen.lock().unwrap().clone().unwrap()).unwrap());
    reconcile_job(&ctx, &again).await.unwrap();
    verifier.done().await;
}

/// Bad input that slipped past admission (two containers): a Warning Event and Valid=False,
/// an error the policy answers with await_change (no crash, no hot loop), and no second
/// report for the same object. If this breaks, one bad object crash-loops the operator or
/// floods Events.
#[tokio::test]
async fn invalid_job_gets_event_and_condition() {
    let (client, server) = ApiServer::new();
    let job = JobBuilder::new("bad").two_containers().build();
    let ctx = context(client, &[], std::slice::from_ref(&job), tmp());
    let seen = Arc::new(Mutex::new(None));
    let verifier = server.run(vec![
        ApiServer::expect("POST", EVENTS, |b| {
            assert_eq!(
                (b["reason"].as_str(), b["type"].as_str()),
                (Some("InvalidSpec"), Some("Warning"))
            );
            assert!(
                b["note"]
                    .as_str()
                    .unwrap()
                    .contains("exactly one container")
            );
            (201, b)
        }),
        status_write(&job, seen.clone(), |s| {
            let c = &s["conditions"][0];
            assert_eq!(
                (c["type"].as_str(), c["status"].as_str()),
                (Some("Valid"), Some("False"))
            );
        }),
    ]);
    let err = reconcile_job(&ctx, &job).await.unwrap_err();
    assert_eq!(err.category(), "invalid");
    let guard = Arc::new(DeserializeGuard(Ok(job.clone())));
    assert_eq!(
        reconcile::error_policy(guard, &err, ctx.clone()),
        Action::await_change()
    );
    let mut again = job.clone();
    again.status = Some(serde_json::from_value(seen.lock().unwrap().clone().unwrap()).unwrap());
    assert!(matches!(
        reconcile_job(&ctx, &again).await,
        Err(Error::Invalid(_))
    ));
    verifier.done().await;
}

/// An object that does not even deserialize (spec.template is a string) reaches the
/// reconciler through DeserializeGuard and gets a Warning Event and Valid=False. If this
/// breaks, one malformed object wedges the whole watch.
#[tokio::test]
async fn malformed_object_is_reported_not_fatal() {
    let (client, server) = ApiServer::new();
    let ctx = context(client, &[], &[], tmp());
    let raw = json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
        "metadata": {"name": "junk", "namespace": "ns", "uid": "u1", "generation": 2},
        "spec": {"template": "not a pod"}});
    let guard: DeserializeGuard<MigratableJob> = serde_json::from_value(raw.clone()).unwrap();
    assert!(guard.0.is_err());
    let verifier = server.run(vec![
        ApiServer::expect("POST", EVENTS, |b| {
            assert_eq!(b["reason"], "InvalidSpec");
            assert_eq!(b["regarding"]["name"], "junk");
            (201, b)
        }),
        ApiServer::expect("PATCH", &format!("{JOBS}/junk/status"), move |b| {
            assert_eq!(b["status"]["conditions"][0]["type"], "Valid");
            assert_eq!(b["status"]["conditions"][0]["status"], "False");
            (200, raw)
        }),
    ]);
    let action = reconcile::reconcile(Arc::new(guard), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    verifier.done().await;
}

/// Delete with finalizer: a deleted Checkpoint's directory is removed from the volume (real
/// files in a temp dir) and then the finalizer; while a pod still restores from it, neither
/// happens. If this breaks, the volume fills with orphaned images or a restore loses its
/// image mid-way.
#[tokio::test]
async fn checkpoint_finalizer_removes_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ns/j/1");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("pages-1.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(image.join("manifest.json"), b"{}").unwrap();
    let ck = CheckpointBuilder::new("j", 1)
        .completed(4096, 1)
        .path("ns/j/1")
        .deleting(&[FINALIZER_CHECKPOINT])
        .build();

    // In use: a pod restores from it.
    let (client, server) = ApiServer::new();
    let ctx = context(client, &[], &[], dir.path().to_path_buf());
    let user = PodBuilder::workload("j", 2, "b")
        .restore_from("j-ckpt-1")
        .running()
        .json();
    let verifier = server.run(vec![ApiServer::expect("GET", PODS, move |_| {
        (200, list("PodList", vec![user]))
    })]);
    let err = crate::checkpoints::reconcile(Arc::new(ck.clone()), ctx)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "checkpoint_in_use");
    verifier.done().await;
    assert!(image.join("pages-1.img").exists());

    // Free: files go, then the finalizer.
    let (client, server) = ApiServer::new();
    let ctx = context(client, &[], &[], dir.path().to_path_buf());
    let mut reply = serde_json::to_value(&ck).unwrap();
    reply["metadata"]["finalizers"] = json!([]);
    let verifier = server.run(vec![
        ApiServer::expect("GET", PODS, |_| (200, list("PodList", vec![]))),
        ApiServer::expect("PATCH", &format!("{CKS}/j-ckpt-1"), move |b| {
            let ops = b.as_array().expect("JSON patch");
            assert!(
                ops.iter()
                    .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
                "{b}"
            );
            (200, reply)
        }),
    ]);
    crate::checkpoints::reconcile(Arc::new(ck), ctx)
        .await
        .unwrap();
    verifier.done().await;
    assert!(!image.exists(), "checkpoint directory removed");
    assert!(
        dir.path().join("ns/j").exists(),
        "only that checkpoint's directory"
    );
}

/// A new Checkpoint without the finalizer gets it added (JSON patch) before anything else.
/// If this breaks, a Checkpoint created by hand loses its files' cleanup.
#[tokio::test]
async fn checkpoint_finalizer_is_added() {
    let (client, server) = ApiServer::new();
    let ctx = context(client, &[], &[], tmp());
    let ck = CheckpointBuilder::new("j", 1).build();
    let reply = serde_json::to_value(&ck).unwrap();
    let verifier = server.run(vec![ApiServer::expect(
        "PATCH",
        &format!("{CKS}/j-ckpt-1"),
        move |b| {
            assert!(b.to_string().contains(FINALIZER_CHECKPOINT), "{b}");
            (200, reply)
        },
    )]);
    crate::checkpoints::reconcile(Arc::new(ck), ctx)
        .await
        .unwrap();
    verifier.done().await;
}

/// A parallel job creates its instances `<job>-0..N-1` and sums up their phases. If this
/// breaks, `parallelism: N` runs nothing.
#[tokio::test]
async fn parallel_job_creates_instances() {
    let (client, server) = ApiServer::new();
    let parent = JobBuilder::new("p").parallel(2).build();
    let running_child = JobBuilder::new("p-0").parent("p").running_on("a").build();
    let ctx = context(client, &[], &[parent.clone(), running_child], tmp());
    let verifier = server.run(vec![
        echo("PATCH", &format!("{JOBS}/p-1"), |b| {
            assert_eq!(b["metadata"]["labels"]["lodger.dev/parent"], "p");
            assert!(b["spec"].get("parallelism").is_none());
        }),
        status_write(&parent, Arc::default(), |s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["instances"][0]["name"], "p-0");
            assert_eq!(s["instances"][0]["node"], "a");
        }),
    ]);
    reconcile_job(&ctx, &parent).await.unwrap();
    verifier.done().await;
}

/// A failing API call surfaces as an error with a stable category, a 5 s retry and a Warning
/// Event carrying the error chain. If this breaks, failures are invisible to `kubectl describe`
/// or retried in a hot loop.
#[tokio::test]
async fn api_failure_is_reported_and_retried() {
    let (client, server) = ApiServer::new();
    let job = running_job().build();
    let ctx = context(
        client,
        &[NodeBuilder::new("a")],
        std::slice::from_ref(&job),
        tmp(),
    );
    let verifier = server.run(vec![
        ApiServer::expect("GET", PODS, |_| {
            (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": "etcd is sad", "reason": "InternalError", "code": 500}),
            )
        }),
        ApiServer::expect("POST", EVENTS, |b| {
            assert_eq!(
                (b["reason"].as_str(), b["type"].as_str()),
                (Some("ReconcileError"), Some("Warning"))
            );
            let note = b["note"].as_str().unwrap();
            assert!(
                note.starts_with("list: failed to list pods of job j"),
                "{note}"
            );
            assert!(note.contains("etcd is sad"), "{note}");
            (201, b)
        }),
    ]);
    let guard = Arc::new(DeserializeGuard(Ok(job.clone())));
    let err = reconcile::reconcile(guard.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.category(), "list");
    assert_eq!(
        reconcile::error_policy(guard, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    verifier.done().await;
    assert!(
        ctx.metrics
            .encode()
            .contains("lodger_operator_reconcile_failures_total{category=\"list\"} 1")
    );
}

/// The controller wiring of `run()` against the mocked API server: the MigratableJob watch
/// lists one good job and one that does not deserialize; both get reconciled (the good one
/// reads its pods and writes status, the bad one gets Valid=False), the other watches start,
/// and the controllers stop on shutdown. If this breaks, one malformed object wedges the watch
/// for every job, or the operator cannot shut down gracefully.
#[tokio::test]
async fn controllers_survive_a_malformed_object_and_shut_down() {
    let (client, server) = ApiServer::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let good = serde_json::to_value(running_job().build()).unwrap();
    let junk = json!({"apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
        "metadata": {"name": "junk", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"template": 42}});
    let (good_reply, junk_reply) = (good.clone(), junk.clone());
    let listed = [good, junk];
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let unexpected_in = unexpected.clone();
    let server_task = server.serve(move |method, path, query, body| {
        let _ = seen_tx.send(format!("{method} {path}"));
        let items = match (method, path) {
            ("GET", "/apis/lodger.dev/v1alpha1/migratablejobs")
                if query.contains("labelSelector") =>
            {
                vec![]
            }
            ("GET", "/apis/lodger.dev/v1alpha1/migratablejobs") => listed.to_vec(),
            ("GET", "/api/v1/pods")
            | ("GET", "/apis/lodger.dev/v1alpha1/checkpoints")
            | ("GET", CKS) => vec![],
            ("GET", "/api/v1/nodes") => {
                vec![serde_json::to_value(NodeBuilder::new("a").build()).unwrap()]
            }
            ("GET", PODS) => running_pods(),
            ("PATCH", p) if p == format!("{JOBS}/j/status") => {
                let mut reply = good_reply.clone();
                reply["status"] = body["status"].clone();
                return Some((200, reply));
            }
            ("PATCH", p) if p == format!("{JOBS}/junk/status") => {
                assert_eq!(body["status"]["conditions"][0]["status"], "False");
                return Some((200, junk_reply.clone()));
            }
            ("POST", EVENTS) => return Some((201, body)),
            _ => {
                unexpected_in
                    .lock()
                    .unwrap()
                    .push(format!("{method} {path}?{query}"));
                return None;
            }
        };
        Some((200, list("List", items)))
    });

    let mut node_writer = Writer::<Node>::default();
    node_writer.apply_watcher_event(&watcher::Event::Apply(NodeBuilder::new("a").build()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (jobs, cks, _ctx) = crate::controllers(
        client,
        Settings::for_tests(tmp()),
        Arc::new(Metrics::default()),
        node_writer.as_reader(),
        Writer::<Pod>::default().as_reader(),
        shutdown.clone(),
    );
    let running = tokio::spawn(async move {
        futures::join!(jobs, cks);
    });
    let want = [
        format!("PATCH {JOBS}/j/status"),
        format!("PATCH {JOBS}/junk/status"),
        "GET /api/v1/nodes".to_string(),
    ];
    let mut missing: Vec<String> = want.to_vec();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !missing.is_empty() {
            let seen = seen_rx.recv().await.expect("server running");
            missing.retain(|m| *m != seen);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw {missing:?}"));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("controllers stop on shutdown")
        .unwrap();
    server_task.abort();
    assert!(
        unexpected.lock().unwrap().is_empty(),
        "{:?}",
        unexpected.lock().unwrap()
    );
}

/// A new job first gets the `migratablejobs.lodger.dev` finalizer (JSON patch) and nothing
/// else; the next reconcile (the watch event of that patch) does the work. If this breaks, a
/// deleted job leaves its checkpoint directory behind.
#[tokio::test]
async fn job_finalizer_is_added_first() {
    let (client, server) = ApiServer::new();
    let mut job = JobBuilder::new("j").build();
    job.metadata.finalizers = None;
    let ctx = context(
        client,
        &[NodeBuilder::new("n1").idle_since(0)],
        std::slice::from_ref(&job),
        tmp(),
    );
    let reply = serde_json::to_value(&job).unwrap();
    let verifier = server.run(vec![ApiServer::expect(
        "PATCH",
        &format!("{JOBS}/j"),
        move |b| {
            let ops = b.as_array().expect("JSON patch");
            assert!(
                ops.iter()
                    .any(|op| op["op"] == "add" && op["value"][0] == "migratablejobs.lodger.dev"),
                "{b}"
            );
            (200, reply)
        },
    )]);
    assert_eq!(
        reconcile_job(&ctx, &job).await.unwrap(),
        Action::await_change()
    );
    verifier.done().await;
}

/// Deleting a job removes its whole directory on the volume (real files in a temp dir), then
/// its finalizer; nothing else is written (pods and Checkpoints go by owner reference). If this
/// breaks, deleted jobs leave process memory images on the shared volume.
#[tokio::test]
async fn job_deletion_removes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    for seq in ["1", "2"] {
        let image = dir.path().join("ns/j").join(seq);
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("pages-1.img"), vec![1u8; 1024]).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("ns/other/1")).unwrap();
    let (client, server) = ApiServer::new();
    let mut job = running_job().build();
    job.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        ts(NOW),
    ));
    let ctx = context(
        client,
        &[NodeBuilder::new("a")],
        std::slice::from_ref(&job),
        dir.path().to_path_buf(),
    );
    let mut reply = serde_json::to_value(&job).unwrap();
    reply["metadata"]["finalizers"] = json!([]);
    let verifier = server.run(vec![ApiServer::expect(
        "PATCH",
        &format!("{JOBS}/j"),
        move |b| {
            let ops = b.as_array().expect("JSON patch");
            assert!(
                ops.iter()
                    .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
                "{b}"
            );
            (200, reply)
        },
    )]);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
    assert!(!dir.path().join("ns/j").exists());
    assert!(
        dir.path().join("ns/other/1").exists(),
        "other jobs' images stay"
    );
}

/// A node NotReady past the grace period: the job is restored on an idle node from its last
/// periodic checkpoint, with a Warning Event saying so; the lost pod stays until the new one is
/// Ready. If this breaks, a crashed desktop loses its lodger's work.
#[tokio::test]
async fn node_lost_restores_from_periodic_checkpoint() {
    let (client, server) = ApiServer::new();
    let job = running_job().interval(600).build();
    let nodes = [
        NodeBuilder::new("a").not_ready_since(NOW - 120),
        NodeBuilder::new("b").idle_since(0),
    ];
    let ctx = context(client, &nodes, std::slice::from_ref(&job), tmp());
    let periodic = CheckpointBuilder::new("j", 4)
        .reason(CheckpointReason::Periodic)
        .created(9_500)
        .completed(10, 9_500);
    let mut script = fetch(running_pods(), vec![ck_json(periodic)]);
    script.extend([
        echo("PATCH", &format!("{PODS}/j-2"), |b| {
            assert_eq!(b["spec"]["nodeName"], "b");
            assert_eq!(
                b["metadata"]["annotations"]["lodger.dev/restore-from"],
                "j-ckpt-4"
            );
        }),
        status_write(&job, Arc::default(), |s| {
            assert_eq!(s["phase"], "Restoring");
            assert_eq!(s["evictionReason"], "NodeLost");
            assert_eq!(s["sourceNode"], "a");
        }),
        ApiServer::expect("POST", EVENTS, |b| {
            assert_eq!(
                (b["reason"].as_str(), b["type"].as_str()),
                (Some("RestoredFromCheckpoint"), Some("Warning"))
            );
            (201, b)
        }),
    ]);
    let verifier = server.run(script);
    reconcile_job(&ctx, &job).await.unwrap();
    verifier.done().await;
}
