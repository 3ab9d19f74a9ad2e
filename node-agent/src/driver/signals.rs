//! Signal delivery: pending JobSignals of jobs running on this node → the current pod's shim.
//!
//! Inputs are two watches: this node's Lodger workload pods (field selector
//! `spec.nodeName=<node>`, label `lodger.dev/role=workload`) and JobSignals (all namespaces: a
//! JobSignal names its job, not a node, so it cannot be narrowed by node on the server). On any
//! change, [`plan`] (pure) lists, per job whose current pod runs here, its pending signals in
//! `seq` order; they are handed to that pod's shim one by one (`signal {signo, seq}`), and each
//! handed one gets status Delivered (the shim's `delivered`, `queued` — it travels with a
//! checkpoint in progress — and `duplicate` — handed over before — all mean the shim has it)
//! and an Event. Signal numbers are handed over raw: the standard ones and the real-time ones
//! (SIGRTMIN..SIGRTMAX, 34..=64) alike. A signal the shim cannot take *now* stops that job's
//! sequence (order matters) until the next change or retry tick; one it will *never* take — a
//! number [`control::signal_refusal`] rejects (glibc's 32 and 33, which the API admits), or a
//! `badRequest` from the shim — fails, so it does not hold up the job's later signals. A job that
//! has ended fails its pending signals.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use lodger_api::{
    JobSignal, JobSignalStatus, LABEL_GENERATION, LABEL_JOB, LABEL_ROLE, MANAGER_NODE_AGENT,
    ROLE_WORKLOAD, SignalPhase, reason,
};
use lodger_shim::control::{self, ErrorKind, JobState, Op, Reply, SignalDisposition};
use serde_json::json;

use super::Context;
use crate::metrics::ResultLabel;

/// Errors of signal delivery.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Writing a JobSignal's status failed.
    #[error("failed to update the status of jobsignal {name}: {source}")]
    Status {
        /// The JobSignal.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The shim could not be reached or answered badly.
    #[error("failed to hand signal seq {seq} of job {job} to its shim: {message}")]
    Shim {
        /// The job.
        job: String,
        /// The signal's seq.
        seq: i64,
        /// What happened.
        message: String,
    },
}

impl SignalError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            SignalError::Status { .. } => "signal_status",
            SignalError::Shim { .. } => "signal_shim",
        }
    }
}

/// One pending signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSignal {
    /// The JobSignal's name.
    pub name: String,
    /// Signal number.
    pub signo: i32,
    /// Per-job sequence number.
    pub seq: i64,
}

/// The pending signals of one job whose current pod runs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Namespace of the job.
    pub namespace: String,
    /// The job.
    pub job: String,
    /// Its current pod.
    pub pod: String,
    /// The pod's UID (locates the shim socket).
    pub pod_uid: String,
    /// Pending signals, in `seq` order.
    pub signals: Vec<PendingSignal>,
}

fn generation(pod: &Pod) -> i64 {
    pod.labels()
        .get(LABEL_GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The current pod of each job on this node: a running, not-deleting workload pod on `node`,
/// the highest generation if there are several. Keyed by (namespace, job).
pub fn current_pods<'a>(pods: &'a [Arc<Pod>], node: &str) -> BTreeMap<(String, String), &'a Pod> {
    let mut out: BTreeMap<(String, String), &Pod> = BTreeMap::new();
    for pod in pods {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let workload = pod.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_WORKLOAD);
        let Some(job) = pod.labels().get(LABEL_JOB) else {
            continue;
        };
        if !(on_node && running && workload) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let key = (pod.namespace().unwrap_or_default(), job.clone());
        match out.get(&key) {
            Some(existing) if generation(existing) >= generation(pod) => {}
            _ => {
                out.insert(key, pod);
            }
        }
    }
    out
}

/// What to hand to which shim now. Pure. `handed` holds JobSignals already handed over whose
/// status change has not come back through the watch yet (so they are not sent twice).
pub fn plan(
    signals: &[Arc<JobSignal>],
    pods: &[Arc<Pod>],
    node: &str,
    handed: &HashSet<String>,
) -> Vec<Delivery> {
    let current = current_pods(pods, node);
    let mut pending: BTreeMap<(String, String), Vec<PendingSignal>> = BTreeMap::new();
    for sig in signals {
        let phase = sig.status.as_ref().and_then(|s| s.phase);
        if !matches!(phase, None | Some(SignalPhase::Pending)) {
            continue;
        }
        let key = (sig.namespace().unwrap_or_default(), sig.spec.job.clone());
        if !current.contains_key(&key) || handed.contains(&signal_key(sig)) {
            continue;
        }
        pending.entry(key).or_default().push(PendingSignal {
            name: sig.name_any(),
            signo: sig.spec.signal,
            seq: sig.spec.seq,
        });
    }
    pending
        .into_iter()
        .map(|((namespace, job), mut signals)| {
            signals.sort_by_key(|s| s.seq);
            let pod = current[&(namespace.clone(), job.clone())];
            Delivery {
                namespace,
                job,
                pod: pod.name_any(),
                pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                signals,
            }
        })
        .collect()
}

/// Key of a JobSignal in the `handed` set.
pub fn signal_key(sig: &JobSignal) -> String {
    format!("{}/{}", sig.namespace().unwrap_or_default(), sig.name_any())
}

async fn apply_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &JobSignalStatus,
) -> Result<(), SignalError> {
    let api: Api<JobSignal> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": "lodger.dev/v1alpha1",
        "kind": "JobSignal",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER_NODE_AGENT).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(|source| SignalError::Status {
        name: name.to_string(),
        source,
    })
}

/// Reference to a JobSignal, for Events.
fn signal_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(JobSignal::api_version(&()).into_owned()),
        kind: Some(JobSignal::kind(&()).into_owned()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        ..ObjectReference::default()
    }
}

async fn publish(ctx: &Context, namespace: &str, name: &str, type_: EventType, note: String) {
    let event = Event {
        type_,
        reason: reason::SIGNAL_DELIVERED.to_string(),
        note: Some(note),
        action: "DeliverSignal".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &signal_ref(namespace, name))
        .await
    {
        tracing::warn!(error = %e, "failed to publish event");
    }
}

/// Hands one job's pending signals to its shim in order; returns the keys of those handed
/// over (or failed for good). Stops at the first signal the shim cannot take now.
pub async fn deliver(ctx: &Context, delivery: &Delivery) -> Result<Vec<String>, SignalError> {
    let socket = ctx.socket_of(&delivery.pod_uid);
    let mut done = Vec::new();
    for sig in &delivery.signals {
        let seq = u64::try_from(sig.seq).unwrap_or(0);
        // NB: a number the shim will never take (glibc's 32/33: the API admits 1..=64) fails
        // here, without a call, so it does not hold up the job's later signals.
        if let Some(refusal) = control::signal_refusal(sig.signo) {
            let message = format!("signal {} is not sent to jobs: {refusal}", sig.signo);
            record(ctx, delivery, sig, SignalPhase::Failed, message, "failed").await?;
            done.push(format!("{}/{}", delivery.namespace, sig.name));
            continue;
        }
        let answer = control::call(
            &socket,
            Op::Signal {
                signo: sig.signo,
                seq,
            },
            ctx.shim_timeout,
        )
        .await;
        let shim_err = |message: String| SignalError::Shim {
            job: delivery.job.clone(),
            seq: sig.seq,
            message,
        };
        let (phase, message, label) = match answer {
            Ok(Reply::Signal(outcome)) => {
                let (msg, label) = match outcome.disposition {
                    SignalDisposition::Delivered => (
                        format!(
                            "signal {} delivered to the job in pod {}",
                            sig.signo, delivery.pod
                        ),
                        "delivered",
                    ),
                    SignalDisposition::Queued => (
                        format!(
                            "signal {} queued by the shim of pod {}: the job is being checkpointed and \
                             gets it once, after the restore or if the checkpoint leaves it here",
                            sig.signo, delivery.pod
                        ),
                        "queued",
                    ),
                    SignalDisposition::Duplicate => (
                        format!(
                            "seq {} was already handed to the job; nothing sent again",
                            sig.seq
                        ),
                        "duplicate",
                    ),
                };
                (SignalPhase::Delivered, msg, label)
            }
            Ok(Reply::Error(e)) if e.kind == ErrorKind::NotRunning => {
                match control::call(&socket, Op::Status, ctx.shim_timeout).await {
                    Ok(Reply::Status(s)) => match s.job {
                        JobState::Exited { code } => (
                            SignalPhase::Failed,
                            format!(
                                "the job had ended (exit code {code}) before signal {} arrived",
                                sig.signo
                            ),
                            "failed",
                        ),
                        // Starting, migrated away or being restored: another pod (or this one,
                        // later) takes it.
                        other => return finish_early(done, shim_err(format!("job is {other:?}"))),
                    },
                    _ => return finish_early(done, shim_err(e.message)),
                }
            }
            // A permanent refusal (e.g. a shim too old to know real-time signals): waiting
            // would hold up every later signal of the job for good.
            Ok(Reply::Error(e)) if e.kind == ErrorKind::BadRequest => (
                SignalPhase::Failed,
                format!(
                    "the shim of pod {} refused signal {}: {}",
                    delivery.pod, sig.signo, e.message
                ),
                "failed",
            ),
            Ok(Reply::Error(e)) => {
                return finish_early(done, shim_err(format!("{:?}: {}", e.kind, e.message)));
            }
            Ok(other) => {
                return finish_early(done, shim_err(format!("unexpected reply {other:?}")));
            }
            Err(e) => return finish_early(done, shim_err(e.to_string())),
        };
        record(ctx, delivery, sig, phase, message, label).await?;
        done.push(format!("{}/{}", delivery.namespace, sig.name));
    }
    Ok(done)
}

/// Writes a handled signal's status, counts it and publishes its Event.
async fn record(
    ctx: &Context,
    delivery: &Delivery,
    sig: &PendingSignal,
    phase: SignalPhase,
    message: String,
    label: &str,
) -> Result<(), SignalError> {
    let status = JobSignalStatus {
        phase: Some(phase),
        node: Some(ctx.node_name.clone()),
        delivered_at: (phase == SignalPhase::Delivered).then(|| Time(Timestamp::now())),
        message: Some(message.clone()),
    };
    apply_status(ctx, &delivery.namespace, &sig.name, &status).await?;
    ctx.metrics
        .signals
        .get_or_create(&ResultLabel {
            result: label.to_string(),
        })
        .inc();
    let type_ = if phase == SignalPhase::Delivered {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(ctx, &delivery.namespace, &sig.name, type_, message).await;
    Ok(())
}

/// Logs why a sequence stopped early and returns what was handed over before it.
fn finish_early(done: Vec<String>, err: SignalError) -> Result<Vec<String>, SignalError> {
    tracing::info!(error = %err, "signal delivery paused for this job; will retry");
    Ok(done)
}

/// The UIDs of this node's Lodger workload pods (for the job-load cgroups), updated by [`run`].
pub type WorkloadUids = Arc<Mutex<BTreeSet<String>>>;

/// Watches pods and JobSignals and delivers, until the watches end.
pub async fn run(ctx: Arc<Context>, uids: WorkloadUids) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let pod_config = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", ctx.node_name))
        .labels(&format!("{LABEL_ROLE}={ROLE_WORKLOAD}"));
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector(pod_writer, watcher(pods, pod_config))
        .default_backoff()
        .touched_objects()
        .map(|_| ());
    let signals: Api<JobSignal> = Api::all(ctx.client.clone());
    let (sig_store, sig_writer) = reflector::store();
    let sig_events = reflector(sig_writer, watcher(signals, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map(|_| ());
    let retry = futures::stream::unfold(
        tokio::time::interval(Duration::from_secs(5)),
        |mut t| async {
            t.tick().await;
            Some(((), t))
        },
    );
    let mut changes = std::pin::pin!(futures::stream::select(
        futures::stream::select(pod_events, sig_events),
        retry,
    ));
    let mut handed: HashSet<String> = HashSet::new();
    while changes.next().await.is_some() {
        let pods = pod_store.state();
        let sigs = sig_store.state();
        if let Ok(mut set) = uids.lock() {
            *set = current_pods(&pods, &ctx.node_name)
                .values()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
        }
        // Forget handed-over signals once the watch shows their new status (or they are gone).
        let pending_now: HashSet<String> = sigs
            .iter()
            .filter(|s| {
                matches!(
                    s.status.as_ref().and_then(|st| st.phase),
                    None | Some(SignalPhase::Pending)
                )
            })
            .map(|s| signal_key(s))
            .collect();
        handed.retain(|k| pending_now.contains(k));
        for delivery in plan(&sigs, &pods, &ctx.node_name, &handed) {
            match deliver(&ctx, &delivery).await {
                Ok(done) => handed.extend(done),
                Err(e) => {
                    ctx.metrics.error(e.category());
                    tracing::warn!(error = %e, category = e.category(), "signal delivery failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lodger_shim::control::{ControlError, SignalOutcome};
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{ApiServerVerifier, FakeShim, context, shim_status, timeout_after_1s};

    fn pod(name: &str, uid: &str, node: &str, job: &str, generation: i64, phase: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": "lab", "uid": uid,
                    "labels": {LABEL_JOB: job, LABEL_ROLE: ROLE_WORKLOAD, LABEL_GENERATION: generation.to_string()}
                },
                "spec": {"nodeName": node, "containers": [{"name": "job"}]},
                "status": {"phase": phase}
            }))
            .unwrap(),
        )
    }

    fn signal(job: &str, seq: i64, signo: i32, phase: Option<&str>) -> Arc<JobSignal> {
        let mut v = json!({
            "apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignal",
            "metadata": {"name": format!("{job}-sig-{seq}"), "namespace": "lab"},
            "spec": {"job": job, "signal": signo, "seq": seq}
        });
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    /// If this fails, signals go out of `seq` order, to an old generation's pod, to a pod on
    /// another node, twice (already delivered or just handed over), or to a pod that is not
    /// running.
    #[test]
    fn plan_orders_by_seq_and_targets_the_current_pod_here() {
        let pods = vec![
            pod("sim-1", "uid-old", "desk-7", "sim", 1, "Running"),
            pod("sim-2", "uid-new", "desk-7", "sim", 2, "Running"),
            pod("far-1", "uid-far", "desk-9", "far", 1, "Running"),
            pod("new-1", "uid-pending", "desk-7", "new", 1, "Pending"),
        ];
        let signals = vec![
            signal("sim", 3, 10, None),
            signal("sim", 1, 15, Some("Delivered")),
            signal("sim", 2, 12, Some("Pending")),
            signal("sim", 4, 10, None),
            signal("far", 1, 10, None),
            signal("new", 1, 10, None),
        ];
        let handed: HashSet<String> = ["lab/sim-sig-4".to_string()].into();
        let plan = plan(&signals, &pods, "desk-7", &handed);
        assert_eq!(
            plan,
            vec![Delivery {
                namespace: "lab".into(),
                job: "sim".into(),
                pod: "sim-2".into(),
                pod_uid: "uid-new".into(),
                signals: vec![
                    PendingSignal {
                        name: "sim-sig-2".into(),
                        signo: 12,
                        seq: 2
                    },
                    PendingSignal {
                        name: "sim-sig-3".into(),
                        signo: 10,
                        seq: 3
                    },
                ],
            }]
        );
    }

    fn echo(body: &Value) -> Value {
        let mut out = serde_json::to_value(signal("sim", 1, 10, None).as_ref()).unwrap();
        out["status"] = body["status"].clone();
        out
    }

    fn status_uri(name: &str) -> String {
        format!(
            "/apis/lodger.dev/v1alpha1/namespaces/lab/jobsignals/{name}/status?&force=true&fieldManager=lodger-node-agent"
        )
    }

    const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/lab/events?";

    /// If this fails, the shim's answers are not mapped to JobSignal status as the contract says:
    /// `delivered` and `duplicate` (idempotent re-delivery) are Delivered, a job that has ended
    /// fails the signal; each with an Event, in seq order over real socket connections.
    #[tokio::test]
    async fn delivered_duplicate_and_ended_job_map_to_status() {
        let kubelet = tempfile::tempdir().unwrap();
        let shim = FakeShim::start(kubelet.path(), "uid-new", |req| match req.op {
            Op::Signal { seq: 1, .. } => Some(Reply::Signal(SignalOutcome {
                seq: 1,
                disposition: SignalDisposition::Delivered,
            })),
            Op::Signal { seq: 2, .. } => Some(Reply::Signal(SignalOutcome {
                seq: 2,
                disposition: SignalDisposition::Duplicate,
            })),
            Op::Signal { .. } => Some(Reply::Error(ControlError {
                kind: ErrorKind::NotRunning,
                message: "the job has exited".into(),
            })),
            Op::Status => Some(Reply::Status(shim_status(JobState::Exited { code: 3 }, 2))),
            Op::Checkpoint(_) => None,
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            for (seq, phase, needle) in [
                (1, "Delivered", "delivered"),
                (2, "Delivered", "already handed"),
                (3, "Failed", "exit code 3"),
            ] {
                let body = v
                    .expect_fn("PATCH", &status_uri(&format!("sim-sig-{seq}")), echo)
                    .await;
                assert_eq!(body["status"]["phase"], phase, "seq {seq}");
                assert_eq!(body["status"]["node"], "desk-7");
                let msg = body["status"]["message"].as_str().unwrap();
                assert!(msg.contains(needle), "seq {seq}: {msg}");
                assert_eq!(
                    body["status"]["deliveredAt"].is_string(),
                    phase == "Delivered"
                );
                let event = v.expect("POST", EVENTS_URI, None, json!({})).await;
                assert_eq!(event["reason"], "SignalDelivered");
                assert_eq!(event["regarding"]["name"], format!("sim-sig-{seq}"));
            }
        });
        let ctx = context(client, kubelet.path());
        let delivery = Delivery {
            namespace: "lab".into(),
            job: "sim".into(),
            pod: "sim-2".into(),
            pod_uid: "uid-new".into(),
            signals: (1..=3)
                .map(|seq| PendingSignal {
                    name: format!("sim-sig-{seq}"),
                    signo: 10,
                    seq,
                })
                .collect(),
        };
        let done = deliver(&ctx, &delivery).await.unwrap();
        assert_eq!(
            done,
            vec!["lab/sim-sig-1", "lab/sim-sig-2", "lab/sim-sig-3"]
        );
        timeout_after_1s(server).await;
        let seqs: Vec<_> = shim
            .requests()
            .into_iter()
            .filter_map(|r| match r.op {
                Op::Signal { signo: 10, seq } => Some(seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    /// If this fails, a signal the shim cannot take now (job being restored elsewhere) would be
    /// marked, or the later seqs of the same job would overtake it.
    #[tokio::test]
    async fn a_signal_the_shim_cannot_take_stops_the_sequence() {
        let kubelet = tempfile::tempdir().unwrap();
        let shim = FakeShim::start(kubelet.path(), "uid-new", |req| match req.op {
            Op::Signal { .. } => Some(Reply::Error(ControlError {
                kind: ErrorKind::NotRunning,
                message: "migrated".into(),
            })),
            Op::Status => Some(Reply::Status(shim_status(JobState::Migrated, 0))),
            Op::Checkpoint(_) => None,
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect_silence(Duration::from_millis(200)).await;
        });
        let ctx = context(client, kubelet.path());
        let delivery = Delivery {
            namespace: "lab".into(),
            job: "sim".into(),
            pod: "sim-2".into(),
            pod_uid: "uid-new".into(),
            signals: (1..=2)
                .map(|seq| PendingSignal {
                    name: format!("sim-sig-{seq}"),
                    signo: 10,
                    seq,
                })
                .collect(),
        };
        assert!(deliver(&ctx, &delivery).await.unwrap().is_empty());
        timeout_after_1s(server).await;
        assert_eq!(
            shim.requests().len(),
            2,
            "one signal attempt and one status query"
        );
    }

    /// If this fails, real-time signals (SIGRTMIN+3 = 37, SIGRTMAX = 64) are not handed to the
    /// shim with their number, or a number the shim never takes (glibc's 32, which the API
    /// admits; or one a shim refuses as a bad request) holds up the job's later signals forever
    /// instead of failing on its own with a reason.
    #[tokio::test]
    async fn real_time_signals_are_handed_over_and_refused_numbers_fail_alone() {
        let kubelet = tempfile::tempdir().unwrap();
        let shim = FakeShim::start(kubelet.path(), "uid-new", |req| match req.op {
            Op::Signal { signo: 63, .. } => Some(Reply::Error(ControlError {
                kind: ErrorKind::BadRequest,
                message: "63 is not a signal number".into(),
            })),
            Op::Signal { seq, .. } => Some(Reply::Signal(SignalOutcome {
                seq,
                disposition: SignalDisposition::Delivered,
            })),
            Op::Status | Op::Checkpoint(_) => None,
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            for (seq, phase, needle) in [
                (1, "Delivered", "signal 37 delivered"),
                (2, "Failed", "reserved by the C library"),
                (3, "Failed", "refused signal 63: 63 is not a signal number"),
                (4, "Delivered", "signal 64 delivered"),
            ] {
                let body = v
                    .expect_fn("PATCH", &status_uri(&format!("sim-sig-{seq}")), echo)
                    .await;
                assert_eq!(body["status"]["phase"], phase, "seq {seq}");
                let msg = body["status"]["message"].as_str().unwrap();
                assert!(msg.contains(needle), "seq {seq}: {msg}");
                let event = v.expect("POST", EVENTS_URI, None, json!({})).await;
                let type_ = if phase == "Delivered" {
                    "Normal"
                } else {
                    "Warning"
                };
                assert_eq!(event["type"], type_, "seq {seq}");
            }
        });
        let ctx = context(client, kubelet.path());
        let delivery = Delivery {
            namespace: "lab".into(),
            job: "sim".into(),
            pod: "sim-2".into(),
            pod_uid: "uid-new".into(),
            signals: [(1, 37), (2, 32), (3, 63), (4, 64)]
                .into_iter()
                .map(|(seq, signo)| PendingSignal {
                    name: format!("sim-sig-{seq}"),
                    signo,
                    seq,
                })
                .collect(),
        };
        let done = deliver(&ctx, &delivery).await.unwrap();
        assert_eq!(
            done,
            [
                "lab/sim-sig-1",
                "lab/sim-sig-2",
                "lab/sim-sig-3",
                "lab/sim-sig-4"
            ]
        );
        timeout_after_1s(server).await;
        let handed: Vec<_> = shim
            .requests()
            .into_iter()
            .filter_map(|r| match r.op {
                Op::Signal { signo, seq } => Some((seq, signo)),
                _ => None,
            })
            .collect();
        assert_eq!(
            handed,
            [(1, 37), (3, 63), (4, 64)],
            "32 never reaches the shim"
        );
    }
}
