//! The operator's HTTP endpoints, served by [`lodger_telemetry`]: `/metrics` (OpenMetrics text
//! from [`crate::metrics::Metrics`]), `/healthz` (the process serves requests) and `/readyz`
//! (503 only while a new leader syncs its caches; a follower waiting for the Lease is ready, so
//! rollouts of two replicas proceed). [`crate::run`] sets and clears the flag.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use lodger_telemetry::Endpoints;

use crate::metrics::Metrics;

/// The `/readyz` body while a new leader syncs.
pub const NOT_READY_BODY: &str = "not ready";

/// The operator's endpoints: its metrics registry and its readiness flag.
pub fn endpoints(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Endpoints {
    Endpoints::new(move || metrics.encode(), ready).not_ready_body(NOT_READY_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodger_telemetry::testing::get;
    use std::sync::atomic::Ordering;
    use tokio_util::sync::CancellationToken;

    /// The endpoints answer on loopback: health always, readiness only once ready (and again
    /// 503 when cleared, as when a follower becomes leader and syncs), metrics in OpenMetrics
    /// text from the operator's registry; the server stops when shutdown is cancelled. If this
    /// breaks, kubelet probes kill a healthy operator or Prometheus scrapes nothing.
    #[tokio::test]
    async fn endpoints_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let task = tokio::spawn(lodger_telemetry::serve_on(
            listener,
            endpoints(Arc::new(Metrics::default()), ready.clone()),
            stop.clone().cancelled_owned(),
        ));
        assert_eq!(get(addr, "/healthz").await.status, 200);
        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.body, "not ready");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.status, 200);
        ready.store(false, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.status, 503);
        let m = get(addr, "/metrics").await;
        assert_eq!(
            m.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{m:?}"
        );
        assert!(m.body.contains("lodger_operator_parked_jobs"), "{}", m.body);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
