//! Test fixtures: a mocked API server (kube-rs `tower-test` pattern). Each `expect*` call takes
//! the next request the client sends, asserts its method and URI (and content type), answers
//! it the way the API server would, and returns the request body for the test to assert on.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{Handle, pair};

/// The API server side of a mocked client.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// A client whose every request goes to the returned verifier.
    pub fn new() -> (kube::Client, Self) {
        let (service, handle) = pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), Self(handle))
    }

    async fn next(
        &mut self,
        method: &str,
        uri: &str,
    ) -> (
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
        Option<String>,
    ) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request arrived; expected {method} {uri}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {uri}"));
        assert_eq!(
            request.method().as_str(),
            method,
            "method of {}",
            request.uri()
        );
        assert_eq!(request.uri().to_string(), uri, "URI");
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        (body, send, content_type)
    }

    /// Expects `method uri` (with `content_type` when given), replies 200 with `reply`, returns
    /// the request body.
    pub async fn expect(
        &mut self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        reply: Value,
    ) -> Value {
        let (body, send, ct) = self.next(method, uri).await;
        if let Some(want) = content_type {
            assert_eq!(ct.as_deref(), Some(want), "content type of {method} {uri}");
        }
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        body
    }

    /// Expects `method uri`, replies 200 with `reply(&request body)`, returns the body.
    pub async fn expect_fn(
        &mut self,
        method: &str,
        uri: &str,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Value {
        let (body, send, content_type) = self.next(method, uri).await;
        if method == "PATCH" {
            // Every write of the agent is a server-side apply.
            assert_eq!(
                content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "{uri}"
            );
        }
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&reply(&body)).unwrap()))
                .unwrap(),
        );
        body
    }

    /// Expects `method` on a URI starting with `uri_prefix` (generated names), replies 200 with
    /// `{}`, returns the body.
    pub async fn expect_prefix(&mut self, method: &str, uri_prefix: &str) -> Value {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request arrived; expected {method} {uri_prefix}..."))
            .unwrap_or_else(|| panic!("client gone; expected {method} {uri_prefix}..."));
        assert_eq!(
            request.method().as_str(),
            method,
            "method of {}",
            request.uri()
        );
        let uri = request.uri().to_string();
        assert!(
            uri.starts_with(uri_prefix),
            "URI {uri} does not start with {uri_prefix}"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(b"{}".to_vec()))
                .unwrap(),
        );
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// Expects `method uri`, replies with an API error `status`/`reason`, returns the body.
    pub async fn expect_status(
        &mut self,
        method: &str,
        uri: &str,
        status: u16,
        reason: &str,
    ) -> Value {
        let (body, send, _) = self.next(method, uri).await;
        let status_obj = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mocked {reason}"), "reason": reason, "code": status,
        });
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&status_obj).unwrap()))
                .unwrap(),
        );
        body
    }

    /// Asserts that the client sends nothing more within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.0.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// Awaits the verifier task, failing the test if it does not finish within a second (a
/// request the test expected never came) or if it panicked.
pub async fn timeout_after_1s(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the mocked API server did not get every expected request within 1 s")
        .expect("the mocked API server's assertions failed");
}

/// Awaits the verifier task for at most `secs` seconds (for tests that wait out a deadline).
pub async fn timeout_after(secs: u64, task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(secs), task)
        .await
        .expect("the mocked API server did not get every expected request in time")
        .expect("the mocked API server's assertions failed");
}

/// A fake shim: a real unix socket at the place the kubelet would expose a pod's control
/// emptyDir, speaking the real protocol (`lodger_shim::control`). For each connection it reads
/// one request line, records it, and answers what `answer` returns for it; `None` means "never
/// answer" (the connection is held open, like a shim stuck in a dump).
pub struct FakeShim {
    /// The requests received, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<lodger_shim::control::Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeShim {
    /// Listens at `<kubelet_root>/pods/<uid>/volumes/kubernetes.io~empty-dir/lodger-control/shim.sock`.
    pub fn start<F>(kubelet_root: &std::path::Path, uid: &str, mut answer: F) -> Self
    where
        F: FnMut(&lodger_shim::control::Request) -> Option<lodger_shim::control::Reply>
            + Send
            + 'static,
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let socket = crate::driver::shim_socket(kubelet_root, uid);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (read_half, mut write_half) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read_half)
                    .read_line(&mut line)
                    .await
                    .unwrap();
                let request: lodger_shim::control::Request =
                    serde_json::from_str(line.trim_end()).expect("the agent sends a valid request");
                let reply = answer(&request);
                seen.lock().unwrap().push(request);
                match reply {
                    Some(result) => {
                        let response = lodger_shim::control::Response {
                            version: lodger_shim::control::PROTOCOL_VERSION,
                            result,
                        };
                        let mut out = serde_json::to_vec(&response).unwrap();
                        out.push(b'\n');
                        write_half.write_all(&out).await.unwrap();
                    }
                    None => {
                        // Hold the connection open without answering.
                        tokio::spawn(async move {
                            let _held = write_half;
                            std::future::pending::<()>().await;
                        });
                    }
                }
            }
        });
        Self { requests, task }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<lodger_shim::control::Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A driver context on node `desk-7` whose kubelet root is `kubelet_root`.
pub fn context(client: kube::Client, kubelet_root: &std::path::Path) -> crate::driver::Context {
    crate::driver::Context::new(
        client,
        "desk-7".to_string(),
        kubelet_root.to_path_buf(),
        kubelet_root.join("checkpoints"),
        std::sync::Arc::new(crate::metrics::Metrics::new()),
    )
}

/// A shim status report, built from its wire form so it keeps compiling when the shim adds
/// optional fields (as a real, newer shim's answer would still parse).
pub fn shim_status(
    job: lodger_shim::control::JobState,
    last_signal_seq: u64,
) -> lodger_shim::control::ShimStatus {
    serde_json::from_value(serde_json::json!({
        "job": job,
        "initPid": 1,
        "lastSignalSeq": last_signal_seq,
        "restoredFrom": null,
        "criuVersion": null,
    }))
    .expect("a status in the protocol's wire form")
}
