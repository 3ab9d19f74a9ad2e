//! A stateful stand-in for the parts of the Kubernetes API the stub uses: one MigratableJob, its
//! pods and their logs, and JobSignals. It answers as the API server does (status codes, Status
//! bodies, AlreadyExists on a duplicate name) and records every request. Used two ways: behind a
//! tower-test mock service (in-process) and behind a loopback HTTP server (for the real stub
//! binary, reached through a kubeconfig).

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::{Value, json};

pub const NS: &str = "ns";
pub const JOB: &str = "job";

/// The fake API server's state.
#[derive(Debug, Default)]
pub struct FakeApi {
    /// The MigratableJob (None: deleted).
    pub job: Option<Value>,
    /// Workload pods by name.
    pub pods: BTreeMap<String, Value>,
    /// Log text by pod name, lines `"<RFC3339Nano> text\n"`.
    pub logs: BTreeMap<String, String>,
    /// JobSignals in creation order.
    pub signals: Vec<Value>,
    /// Every request: "METHOD /path?query".
    pub requests: Vec<String>,
    /// POSTs of JobSignals answered, including refused ones.
    pub signal_posts: usize,
    /// This many JobSignal creates are stored but answered 504 (the reply is "lost"): the
    /// ambiguous failure a sender must resolve without a duplicate.
    pub ambiguous_posts: usize,
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

pub fn job(phase: &str, exit_code: Option<i32>) -> Value {
    let mut status = json!({"phase": phase, "podGeneration": 1});
    if let Some(c) = exit_code {
        status["exitCode"] = json!(c);
    }
    json!({
        "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
        "metadata": {"name": JOB, "namespace": NS, "uid": "u-1"},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh"]}]}}},
        "status": status,
    })
}

/// A workload pod of generation `generation` whose container is `state` ("waiting", "running" or
/// "terminated"); `restore_from` sets the restore annotation (a restore, not a restart).
pub fn pod(generation: i64, state: &str, restore_from: Option<&str>) -> Value {
    let mut annotations = json!({});
    if let Some(r) = restore_from {
        annotations["lodger.dev/restore-from"] = json!(r);
    }
    let st = match state {
        "running" => json!({"running": {"startedAt": "2026-11-22T10:00:00Z"}}),
        "terminated" => json!({"terminated": {"exitCode": 0}}),
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{JOB}-{generation}"), "namespace": NS,
                     "labels": {"lodger.dev/job": JOB, "lodger.dev/generation": generation.to_string(),
                                "lodger.dev/role": "workload"},
                     "annotations": annotations},
        "spec": {"nodeName": format!("node-{generation}"),
                 "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": if state == "terminated" {"Succeeded"} else {"Running"},
                   "containerStatuses": [{"name": "main", "image": "busybox", "imageID": "", "ready": true,
                                          "restartCount": 0, "state": st}]},
    })
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Decodes `application/x-www-form-urlencoded` text (`+` and `%XX`).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

impl FakeApi {
    /// Answers one request: (status, content type, body).
    pub fn handle(
        &mut self,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> (StatusCode, Vec<u8>) {
        self.requests.push(format!("{method} {path_and_query}"));
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let jobs = format!("/apis/lodger.dev/v1alpha1/namespaces/{NS}/migratablejobs/");
        let sigs = format!("/apis/lodger.dev/v1alpha1/namespaces/{NS}/jobsignals");
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let json_reply = |code: u16, v: &Value| {
            (
                StatusCode::from_u16(code).expect("valid code"),
                serde_json::to_vec(v).expect("json"),
            )
        };
        // Another namespace holds nothing: answer as the API server does for a missing object.
        if path.contains("/namespaces/") && !path.contains(&format!("/namespaces/{NS}/")) {
            let body = serde_json::to_vec(&status(404, "NotFound", "not found")).expect("json");
            return (StatusCode::NOT_FOUND, body);
        }
        if let Some(name) = path.strip_prefix(&jobs) {
            assert_eq!(method, Method::GET, "the stub only reads its job");
            return match (&self.job, name == JOB) {
                (Some(j), true) => json_reply(200, j),
                _ => json_reply(
                    404,
                    &status(
                        404,
                        "NotFound",
                        "migratablejobs.lodger.dev \"job\" not found",
                    ),
                ),
            };
        }
        if path == sigs {
            if method == Method::GET {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                assert_eq!(
                    selector,
                    format!("lodger.dev/job={JOB}"),
                    "signals listed by job label"
                );
                let name = query_param(query, "fieldSelector")
                    .map(|f| f.trim_start_matches("metadata.name=").to_string());
                let items = self
                    .signals
                    .iter()
                    .filter(|s| {
                        name.as_ref()
                            .is_none_or(|n| s["metadata"]["name"] == n.as_str())
                    })
                    .cloned()
                    .collect();
                return json_reply(200, &list("JobSignalList", "lodger.dev/v1alpha1", items));
            }
            assert_eq!(method, Method::POST);
            self.signal_posts += 1;
            let obj: Value = serde_json::from_slice(body).expect("JobSignal body is JSON");
            assert_eq!(obj["kind"], "JobSignal");
            assert_eq!(obj["spec"]["job"], JOB);
            let seq = obj["spec"]["seq"].as_i64().expect("seq");
            let name = obj["metadata"]["name"].as_str().expect("name").to_string();
            assert_eq!(name, format!("{JOB}-sig-{seq}"), "deterministic name");
            assert_eq!(obj["metadata"]["labels"]["lodger.dev/job"], JOB);
            assert_eq!(
                obj["metadata"]["ownerReferences"][0]["uid"], "u-1",
                "owned by the job"
            );
            assert!(obj["metadata"]["annotations"]["lodger.dev/signal-id"].is_string());
            if self
                .signals
                .iter()
                .any(|s| s["metadata"]["name"] == name.as_str())
            {
                return json_reply(
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("jobsignals.lodger.dev \"{name}\" already exists"),
                    ),
                );
            }
            let mut stored = obj.clone();
            stored["metadata"]["namespace"] = json!(NS);
            self.signals.push(stored.clone());
            if self.ambiguous_posts > 0 {
                self.ambiguous_posts -= 1;
                return json_reply(
                    504,
                    &status(
                        504,
                        "Timeout",
                        "the server was unable to return a response in the time allotted",
                    ),
                );
            }
            return json_reply(201, &stored);
        }
        if path == pods {
            assert_eq!(method, Method::GET);
            let selector = query_param(query, "labelSelector").unwrap_or_default();
            assert_eq!(
                selector,
                format!("lodger.dev/job={JOB},lodger.dev/role=workload")
            );
            return json_reply(
                200,
                &list("PodList", "v1", self.pods.values().cloned().collect()),
            );
        }
        if let Some(rest) = path.strip_prefix(&format!("{pods}/")) {
            assert_eq!(method, Method::GET);
            if let Some(name) = rest.strip_suffix("/log") {
                assert_eq!(query_param(query, "container").as_deref(), Some("main"));
                assert_eq!(query_param(query, "timestamps").as_deref(), Some("true"));
                let since = query_param(query, "sinceTime")
                    .map(|s| s.parse::<jiff::Timestamp>().expect("sinceTime"));
                let text = self.logs.get(name).cloned().unwrap_or_default();
                let served: String = text
                    .lines()
                    .filter(|l| {
                        let ts: jiff::Timestamp = l.split(' ').next().unwrap().parse().unwrap();
                        since.is_none_or(|s| ts >= s)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                return (StatusCode::OK, served.into_bytes());
            }
            return match self.pods.get(rest) {
                Some(p) => json_reply(200, p),
                None => json_reply(404, &status(404, "NotFound", "pods not found")),
            };
        }
        panic!("unexpected request {method} {path_and_query}");
    }
}

/// Shared handle to a fake.
pub type Shared = Arc<Mutex<FakeApi>>;

/// Serves `fake` from the in-process tower-test mock handle until the client goes away.
pub fn serve_mock(
    fake: Shared,
    mut handle: tower_test::mock::Handle<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.expect("request body");
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let (code, reply) = fake
                .lock()
                .expect("fake lock")
                .handle(&parts.method, &pq, &body);
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(reply))
                    .expect("response"),
            );
        }
    })
}

/// A kube client talking to `fake` in-process.
pub fn mock_client(fake: Shared) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    (kube::Client::new(svc, NS), serve_mock(fake, handle))
}
