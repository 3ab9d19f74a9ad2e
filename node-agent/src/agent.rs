//! Wiring: the idle loop (sources → policy → Node), the checkpoint controller, signal delivery
//! and the HTTP endpoints, run side by side until one of them fails for good.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use serde_json::json;

use crate::config::{Args, LogindMode};
use crate::driver::{self, Context};
use crate::http::{self, HttpError};
use crate::idle::evdev::{self, EvdevConfig};
use crate::idle::load::{self, JobCgroups, LoadSampler};
use crate::idle::logind::{self, LogindView};
use crate::idle::policy::{ActiveCause, NodeState, Observation, Policy};
use crate::idle::{ActivityMarks, Clock, Source, tty};
use crate::metrics::{Metrics, SourceLabel};
use crate::report::{NodeReport, NodeReporter, desired_apply};

/// Fatal errors of the agent (written to the termination log by `main`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No node name: the downward API env `NODE_NAME` is missing.
    #[error(
        "failed to learn the node name: set NODE_NAME from the downward API (spec.nodeName) or pass --node-name"
    )]
    NoNodeName,
    /// No Kubernetes client could be built.
    #[error("failed to create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The HTTP endpoint failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A loop that must run forever ended.
    #[error("the {0} loop ended unexpectedly")]
    LoopEnded(&'static str),
}

impl AgentError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            AgentError::NoNodeName => "no_node_name",
            AgentError::Client(_) => "client",
            AgentError::Http(e) => e.category(),
            AgentError::LoopEnded(_) => "loop_ended",
        }
    }
}

/// Where the idle loop's decisions go.
#[derive(Debug)]
pub enum Sink {
    /// The Node, through the API server.
    Node(Box<NodeReporter>),
    /// Stdout, as JSON lines (`--dry-run`).
    Stdout {
        /// The node name used in the would-be patch.
        node_name: String,
    },
}

/// The idle loop's settings, from [`Args`].
#[derive(Clone, Debug)]
pub struct IdleSettings {
    /// Policy thresholds.
    pub thresholds: crate::idle::policy::Thresholds,
    /// evdev devices.
    pub evdev: EvdevConfig,
    /// Host /dev (terminals).
    pub dev_dir: PathBuf,
    /// Host /proc/loadavg.
    pub loadavg: PathBuf,
    /// Host cgroup root.
    pub cgroup_root: PathBuf,
    /// Glob overriding the pod cgroup search.
    pub job_cgroup_glob: Option<String>,
    /// logind on or off.
    pub logind: LogindMode,
    /// Sampling period.
    pub poll: Duration,
    /// Re-read period of the Node.
    pub resync: Duration,
}

impl IdleSettings {
    /// Settings from the command line.
    pub fn from_args(args: &Args) -> Self {
        Self {
            thresholds: args.thresholds(),
            evdev: EvdevConfig {
                input_dir: args.input_dir.clone(),
                sys_input_dir: args.sys_input_dir.clone(),
                rescan: Duration::from_secs(10),
                coalesce: Duration::from_millis(500),
            },
            dev_dir: args.dev_dir.clone(),
            loadavg: args.proc_root.join("loadavg"),
            cgroup_root: args.cgroup_root.clone(),
            job_cgroup_glob: args.job_cgroup_glob.clone(),
            logind: args.logind,
            poll: Duration::from_secs(args.poll_seconds.max(1)),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
        }
    }
}

/// Says a source's trouble once, and again only after it recovered and failed anew.
#[derive(Debug, Default)]
struct Once(bool);

impl Once {
    fn failed(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if !self.0 {
            tracing::info!(error = %err, "{what}");
            self.0 = true;
        }
    }
    fn ok(&mut self) {
        self.0 = false;
    }
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Unknown => "unknown",
        NodeState::Active(ActiveCause::Input) => "active-input",
        NodeState::Active(ActiveCause::Load) => "active-load",
        NodeState::Active(ActiveCause::NotQuietYet) => "active",
        NodeState::Idle { .. } => "idle",
    }
}

/// Samples every source, feeds the policy and reports state changes, forever.
pub async fn idle_loop(
    settings: IdleSettings,
    sink: Sink,
    metrics: Arc<Metrics>,
    workload_uids: driver::signals::WorkloadUids,
) {
    let clock = Clock::new();
    let marks = Arc::new(ActivityMarks::default());
    let evdev_mark = Arc::new(crate::idle::ActivityMark::new(marks.wake.clone()));
    tokio::spawn(evdev::watch_devices(
        settings.evdev.clone(),
        clock,
        evdev_mark.clone(),
    ));

    let mut policy = Policy::new(settings.thresholds, clock.now());
    let mut sampler = LoadSampler::new(settings.loadavg.clone());
    let mut logind_conn: Option<zbus::Connection> = None;
    let mut logind_next_try = Duration::ZERO;
    let (mut tty_note, mut load_note, mut logind_note, mut report_note) = (
        Once::default(),
        Once::default(),
        Once::default(),
        Once::default(),
    );
    let mut last_reported: Option<NodeState> = None;
    let mut last_write = Duration::ZERO;
    // After a failed write (API server down, a policy refusing it): wait before the next try,
    // doubling up to a minute, so a broken write does not become a request every sample.
    let (mut retry_at, mut backoff) = (Duration::ZERO, settings.poll);
    let mut ticker = tokio::time::interval(settings.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = marks.wake.notified() => {}
        }
        let now = clock.now();
        let wall = SystemTime::now();

        // evdev: its own task fills its mark.
        if let Some(at) = evdev_mark.last() {
            marks.evdev.record(at);
        }
        // Terminals.
        match tty::newest_terminal_activity(&settings.dev_dir) {
            Ok(Some(t)) => {
                tty_note.ok();
                marks.terminal.record(Clock::monotonic_of(now, wall, t));
            }
            Ok(None) => tty_note.ok(),
            Err(e) => tty_note.failed("no terminals to watch; going on without them", &e),
        }
        // logind.
        if settings.logind == LogindMode::Auto && now >= logind_next_try {
            if logind_conn.is_none() {
                match logind::connect_system().await {
                    Ok(c) => logind_conn = Some(c),
                    Err(e) => {
                        logind_note
                            .failed("no system D-Bus: going on without logind's idle hint", &e);
                        logind_next_try = now + Duration::from_secs(300);
                    }
                }
            }
            if let Some(conn) = &logind_conn {
                match logind::read_hint(conn).await {
                    Ok(hint) => {
                        logind_note.ok();
                        match logind::interpret(hint) {
                            LogindView::ActiveNow => marks.logind.record(now),
                            LogindView::IdleSince(t) => {
                                marks.logind.record(Clock::monotonic_of(now, wall, t));
                            }
                            LogindView::NoInformation => {}
                        }
                    }
                    Err(e) => {
                        logind_note
                            .failed("logind did not answer: going on without its idle hint", &e);
                        logind_conn = None;
                        logind_next_try = now + Duration::from_secs(300);
                    }
                }
            }
        }
        // Load.
        let cgroups = match &settings.job_cgroup_glob {
            Some(g) => JobCgroups::Glob(g.clone()),
            None => JobCgroups::Pods {
                root: settings.cgroup_root.clone(),
                uids: workload_uids.lock().map(|u| u.clone()).unwrap_or_default(),
            },
        };
        let dirs = load::resolve(&cgroups).unwrap_or_else(|e| {
            metrics.error(e.category());
            Vec::new()
        });
        let non_job = match sampler.sample(now, &dirs) {
            Ok(r) => {
                load_note.ok();
                metrics.load_average.set(r.loadavg);
                if let Some(j) = r.job_load {
                    metrics.job_load.set(j);
                }
                if let Some(n) = r.non_job() {
                    metrics.non_job_load.set(n);
                }
                r.non_job()
            }
            Err(e) => {
                metrics.error(e.category());
                load_note.failed(
                    "cannot read the load average; the node is never declared idle",
                    &e,
                );
                None
            }
        };
        for source in Source::ALL {
            if let Some(at) = marks.get(source).last() {
                metrics
                    .seconds_since_input
                    .get_or_create(&SourceLabel {
                        source: source.as_str().to_string(),
                    })
                    .set(now.saturating_sub(at).as_secs_f64());
            }
        }

        let state = policy.observe(Observation {
            now,
            last_input: marks.newest(),
            non_job_load: non_job,
        });
        metrics.idle.set(match state {
            NodeState::Unknown => -1,
            NodeState::Active(_) => 0,
            NodeState::Idle { .. } => 1,
        });
        if state == NodeState::Unknown {
            continue;
        }
        let changed = last_reported.is_none_or(|prev| prev.is_idle() != state.is_idle());
        if (!changed && now.saturating_sub(last_write) < settings.resync) || now < retry_at {
            continue;
        }
        let idle_since = match state {
            NodeState::Idle { since } => {
                let back = now.saturating_sub(since);
                Timestamp::try_from(wall - back).unwrap_or_else(|_| Timestamp::now())
            }
            _ => Timestamp::now(),
        };
        let report = NodeReport {
            idle: state.is_idle(),
            idle_since,
        };
        if changed {
            tracing::info!(state = state_name(state), non_job_load = ?non_job, "node state changed");
        }
        match &sink {
            Sink::Node(reporter) => match reporter.report(&report).await {
                Ok(outcome) => {
                    report_note.ok();
                    backoff = settings.poll;
                    tracing::debug!(?outcome, "reported");
                    last_reported = Some(state);
                    last_write = now;
                }
                Err(e) => {
                    metrics.error(e.category());
                    report_note.failed("failed to report the node state; retrying", &e);
                    retry_at = now + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            },
            Sink::Stdout { node_name } => {
                if changed {
                    let node = k8s_openapi::api::core::v1::Node {
                        metadata: kube::api::ObjectMeta {
                            name: Some(node_name.clone()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let line = json!({
                        "time": Timestamp::now().to_string(),
                        "state": state_name(state),
                        "nonJobLoad": non_job,
                        "wouldApply": desired_apply(&node, &report),
                    });
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                }
                last_reported = Some(state);
                last_write = now;
            }
        }
    }
}

/// Runs the agent until a fatal error (or `--exit-after-seconds`).
pub async fn run(args: Args) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let endpoints = http::endpoints(metrics.clone(), ready.clone());
    let workload_uids: driver::signals::WorkloadUids = Arc::new(Mutex::new(BTreeSet::new()));
    let settings = IdleSettings::from_args(&args);
    let exit_after = async {
        match args.exit_after_seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };

    if args.dry_run {
        let node_name = args
            .node_name
            .clone()
            .unwrap_or_else(|| "dry-run".to_string());
        tracing::info!(node = %node_name, "dry run: idle detection only, no API server");
        ready.store(true, Ordering::Relaxed);
        let idle = idle_loop(settings, Sink::Stdout { node_name }, metrics, workload_uids);
        tokio::select! {
            r = lodger_telemetry::serve(args.metrics_addr, endpoints, std::future::pending()) => return r.map_err(AgentError::Http).and(Err(AgentError::LoopEnded("http"))),
            () = idle => return Err(AgentError::LoopEnded("idle")),
            () = exit_after => return Ok(()),
        }
    }

    let node_name = args.node_name.clone().ok_or(AgentError::NoNodeName)?;
    let client = kube::Client::try_default()
        .await
        .map_err(AgentError::Client)?;
    let mut ctx = Context::new(
        client.clone(),
        node_name.clone(),
        args.kubelet_root.clone(),
        args.checkpoint_root.clone(),
        metrics.clone(),
    );
    ctx.deadline_grace = Duration::from_secs(args.deadline_grace_seconds);
    let ctx = Arc::new(ctx);
    tracing::info!(node = %node_name, detection = args.detection_on(), "node agent starting");

    let idle = async {
        if args.detection_on() {
            let sink = Sink::Node(Box::new(NodeReporter::new(
                client.clone(),
                node_name.clone(),
            )));
            idle_loop(settings, sink, metrics.clone(), workload_uids.clone()).await;
        } else {
            tracing::info!(
                "idle detection off: the idle label, annotation and taint are left to others"
            );
            std::future::pending::<()>().await;
        }
    };
    ready.store(true, Ordering::Relaxed);
    tokio::select! {
        r = lodger_telemetry::serve(args.metrics_addr, endpoints, std::future::pending()) => r.map_err(AgentError::Http).and(Err(AgentError::LoopEnded("http"))),
        () = idle => Err(AgentError::LoopEnded("idle")),
        () = driver::checkpoint::run(ctx.clone()) => Err(AgentError::LoopEnded("checkpoint")),
        () = driver::signals::run(ctx.clone(), workload_uids.clone()) => Err(AgentError::LoopEnded("signal")),
        () = exit_after => Ok(()),
    }
}
