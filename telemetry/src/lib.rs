//! Lodger's shared HTTP endpoints (axum), used by the operator and the node agent:
//!
//! - `/metrics`: the text the caller's encoder returns at request time (each component owns its
//!   prometheus-client registry), with the caller's content type (by default
//!   [`OPENMETRICS_CONTENT_TYPE`]);
//! - `/healthz`: `200 ok` whenever the process serves requests;
//! - `/readyz`: `200 ready` while the caller's readiness flag is set, else `503` with the
//!   caller's body. *When* the flag is set is the caller's decision: the operator clears it only
//!   while a new leader syncs its caches, the node agent sets it once its loops started.
//!
//! [`serve`] binds and serves until a shutdown future completes, then finishes the requests in
//! flight; [`HttpError`] carries the stable `category()` strings the node agent's metrics and
//! logs use (`http_bind`, `http_serve`).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

/// The content type of OpenMetrics text, what prometheus-client's text encoder writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/readyz` body while not ready, unless [`Endpoints::not_ready_body`] sets another.
pub const DEFAULT_NOT_READY_BODY: &str = "not ready";

/// Errors of the HTTP endpoints.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding the address failed.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("failed to serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

impl HttpError {
    /// Stable category (metrics labels, logs).
    pub fn category(&self) -> &'static str {
        match self {
            HttpError::Bind { .. } => "http_bind",
            HttpError::Serve(_) => "http_serve",
        }
    }

    /// The underlying IO error, for callers that report only that.
    pub fn into_io_error(self) -> std::io::Error {
        match self {
            HttpError::Bind { source, .. } | HttpError::Serve(source) => source,
        }
    }
}

/// What the endpoints serve: the metrics encoder, its content type, the readiness flag and the
/// body of a not-ready answer. Cheap to clone (shared pointers).
#[derive(Clone)]
pub struct Endpoints {
    encode: Arc<dyn Fn() -> String + Send + Sync>,
    content_type: &'static str,
    ready: Arc<AtomicBool>,
    not_ready_body: &'static str,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("content_type", &self.content_type)
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("not_ready_body", &self.not_ready_body)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Endpoints whose `/metrics` answers `encode()` (called once per scrape) as OpenMetrics
    /// text and whose `/readyz` follows `ready`.
    pub fn new(
        encode: impl Fn() -> String + Send + Sync + 'static,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Endpoints {
            encode: Arc::new(encode),
            content_type: OPENMETRICS_CONTENT_TYPE,
            ready,
            not_ready_body: DEFAULT_NOT_READY_BODY,
        }
    }

    /// Sets the content type of `/metrics`.
    #[must_use]
    pub fn content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = content_type;
        self
    }

    /// Sets the body of `/readyz` while not ready.
    #[must_use]
    pub fn not_ready_body(mut self, body: &'static str) -> Self {
        self.not_ready_body = body;
        self
    }

    /// The router: `/metrics`, `/healthz`, `/readyz`; anything else is 404.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

async fn metrics(State(e): State<Endpoints>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, e.content_type)], (e.encode)())
}

async fn readyz(State(e): State<Endpoints>) -> impl IntoResponse {
    if e.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, e.not_ready_body)
    }
}

/// Binds `addr` and serves until `shutdown` completes (pass `std::future::pending()` to serve
/// until the future is dropped); then stops accepting and waits for the requests in flight.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    serve_on(listener, endpoints, shutdown).await
}

/// Serves on a bound listener until `shutdown` completes, like [`serve`].
pub async fn serve_on(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, endpoints.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::testing::get;
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    async fn loopback() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Health is always 200, readiness follows the flag both ways (503 with the caller's body
    /// while cleared), anything else is 404. If this breaks, the kubelet kills a healthy
    /// process, routes traffic to a syncing leader, or reports the wrong reason.
    #[tokio::test]
    async fn health_and_readiness_follow_the_flag() {
        let (listener, addr) = loopback().await;
        let ready = Arc::new(AtomicBool::new(false));
        let endpoints = Endpoints::new(String::new, ready.clone()).not_ready_body("starting");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));

        let h = get(addr, "/healthz").await;
        assert_eq!((h.status, h.body.as_str()), (200, "ok"));
        let r = get(addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "starting"));
        ready.store(true, Ordering::Relaxed);
        let r = get(addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        ready.store(false, Ordering::Relaxed);
        let r = get(addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "starting"));
        assert_eq!(get(addr, "/").await.status, 404);
        assert_eq!(get(addr, "/metricsx").await.status, 404);

        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// Without a body set, not-ready answers say "not ready". If this breaks, the default the
    /// operator's probes documented changes silently.
    #[tokio::test]
    async fn default_not_ready_body() {
        let (listener, addr) = loopback().await;
        let endpoints = Endpoints::new(String::new, Arc::new(AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));
        let r = get(addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, DEFAULT_NOT_READY_BODY));
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// `/metrics` answers what the encoder returns at scrape time (not a snapshot taken at
    /// start), with OpenMetrics as the default content type and the caller's when set. If this
    /// breaks, Prometheus scrapes stale values or refuses the format.
    #[tokio::test]
    async fn metrics_are_encoded_per_scrape_with_the_content_type() {
        let (listener, addr) = loopback().await;
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        let endpoints = Endpoints::new(
            move || format!("demo_total {}\n", c.load(Ordering::Relaxed)),
            Arc::new(AtomicBool::new(true)),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));
        let m = get(addr, "/metrics").await;
        assert_eq!(m.status, 200);
        assert_eq!(m.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
        assert_eq!(m.body, "demo_total 0\n");
        counter.store(7, Ordering::Relaxed);
        assert_eq!(get(addr, "/metrics").await.body, "demo_total 7\n");
        stop.cancel();
        server.await.unwrap().unwrap();

        let (listener, addr) = loopback().await;
        let plain = "text/plain; version=0.0.4";
        let endpoints = Endpoints::new(|| "x 1\n".to_string(), Arc::new(AtomicBool::new(true)))
            .content_type(plain);
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));
        let m = get(addr, "/metrics").await;
        assert_eq!(m.header("content-type"), Some(plain));
        assert_eq!(m.body, "x 1\n");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// `serve` binds the address itself and reports an address in use as `Bind` with the
    /// address in the message and the category `http_bind`. If this breaks, the node agent's
    /// termination log and error metric stop naming the cause.
    #[tokio::test]
    async fn serve_binds_and_reports_bind_errors() {
        // A free port: bind, note it, release it, then let `serve` bind it.
        let (probe, addr) = loopback().await;
        drop(probe);
        let stop = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(true));
        let server = tokio::spawn(serve(
            addr,
            Endpoints::new(String::new, ready.clone()),
            stop.clone().cancelled_owned(),
        ));
        // The server binds asynchronously: retry the first connection briefly.
        let mut answer = None;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                answer = Some(get(addr, "/healthz").await);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(answer.expect("serve never listened").status, 200);

        // Same address again while the first server holds it.
        let err = serve(
            addr,
            Endpoints::new(String::new, ready),
            std::future::pending(),
        )
        .await
        .expect_err("the address is in use");
        assert_eq!(err.category(), "http_bind");
        assert!(
            err.to_string()
                .starts_with(&format!("failed to listen on {addr}: ")),
            "{err}"
        );
        assert!(matches!(err, HttpError::Bind { addr: a, .. } if a == addr));
        assert_eq!(
            err.into_io_error().kind(),
            std::io::ErrorKind::AddrInUse,
            "the IO error is kept"
        );

        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// The stable strings: messages and categories as the node agent logs and counts them,
    /// and `into_io_error` returns the source of either variant. If this breaks, dashboards
    /// and alerts on `http_bind`/`http_serve` go blind.
    #[test]
    fn error_categories_and_messages_are_stable() {
        let serve_err = HttpError::Serve(std::io::Error::other("boom"));
        assert_eq!(serve_err.category(), "http_serve");
        assert_eq!(serve_err.to_string(), "failed to serve HTTP: boom");
        assert_eq!(serve_err.into_io_error().to_string(), "boom");
        let bind_err = HttpError::Bind {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: std::io::Error::other("taken"),
        };
        assert_eq!(bind_err.category(), "http_bind");
        assert_eq!(
            bind_err.to_string(),
            "failed to listen on 127.0.0.1:8080: taken"
        );
        assert!(std::error::Error::source(&bind_err).is_some());
    }

    /// Shutdown is graceful: a scrape in flight when shutdown is signalled still gets its full
    /// answer, `serve_on` then returns `Ok`, and the port no longer accepts. If this breaks,
    /// rolling updates cut scrapes and probes mid-answer, or the server never stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_requests_in_flight() {
        let (listener, addr) = loopback().await;
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let go_rx = Mutex::new(go_rx);
        // NB: the encoder blocks its worker thread until the test lets it go; the runtime has
        // two workers, so the server's other tasks keep running.
        let endpoints = Endpoints::new(
            move || {
                entered_tx.lock().unwrap().send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
                "slow 1\n".to_string()
            },
            Arc::new(AtomicBool::new(true)),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));
        let scrape = tokio::spawn(get(addr, "/metrics"));
        tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
            .await
            .unwrap();
        stop.cancel();
        go_tx.send(()).unwrap();
        let m = scrape.await.unwrap();
        assert_eq!((m.status, m.body.as_str()), (200, "slow 1\n"));
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }
}
