//! Lodger's operator: places MigratableJobs on idle desktops and migrates them live.
//!
//! Data flow: Nodes (idle label/annotation and taints from the node agent), pods and
//! MigratableJobs come in through watches and caches; [`placement`] (pure) picks idle nodes;
//! [`machine`] (pure) decides each job's next step; [`reconcile`] applies it with server-side
//! apply and writes status; [`checkpoints`] removes a Checkpoint's files when it goes. Only the
//! replica holding the [`lease`] acts. A job's finalizer removes its directory on the volume.
//! [`server`] exports metrics and health.
//!
//! Not done here (see operator/README.md): reacting to a target node that is lost *while* a
//! restore is in flight (the restore simply waits for the pod, which the taint manager then
//! fails).

pub mod checkpoints;
pub mod config;
pub mod desired;
pub mod lease;
pub mod machine;
pub mod metrics;
pub mod placement;
pub mod quantity;
pub mod reconcile;
pub mod server;
pub mod telemetry;
pub mod validate;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod mock_tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use lodger_api::{Checkpoint, LABEL_PARENT, LABEL_ROLE, MigratableJob};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use reconcile::Context;

/// Errors that end the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster config.
    #[error("failed to create a Kubernetes client")]
    Client(#[source] kube::Error),
    /// Leader election failed.
    #[error("failed to become leader")]
    Lease(#[from] lease::Error),
    /// A cache never synced.
    #[error("failed to sync the {0} cache")]
    Cache(&'static str),
    /// The /metrics, /healthz and /readyz server could not listen or stopped serving.
    #[error(transparent)]
    Server(#[from] lodger_telemetry::HttpError),
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The two controllers, wired: MigratableJobs (watched through `DeserializeGuard`, owning pods,
/// Checkpoints and parallel instances, woken by Node changes) and Checkpoints (finalizer). Both
/// stop gracefully when `shutdown` is cancelled. Returns their driving futures and the shared
/// context.
pub fn controllers(
    client: Client,
    settings: config::Settings,
    metrics: Arc<metrics::Metrics>,
    nodes: reflector::Store<Node>,
    pods: reflector::Store<Pod>,
    shutdown: CancellationToken,
) -> (
    impl std::future::Future<Output = ()> + Send,
    impl std::future::Future<Output = ()> + Send,
    Arc<Context>,
) {
    let job_api = Api::<DeserializeGuard<MigratableJob>>::all(client.clone());
    let controller = Controller::new(job_api, watcher::Config::default());
    let job_store = controller.store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        metrics,
        nodes,
        pods,
        job_store.clone(),
    ));
    let node_jobs = job_store.clone();
    let stop = shutdown.clone();
    let jobs = controller
        .owns(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(LABEL_ROLE),
        )
        .owns(
            Api::<Checkpoint>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<DeserializeGuard<MigratableJob>>::all(client.clone()),
            watcher::Config::default().labels(LABEL_PARENT),
        )
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |node| reconcile::jobs_for_node(&node_jobs, &node.name_any()),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "job controller error");
            }
        });
    let stop = shutdown.clone();
    let cks = Controller::new(
        Api::<Checkpoint>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(
        checkpoints::reconcile,
        checkpoints::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            warn!(error = %e, "checkpoint controller error");
        }
    });
    (jobs, cks, ctx)
}

/// Runs the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(config: Config) -> Result<(), RunError> {
    // NB: listen first: a taken port ends the operator at once with a clear message instead of
    // leaving it running unobservable until its liveness probe kills it.
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| lodger_telemetry::HttpError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received: shutting down");
            shutdown.cancel();
        });
    }
    let server = {
        let served = lodger_telemetry::serve_on(
            listener,
            server::endpoints(metrics.clone(), ready.clone()),
            shutdown.clone().cancelled_owned(),
        );
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let r = served.await;
            if let Err(e) = &r {
                // Without its endpoints the operator cannot be probed or scraped: stop cleanly
                // (releasing the Lease) and let the Deployment restart it.
                warn!(error = %e, "metrics and health server failed: shutting down");
                shutdown.cancel();
            }
            r
        })
    };

    let led = lead(&config, client, metrics, ready, &shutdown).await;
    shutdown.cancel();
    match server.await {
        // NB: a failed server also cancels the rest; its error is the cause worth reporting.
        Ok(Err(e)) => Err(RunError::Server(e)),
        _ => led,
    }
}

/// Waits for the Lease, syncs the caches and runs the controllers until `shutdown` or loss of
/// leadership; releases the Lease on the way out.
async fn lead(
    config: &Config,
    client: Client,
    metrics: Arc<metrics::Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    // A follower waiting for the Lease is ready (it is healthy and rollouts must proceed); a
    // new leader is not until its caches are synced.
    ready.store(true, Ordering::Relaxed);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.lease_namespace);
    lease::acquire(&leases, &config.lease_name, &config.identity, shutdown).await?;
    ready.store(false, Ordering::Relaxed);
    let holder = tokio::spawn(lease::hold(
        leases.clone(),
        config.lease_name.clone(),
        config.identity.clone(),
        shutdown.clone(),
    ));

    // Caches for placement. NB: controllers start only once they are synced: an empty node
    // cache would make every running job look like it sits on a lost node.
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_config =
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    for (what, stream) in [
        ("node", node_stream.map(|r| r.map(|_| ())).boxed()),
        ("pod", pod_stream.map(|r| r.map(|_| ())).boxed()),
    ] {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    item = stream.next() => match item {
                        None => return,
                        Some(Err(e)) => warn!(cache = what, error = %e, "watch error"),
                        Some(Ok(())) => {}
                    }
                }
            }
        });
    }
    let synced = tokio::select! {
        () = shutdown.cancelled() => Ok(false),
        r = async { (nodes.wait_until_ready().await, pods.wait_until_ready().await) } => match r {
            (Err(_), _) => Err(RunError::Cache("node")),
            (_, Err(_)) => Err(RunError::Cache("pod")),
            _ => Ok(true),
        },
    };
    if let Ok(true) = synced {
        let (jobs, cks, _ctx) = controllers(
            client.clone(),
            config.settings(),
            metrics.clone(),
            nodes,
            pods,
            shutdown.clone(),
        );
        ready.store(true, Ordering::Relaxed);
        info!("leading: controllers running");
        futures::join!(jobs, cks);
    }
    // NB: every way out releases the Lease (also a shutdown or a cache failure before the
    // controllers started), so a follower takes over at once instead of after its expiry.
    ready.store(false, Ordering::Relaxed);
    shutdown.cancel();
    let _ = holder.await;
    lease::release(&leases, &config.lease_name, &config.identity).await;
    synced.map(drop)
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use clap::Parser;

    /// A shutdown while the caches are still syncing (the controllers never started) still
    /// gives the Lease up. If this fails, a replica stopped early keeps the Lease until it
    /// expires and the follower waits that long before it leads.
    #[tokio::test]
    async fn a_shutdown_before_the_caches_sync_still_releases_the_lease() {
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::{Value, json};

        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let config = Config::try_parse_from([
            "lodger-operator",
            "--image=lodger:test",
            "--lease-namespace=lodger-system",
            "--identity=me",
        ])
        .unwrap();
        let shutdown = CancellationToken::new();
        let led = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let metrics = Arc::new(metrics::Metrics::default());
                let ready = Arc::new(AtomicBool::new(false));
                lead(&config, client, metrics, ready, &shutdown).await
            }
        });
        let lease_path =
            "/apis/coordination.k8s.io/v1/namespaces/lodger-system/leases/lodger-operator";
        let mut handle = std::pin::pin!(handle);
        let mut lease: Option<Value> = None;
        // Watches that never answer: the caches never sync.
        let mut pending = Vec::new();
        let released = loop {
            let (request, send) =
                tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
                    .await
                    .expect("the operator went quiet before releasing the Lease")
                    .expect("the operator dropped its client");
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let reply = |code: u16, body: &Value| {
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(body).unwrap()))
                    .unwrap()
            };
            match (method.as_str(), path.as_str()) {
                ("GET", p) if p == lease_path => match &lease {
                    Some(l) => send.send_response(reply(200, l)),
                    None => send.send_response(reply(
                        404,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404}),
                    )),
                },
                ("POST" | "PUT", p) if p.starts_with("/apis/coordination.k8s.io/v1/") => {
                    let mut body: Value = serde_json::from_slice(&bytes).unwrap();
                    body["metadata"]["resourceVersion"] = json!("1");
                    let holder = body["spec"]["holderIdentity"].as_str().map(str::to_owned);
                    send.send_response(reply(200, &body));
                    lease = Some(body);
                    if method == "PUT" && holder.is_none() {
                        break true;
                    }
                }
                ("GET", "/api/v1/nodes" | "/api/v1/pods") => {
                    // The operator holds the Lease and waits for its caches: stop it now.
                    shutdown.cancel();
                    pending.push(send);
                }
                other => panic!("unexpected request {other:?}"),
            }
        };
        assert!(released);
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), led)
            .await
            .expect("lead did not return after the shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(lease.unwrap()["spec"]["holderIdentity"], Value::Null);
        drop(pending);
    }

    /// A taken metrics port ends the operator at once with an error naming the address (before
    /// any API call). If this fails, an operator whose endpoints cannot listen would run on
    /// unprobed and unscraped until its liveness probe kills it, with no reason in its log.
    #[tokio::test]
    async fn a_taken_metrics_port_stops_the_operator_with_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let config = Config::try_parse_from([
            "lodger-operator",
            "--image=lodger:test",
            &format!("--metrics-addr={addr}"),
        ])
        .unwrap();
        let err = run(config).await.unwrap_err();
        assert!(
            matches!(
                err,
                RunError::Server(lodger_telemetry::HttpError::Bind { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("failed to listen on {addr}: ")),
            "{err}"
        );
    }
}
