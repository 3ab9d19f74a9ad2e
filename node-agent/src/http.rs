//! The agent's HTTP endpoints, served by [`lodger_telemetry`]: `/metrics` (OpenMetrics text
//! from [`crate::metrics::Metrics`]), `/healthz` (the process serves) and `/readyz` (503
//! `starting` until [`crate::agent::run`] has started the agent's loops).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use lodger_telemetry::Endpoints;
pub use lodger_telemetry::HttpError;

use crate::metrics::Metrics;

/// The `/readyz` body until the loops run.
pub const NOT_READY_BODY: &str = "starting";

/// The agent's endpoints: its metrics registry and its readiness flag (set once its loops run).
pub fn endpoints(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Endpoints {
    Endpoints::new(move || metrics.encode(), ready).not_ready_body(NOT_READY_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// If this fails, the kubelet's probes or Prometheus cannot reach the agent (wrong paths,
    /// readiness reported before the loops run, metrics not from the agent's registry).
    #[tokio::test]
    async fn endpoints_answer_on_loopback() {
        let ready = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As the agent serves: until the task is dropped.
        let server = tokio::spawn(lodger_telemetry::serve_on(
            listener,
            endpoints(Arc::new(Metrics::new()), ready.clone()),
            std::future::pending(),
        ));
        assert!(get_path(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let r = get_path(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("\r\n\r\nstarting"), "{r}");
        ready.store(true, Ordering::Relaxed);
        assert!(get_path(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get_path(addr, "/metrics").await;
        assert!(
            m.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{m}"
        );
        assert!(m.contains("lodger_node_agent_idle -1"), "{m}");
        server.abort();
    }

    /// The agent's error metric and termination log keep their categories for HTTP failures:
    /// a second agent on a port in use fails with `http_bind`. If this breaks, the agent's
    /// `lodger_node_agent_errors_total{category}` series and alerts on them change.
    #[tokio::test]
    async fn bind_failure_keeps_its_category() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = lodger_telemetry::serve(
            addr,
            endpoints(Arc::new(Metrics::new()), Arc::new(AtomicBool::new(false))),
            std::future::pending(),
        )
        .await
        .expect_err("the port is taken");
        let err = crate::agent::AgentError::Http(err);
        assert_eq!(err.category(), "http_bind");
        assert!(
            err.to_string()
                .starts_with(&format!("failed to listen on {addr}: ")),
            "{err}"
        );
    }
}
