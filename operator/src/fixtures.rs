//! Test fixtures: builders for jobs, nodes, pods and Checkpoints, and a mocked API server
//! (`tower_test::mock::pair` -> `kube::Client`) whose scripted handlers assert each request's
//! method, path and body and answer as the API server would.

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use http::{Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::client::Body;
use lodger_api::{
    ANNOTATION_IDLE_SINCE, ANNOTATION_RESTORE_FROM, Checkpoint, CheckpointPhase, CheckpointReason,
    CheckpointSpec, CheckpointStatus, JobPhase, LABEL_GENERATION, LABEL_IDLE, LABEL_JOB,
    LABEL_PARENT, LABEL_ROLE, LABEL_USER, LABEL_WORKSTATION, MigratableJob, MigratableJobStatus,
    ROLE_STUB, ROLE_WORKLOAD,
};
use serde_json::{Value, json};

/// Seconds since the epoch as a timestamp.
pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("test timestamps are in range")
}

fn rfc(secs: i64) -> String {
    ts(secs).to_string()
}

/// Builds MigratableJobs in namespace `ns`.
#[derive(Debug, Clone)]
pub struct JobBuilder(Value);

impl JobBuilder {
    pub fn new(name: &str) -> Self {
        Self(json!({
            "apiVersion": "lodger.dev/v1alpha1",
            "kind": "MigratableJob",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1,
                         "creationTimestamp": rfc(0), "finalizers": [lodger_api::FINALIZER_JOB]},
            "spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "busybox", "command": ["/bin/sh", "-c", "work"]}
            ]}}}
        }))
    }
    fn container(&mut self) -> &mut Value {
        &mut self.0["spec"]["template"]["spec"]["containers"][0]
    }
    pub fn min_idle(mut self, s: i32) -> Self {
        self.0["spec"]["placement"]["minIdleSeconds"] = json!(s);
        self
    }
    pub fn requests(mut self, cpu: &str, mem: &str) -> Self {
        self.container()["resources"] = json!({"requests": {"cpu": cpu, "memory": mem}});
        self
    }
    pub fn selector(mut self, k: &str, v: &str) -> Self {
        self.0["spec"]["placement"]["nodeSelector"][k] = json!(v);
        self
    }
    pub fn template_selector(mut self, k: &str, v: &str) -> Self {
        self.0["spec"]["template"]["spec"]["nodeSelector"][k] = json!(v);
        self
    }
    fn affinity(mut self, k: &str, op: &str, vals: &[&str]) -> Self {
        self.0["spec"]["placement"]["nodeAffinity"] = json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": k, "operator": op, "values": vals}]}
            ]}
        });
        self
    }
    pub fn affinity_in(self, k: &str, vals: &[&str]) -> Self {
        self.affinity(k, "In", vals)
    }
    pub fn affinity_not_in(self, k: &str, vals: &[&str]) -> Self {
        self.affinity(k, "NotIn", vals)
    }
    pub fn tolerate(mut self, key: &str) -> Self {
        self.0["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": key, "operator": "Exists"}]);
        self
    }
    pub fn created(mut self, secs: i64) -> Self {
        self.0["metadata"]["creationTimestamp"] = json!(rfc(secs));
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["labels"][k] = json!(v);
        self
    }
    pub fn user(self, u: &str) -> Self {
        self.label(LABEL_USER, u)
    }
    pub fn parent(self, p: &str) -> Self {
        self.label(LABEL_PARENT, p)
    }
    pub fn annotate(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["annotations"][k] = json!(v);
        self
    }
    pub fn home(mut self, h: &str) -> Self {
        self.0["spec"]["homeNode"] = json!(h);
        self
    }
    pub fn grace(mut self, s: i32) -> Self {
        self.0["spec"]["migration"]["gracePeriodSeconds"] = json!(s);
        self
    }
    pub fn max_migrations(mut self, n: i32) -> Self {
        self.0["spec"]["migration"]["maxMigrations"] = json!(n);
        self
    }
    pub fn fail_on_node_lost(mut self) -> Self {
        self.0["spec"]["migration"]["onNodeLost"] = json!("Fail");
        self
    }
    pub fn interval(mut self, s: i32) -> Self {
        self.0["spec"]["checkpoint"]["intervalSeconds"] = json!(s);
        self
    }
    pub fn keep(mut self, n: i32) -> Self {
        self.0["spec"]["checkpoint"]["keep"] = json!(n);
        self
    }
    pub fn parallel(mut self, n: i32) -> Self {
        self.0["spec"]["parallelism"] = json!(n);
        self
    }
    pub fn command(mut self, cmd: &[&str]) -> Self {
        self.container()["command"] = json!(cmd);
        self
    }
    pub fn run_as(mut self, uid: i64, gid: i64) -> Self {
        self.container()["securityContext"] = json!({"runAsUser": uid, "runAsGroup": gid});
        self
    }
    pub fn two_containers(mut self) -> Self {
        let c = self.container().clone();
        let mut c2 = c.clone();
        c2["name"] = json!("second");
        self.0["spec"]["template"]["spec"]["containers"] = json!([c, c2]);
        self
    }
    pub fn no_command(mut self) -> Self {
        self.container().as_object_mut().unwrap().remove("command");
        self
    }
    pub fn status(mut self, f: impl FnOnce(&mut MigratableJobStatus)) -> Self {
        let mut s: MigratableJobStatus =
            serde_json::from_value(self.0["status"].clone()).unwrap_or_default();
        f(&mut s);
        self.0["status"] = serde_json::to_value(s).unwrap();
        self
    }
    pub fn phase(self, p: JobPhase) -> Self {
        self.status(|s| s.phase = Some(p))
    }
    /// Running on `node` as pod `<name>-1` (generation 1), stub created.
    pub fn running_on(self, node: &str) -> Self {
        let name = self.0["metadata"]["name"].as_str().unwrap().to_string();
        self.status(|s| {
            s.phase = Some(JobPhase::Running);
            s.node = Some(node.into());
            s.pod = Some(format!("{name}-1"));
            s.pod_generation = 1;
            s.stub_pod = Some(format!("{name}-home"));
        })
    }
    pub fn build(&self) -> MigratableJob {
        serde_json::from_value(self.0.clone()).expect("fixture job deserializes")
    }
}

/// Builds Nodes: a Ready workstation with 4 CPUs and 16 GiB, not idle unless told.
#[derive(Debug, Clone)]
pub struct NodeBuilder(Value);

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        Self(json!({
            "metadata": {"name": name, "labels": {LABEL_WORKSTATION: "true", LABEL_IDLE: "false"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}}
        }))
    }
    pub fn idle_since(mut self, secs: i64) -> Self {
        self.0["metadata"]["labels"][LABEL_IDLE] = json!("true");
        self.0["metadata"]["annotations"][ANNOTATION_IDLE_SINCE] = json!(rfc(secs));
        self
    }
    pub fn not_idle(mut self) -> Self {
        self.0["metadata"]["labels"][LABEL_IDLE] = json!("false");
        self
    }
    pub fn taint(mut self, key: &str, effect: &str) -> Self {
        let taints = self.0["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut taints = taints;
        taints.push(json!({"key": key, "effect": effect}));
        self.0["spec"]["taints"] = json!(taints);
        self
    }
    pub fn cordoned(mut self) -> Self {
        self.0["spec"]["unschedulable"] = json!(true);
        self
    }
    pub fn not_ready(mut self) -> Self {
        self.0["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
        self
    }
    pub fn not_ready_since(mut self, secs: i64) -> Self {
        self.0["status"]["conditions"] =
            json!([{"type": "Ready", "status": "Unknown", "lastTransitionTime": rfc(secs)}]);
        self
    }
    pub fn not_workstation(mut self) -> Self {
        self.0["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(LABEL_WORKSTATION);
        self
    }
    pub fn allocatable(mut self, cpu: &str, mem: &str) -> Self {
        self.0["status"]["allocatable"] = json!({"cpu": cpu, "memory": mem, "pods": "110"});
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["labels"][k] = json!(v);
        self
    }
    pub fn build(&self) -> Node {
        serde_json::from_value(self.0.clone()).expect("fixture node deserializes")
    }
}

/// Builds pods of a job.
#[derive(Debug, Clone)]
pub struct PodBuilder(Value);

impl PodBuilder {
    /// Workload pod `<job>-<generation>` on `node`, phase Pending.
    pub fn workload(job: &str, generation: i64, node: &str) -> Self {
        Self(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-{generation}"), "namespace": "ns",
                         "creationTimestamp": rfc(0),
                         "labels": {LABEL_JOB: job, LABEL_ROLE: ROLE_WORKLOAD, LABEL_GENERATION: generation.to_string()}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Pending"}
        }))
    }
    /// The home stub `<job>-home`, running.
    pub fn stub(job: &str) -> Self {
        Self(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-home"), "namespace": "ns",
                         "labels": {LABEL_JOB: job, LABEL_ROLE: ROLE_STUB}},
            "spec": {"containers": [{"name": "stub", "image": "lodger:test"}]},
            "status": {"phase": "Running"}
        }))
    }
    pub fn running(mut self) -> Self {
        self.0["status"] = json!({"phase": "Running", "containerStatuses": [
            {"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"running": {}}}]});
        self
    }
    pub fn ready_at(mut self, secs: i64) -> Self {
        self = self.running();
        self.0["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": rfc(secs)}]);
        self
    }
    fn ended(mut self, phase: &str, code: i32) -> Self {
        self.0["status"] = json!({"phase": phase, "containerStatuses": [
            {"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": code}}}]});
        self
    }
    pub fn succeeded(self) -> Self {
        self.ended("Succeeded", 0)
    }
    pub fn failed(self, code: i32) -> Self {
        self.ended("Failed", code)
    }
    pub fn restore_from(mut self, ck: &str) -> Self {
        self.0["metadata"]["annotations"][ANNOTATION_RESTORE_FROM] = json!(ck);
        self
    }
    pub fn json(&self) -> Value {
        self.0.clone()
    }
    pub fn build(&self) -> Pod {
        serde_json::from_value(self.0.clone()).expect("fixture pod deserializes")
    }
}

/// Builds Checkpoints `<job>-ckpt-<seq>` of pod `<job>-1` on node `a`.
#[derive(Debug, Clone)]
pub struct CheckpointBuilder(Checkpoint);

impl CheckpointBuilder {
    pub fn new(job: &str, seq: i64) -> Self {
        let mut ck = Checkpoint::new(
            &format!("{job}-ckpt-{seq}"),
            CheckpointSpec {
                job: job.into(),
                pod: format!("{job}-1"),
                node: "a".into(),
                seq,
                strategy: Default::default(),
                reason: CheckpointReason::OwnerReturned,
                leave_running: false,
                deadline_seconds: 60,
            },
        );
        ck.metadata.namespace = Some("ns".into());
        ck.metadata.labels = Some(BTreeMap::from([(LABEL_JOB.to_string(), job.to_string())]));
        ck.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        Self(ck)
    }
    fn status(mut self, f: impl FnOnce(&mut CheckpointStatus)) -> Self {
        f(self.0.status.get_or_insert_with(Default::default));
        self
    }
    pub fn reason(mut self, r: CheckpointReason) -> Self {
        self.0.spec.reason = r;
        self.0.spec.leave_running = r == CheckpointReason::Periodic;
        self
    }
    pub fn created(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(secs)),
        );
        self
    }
    pub fn in_progress(self) -> Self {
        self.status(|s| s.phase = Some(CheckpointPhase::InProgress))
    }
    /// Completed: `bytes`, freeze 120 ms, stopped at `stopped` seconds.
    pub fn completed(self, bytes: i64, stopped: i64) -> Self {
        self.status(|s| {
            s.phase = Some(CheckpointPhase::Completed);
            s.image_bytes = Some(bytes);
            s.freeze_millis = Some(120);
            s.stopped_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
                stopped,
            )));
        })
    }
    pub fn failed(self, msg: &str, at: i64) -> Self {
        self.status(|s| {
            s.phase = Some(CheckpointPhase::Failed);
            s.message = Some(msg.into());
            s.completed_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(at)));
        })
    }
    pub fn path(self, p: &str) -> Self {
        let p = p.to_string();
        self.status(|s| s.path = Some(p))
    }
    pub fn deleting(mut self, finalizers: &[&str]) -> Self {
        self.0.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(1)));
        self.0.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        self
    }
    pub fn build(&self) -> Checkpoint {
        self.0.clone()
    }
}

type Handler = Box<dyn FnOnce(Value) -> (u16, Value) + Send>;

/// One expected request and how to answer it.
pub struct Expectation {
    method: String,
    path: String,
    handler: Handler,
}

impl std::fmt::Debug for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The mocked API server: answers an exact, ordered script of requests.
pub struct ApiServer {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiServer")
    }
}

/// The running script; [`Verifier::done`] checks every expected request came.
#[derive(Debug)]
pub struct Verifier(tokio::task::JoinHandle<()>);

impl Verifier {
    /// Waits (at most 1 s) for the script to finish and propagates its assertion failures.
    pub async fn done(self) {
        tokio::time::timeout(Duration::from_secs(1), self.0)
            .await
            .expect("the API server script did not finish: an expected request never came")
            .expect("the API server script panicked");
    }
}

impl ApiServer {
    /// A client wired to a new mocked server.
    pub fn new() -> (Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer { handle })
    }

    /// Expect `method path` (path without query); `f` gets the JSON body and returns the reply.
    pub fn expect(
        method: &str,
        path: &str,
        f: impl FnOnce(Value) -> (u16, Value) + Send + 'static,
    ) -> Expectation {
        Expectation {
            method: method.into(),
            path: path.into(),
            handler: Box::new(f),
        }
    }

    pub fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404})
    }

    pub fn deleted() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
    }

    /// Runs the script in a task. Every request after the last expectation fails (the handle is
    /// dropped), so an unexpected write makes the code under test return an error.
    pub fn run(self, script: Vec<Expectation>) -> Verifier {
        let handle = self.handle;
        Verifier(tokio::spawn(async move {
            let mut handle = pin!(handle);
            for exp in script {
                let (request, send) =
                    tokio::time::timeout(Duration::from_secs(1), handle.next_request())
                        .await
                        .unwrap_or_else(|_| panic!("timed out waiting for {exp:?}"))
                        .unwrap_or_else(|| panic!("client gone before {exp:?}"));
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                assert_eq!(
                    (method.as_str(), path.as_str()),
                    (exp.method.as_str(), exp.path.as_str()),
                    "unexpected request (query {query})"
                );
                let is_apply = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes() == b"application/apply-patch+yaml");
                if is_apply {
                    assert!(
                        query.contains("fieldManager=lodger-operator"),
                        "SSA without our field manager: {query}"
                    );
                    assert!(query.contains("force=true"), "SSA without force: {query}");
                }
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                };
                let (code, reply) = (exp.handler)(body);
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(
                        serde_json::to_vec(&reply).expect("reply serializes"),
                    ))
                    .expect("valid response");
                send.send_response(response);
            }
        }))
    }

    /// Serves requests in any order through `route(method, path, query, body)` until the
    /// client goes: watch requests are held open (no events), a `None` route answers 404. For
    /// tests of the controller wiring, where several watches start concurrently.
    pub fn serve(
        self,
        mut route: impl FnMut(&str, &str, &str, Value) -> Option<(u16, Value)> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.handle;
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            let mut watches = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                if query.contains("watch=true") {
                    watches.push(send);
                    continue;
                }
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                };
                let (code, reply) =
                    route(&method, &path, &query, body).unwrap_or((404, Self::not_found()));
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(
                        serde_json::to_vec(&reply).expect("reply serializes"),
                    ))
                    .expect("valid response");
                send.send_response(response);
            }
        })
    }
}
