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
    use lodger_telemetry::testing::get;
    use std::sync::atomic::Ordering;

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
        assert_eq!(get(addr, "/healthz").await.status, 200);
        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.body, "starting");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.status, 200);
        let m = get(addr, "/metrics").await;
        assert_eq!(
            m.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{m:?}"
        );
        assert!(m.body.contains("lodger_node_agent_idle -1"), "{}", m.body);
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
