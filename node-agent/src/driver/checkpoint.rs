//! Checkpoint driver: Checkpoints whose `spec.node` is this node → the pod's shim → status.
//!
//! Steps of one reconcile (fetch → validate → act → report):
//! 1. Skip Checkpoints that are Completed or Failed (idempotent: a second run changes nothing).
//! 2. Resolve the pod (`spec.pod`, same namespace): it must exist and run on this node; its UID
//!    locates the shim socket under the kubelet's pods directory.
//! 3. Status `InProgress` (with `startedAt`, kept across agent restarts: the deadline counts
//!    from it).
//! 4. Ask the shim to dump into `<namespace>/<job>/<seq>` on the volume, passing the remaining
//!    deadline (`deadline_ms`); wait at most that plus a grace period. The shim abandons a dump
//!    at its deadline and resumes the job (CRIU thaws it), so a timed-out dump ends with the job
//!    running here again; after a client-side timeout the agent asks the shim for its state and
//!    records it in the message.
//! 5. Status `Completed` (path, strategy, bytes, freeze and total time, stoppedAt) or `Failed`
//!    (message), an Event, and metrics.
//!
//! After an agent restart mid-dump the request is sent again: a shim still dumping answers
//! Busy (requeue), a shim whose job already left answers NotRunning and the image's manifest on
//! the volume tells whether the earlier dump completed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use lodger_api::{
    Checkpoint, CheckpointPhase, CheckpointStatus, MANAGER_NODE_AGENT, MANIFEST_FILE,
    MigratableJob, MigrationStrategy, reason,
};
use lodger_shim::control::{
    self, CheckpointOutcome, CheckpointRequest, ClientError, ErrorKind, JobIdentity, JobState, Op,
    Reply, Strategy,
};
use serde_json::json;

use super::Context;
use crate::metrics::ResultLabel;

/// Errors of the checkpoint driver (all transient: the reconcile is retried).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading the pod or job failed.
    #[error("failed to read {what}: {source}")]
    Get {
        /// What was being read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the Checkpoint's status failed.
    #[error("failed to update the status of checkpoint {name}: {source}")]
    Status {
        /// The Checkpoint.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl CheckpointError {
    /// Stable category for metrics and Warning Events.
    pub fn category(&self) -> &'static str {
        match self {
            CheckpointError::Get { .. } => "checkpoint_get",
            CheckpointError::Status { .. } => "checkpoint_status",
        }
    }
}

/// The shim's spelling of a strategy.
pub fn shim_strategy(s: MigrationStrategy) -> Strategy {
    match s {
        MigrationStrategy::StopAndCopy => Strategy::StopAndCopy,
        MigrationStrategy::LazyRestore => Strategy::LazyRestore,
        MigrationStrategy::PostCopy => Strategy::PostCopy,
        MigrationStrategy::PreCopy => Strategy::PreCopy,
    }
}

/// The API's spelling of a strategy.
pub fn api_strategy(s: Strategy) -> MigrationStrategy {
    match s {
        Strategy::StopAndCopy => MigrationStrategy::StopAndCopy,
        Strategy::LazyRestore => MigrationStrategy::LazyRestore,
        Strategy::PostCopy => MigrationStrategy::PostCopy,
        Strategy::PreCopy => MigrationStrategy::PreCopy,
    }
}

/// Image directory of a Checkpoint, relative to the volume root: `<namespace>/<job>/<seq>`.
pub fn image_path(ckpt: &Checkpoint) -> PathBuf {
    PathBuf::from(ckpt.namespace().unwrap_or_default())
        .join(&ckpt.spec.job)
        .join(ckpt.spec.seq.to_string())
}

/// The request for the shim. Pure.
pub fn shim_request(ckpt: &Checkpoint, job_uid: &str, remaining: Duration) -> CheckpointRequest {
    CheckpointRequest {
        path: image_path(ckpt),
        strategy: shim_strategy(ckpt.spec.strategy),
        leave_running: ckpt.spec.leave_running,
        job: JobIdentity {
            namespace: ckpt.namespace().unwrap_or_default(),
            name: ckpt.spec.job.clone(),
            uid: job_uid.to_string(),
        },
        seq: u64::try_from(ckpt.spec.seq).unwrap_or(0),
        deadline_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The Completed status for a shim's outcome. Pure.
pub fn completed_status(
    outcome: &CheckpointOutcome,
    started_at: Timestamp,
    now: Timestamp,
    node: &str,
) -> CheckpointStatus {
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let message = match &outcome.fallback_reason {
        Some(why) => format!(
            "checkpointed on {node} with {} instead of the requested strategy: {why}",
            api_strategy(outcome.strategy)
        ),
        None => format!("checkpointed on {node}"),
    };
    CheckpointStatus {
        phase: Some(CheckpointPhase::Completed),
        path: Some(outcome.path.to_string_lossy().into_owned()),
        strategy: Some(api_strategy(outcome.strategy)),
        image_bytes: Some(as_i64(outcome.image_bytes)),
        freeze_millis: Some(as_i64(outcome.freeze_ms)),
        duration_millis: Some(as_i64(outcome.duration_ms)),
        stopped_at: outcome
            .stopped_at_unix_ms
            .and_then(|ms| Timestamp::from_millisecond(as_i64(ms)).ok())
            .map(Time),
        started_at: Some(Time(started_at)),
        completed_at: Some(Time(now)),
        message: Some(message),
    }
}

/// The Failed status. Pure.
pub fn failed_status(
    started_at: Option<Timestamp>,
    now: Timestamp,
    message: String,
) -> CheckpointStatus {
    CheckpointStatus {
        phase: Some(CheckpointPhase::Failed),
        started_at: started_at.map(Time),
        completed_at: Some(Time(now)),
        message: Some(message),
        ..CheckpointStatus::default()
    }
}

/// Total size of the files in `dir` (an image directory), if it holds a manifest.
fn completed_image_bytes(dir: &Path) -> Option<u64> {
    if !dir.join(MANIFEST_FILE).is_file() {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
    )
}

async fn apply_status(
    ctx: &Context,
    ckpt: &Checkpoint,
    status: &CheckpointStatus,
) -> Result<(), CheckpointError> {
    let name = ckpt.name_any();
    let api: Api<Checkpoint> =
        Api::namespaced(ctx.client.clone(), &ckpt.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "lodger.dev/v1alpha1",
        "kind": "Checkpoint",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER_NODE_AGENT).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(|source| CheckpointError::Status { name, source })
}

async fn publish(ctx: &Context, ckpt: &Checkpoint, type_: EventType, why: &str, note: String) {
    let event = Event {
        type_,
        reason: why.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Checkpoint".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ckpt.object_ref(&())).await {
        tracing::warn!(error = %e, "failed to publish event");
    }
}

/// Records the terminal status, an Event and the metrics.
async fn finish(
    ctx: &Context,
    ckpt: &Checkpoint,
    status: CheckpointStatus,
    took: Option<Duration>,
) -> Result<Action, CheckpointError> {
    apply_status(ctx, ckpt, &status).await?;
    if let Some(uid) = &ckpt.metadata.uid
        && let Ok(mut finished) = ctx.finished.lock()
    {
        finished.insert(uid.clone());
    }
    let completed = status.phase == Some(CheckpointPhase::Completed);
    let note = status.message.clone().unwrap_or_default();
    let (label, type_, why) = if completed {
        ("completed", EventType::Normal, reason::CHECKPOINTED)
    } else {
        ("failed", EventType::Warning, reason::CHECKPOINT_FAILED)
    };
    ctx.metrics
        .checkpoints
        .get_or_create(&ResultLabel {
            result: label.to_string(),
        })
        .inc();
    if let Some(took) = took {
        ctx.metrics.checkpoint_duration.observe(took.as_secs_f64());
    }
    tracing::info!(checkpoint = %ckpt.name_any(), result = label, %note, "checkpoint finished");
    publish(ctx, ckpt, type_, why, note).await;
    Ok(Action::await_change())
}

/// The job's UID: from the Checkpoint's owner reference to its MigratableJob, else the job.
async fn job_uid(ctx: &Context, ckpt: &Checkpoint) -> Result<Option<String>, CheckpointError> {
    let from_owner = ckpt
        .owner_references()
        .iter()
        .find(|o| o.kind == "MigratableJob" && o.name == ckpt.spec.job)
        .map(|o| o.uid.clone());
    if from_owner.is_some() {
        return Ok(from_owner);
    }
    let jobs: Api<MigratableJob> =
        Api::namespaced(ctx.client.clone(), &ckpt.namespace().unwrap_or_default());
    let job = jobs
        .get_opt(&ckpt.spec.job)
        .await
        .map_err(|source| CheckpointError::Get {
            what: format!("migratablejob {}", ckpt.spec.job),
            source,
        })?;
    Ok(job.and_then(|j| j.metadata.uid))
}

/// One reconcile of one Checkpoint (see the module docs).
#[tracing::instrument(skip_all, fields(checkpoint = %ckpt.name_any(), namespace = ?ckpt.namespace()))]
pub async fn reconcile(
    ckpt: Arc<Checkpoint>,
    ctx: Arc<Context>,
) -> Result<Action, CheckpointError> {
    let status = ckpt.status.clone().unwrap_or_default();
    let terminal = matches!(
        status.phase,
        Some(CheckpointPhase::Completed | CheckpointPhase::Failed)
    );
    if let Some(uid) = &ckpt.metadata.uid
        && let Ok(mut finished) = ctx.finished.lock()
    {
        // NB: a reconcile can run on a cached object older than our own final status write
        // (the watch has not shown it yet); never act twice on a Checkpoint we finished.
        if terminal {
            finished.remove(uid);
        } else if finished.contains(uid) {
            return Ok(Action::await_change());
        }
    }
    if terminal || ckpt.spec.node != ctx.node_name {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let started_at = status.started_at.as_ref().map_or(now, |t| t.0);
    let deadline =
        Duration::from_secs(u64::try_from(ckpt.spec.deadline_seconds.max(1)).unwrap_or(1));
    let elapsed = Duration::try_from(now.duration_since(started_at)).unwrap_or(Duration::ZERO);
    let resumed = status.phase == Some(CheckpointPhase::InProgress);
    let namespace = ckpt.namespace().unwrap_or_default();

    // 2. The pod, on this node.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .get_opt(&ckpt.spec.pod)
        .await
        .map_err(|source| CheckpointError::Get {
            what: format!("pod {}", ckpt.spec.pod),
            source,
        })?;
    let Some(pod) = pod else {
        let msg = format!("pod {} not found; nothing was checkpointed", ckpt.spec.pod);
        return finish(
            &ctx,
            &ckpt,
            failed_status(status.started_at.map(|t| t.0), now, msg),
            None,
        )
        .await;
    };
    let pod_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if pod_node.as_deref() != Some(ctx.node_name.as_str()) {
        let msg = format!(
            "pod {} runs on {}, not on {}; nothing was checkpointed",
            ckpt.spec.pod,
            pod_node.as_deref().unwrap_or("no node"),
            ctx.node_name
        );
        return finish(
            &ctx,
            &ckpt,
            failed_status(status.started_at.map(|t| t.0), now, msg),
            None,
        )
        .await;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let socket = ctx.socket_of(&uid);
    let Some(job_uid) = job_uid(&ctx, &ckpt).await? else {
        let msg = format!(
            "migratablejob {} not found; nothing was checkpointed",
            ckpt.spec.job
        );
        return finish(
            &ctx,
            &ckpt,
            failed_status(status.started_at.map(|t| t.0), now, msg),
            None,
        )
        .await;
    };

    // 3. InProgress.
    if !resumed {
        let progress = CheckpointStatus {
            phase: Some(CheckpointPhase::InProgress),
            started_at: Some(Time(started_at)),
            message: Some(format!(
                "asking the shim of pod {} on {} to dump ({})",
                ckpt.spec.pod, ctx.node_name, ckpt.spec.strategy
            )),
            ..CheckpointStatus::default()
        };
        apply_status(&ctx, &ckpt, &progress).await?;
    }
    let Some(remaining) = deadline.checked_sub(elapsed).filter(|r| !r.is_zero()) else {
        // Only reachable after an agent restart past the deadline: did the dump finish?
        let dir = ctx.checkpoint_root.join(image_path(&ckpt));
        let status = match completed_image_bytes(&dir) {
            Some(bytes) => completed_from_volume(&ckpt, started_at, now, bytes),
            None => failed_status(
                Some(started_at),
                now,
                format!(
                    "deadline of {}s passed (the agent restarted mid-checkpoint)",
                    deadline.as_secs()
                ),
            ),
        };
        return finish(&ctx, &ckpt, status, None).await;
    };

    // 4. Ask the shim.
    let request = shim_request(&ckpt, &job_uid, remaining);
    let client_timeout = remaining + ctx.deadline_grace;
    let began = Instant::now();
    let answer = control::call(&socket, Op::Checkpoint(request), client_timeout).await;
    let took = began.elapsed();
    let now = Timestamp::now();
    let status = match answer {
        Ok(Reply::Checkpointed(outcome)) => {
            completed_status(&outcome, started_at, now, &ctx.node_name)
        }
        Ok(Reply::Error(e)) if e.kind == ErrorKind::Busy => {
            tracing::info!(message = %e.message, "shim busy with another checkpoint; retrying");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        Ok(Reply::Error(e)) if e.kind == ErrorKind::NotRunning && resumed => {
            let dir = ctx.checkpoint_root.join(image_path(&ckpt));
            match completed_image_bytes(&dir) {
                Some(bytes) => completed_from_volume(&ckpt, started_at, now, bytes),
                None => failed_status(
                    Some(started_at),
                    now,
                    format!("the job is not running: {}", e.message),
                ),
            }
        }
        Ok(Reply::Error(e)) => failed_status(
            Some(started_at),
            now,
            format!("the shim refused or failed ({:?}): {}", e.kind, e.message),
        ),
        Ok(other) => failed_status(
            Some(started_at),
            now,
            format!("the shim answered a checkpoint request with {other:?}"),
        ),
        Err(ClientError::Connect { source, .. }) if took + Duration::from_secs(1) < remaining => {
            tracing::info!(error = %source, socket = %socket.display(), "shim not reachable yet; retrying");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Err(ClientError::Timeout(waited)) => {
            let state = job_state(&ctx, &socket).await;
            failed_status(
                Some(started_at),
                now,
                format!(
                    "the shim did not answer within {}s (deadline {}s + grace); {state}",
                    waited.as_secs(),
                    deadline.as_secs()
                ),
            )
        }
        Err(e) => failed_status(
            Some(started_at),
            now,
            format!("failed to reach the shim: {e}"),
        ),
    };
    finish(&ctx, &ckpt, status, Some(took)).await
}

fn completed_from_volume(
    ckpt: &Checkpoint,
    started_at: Timestamp,
    now: Timestamp,
    bytes: u64,
) -> CheckpointStatus {
    CheckpointStatus {
        phase: Some(CheckpointPhase::Completed),
        path: Some(image_path(ckpt).to_string_lossy().into_owned()),
        image_bytes: Some(i64::try_from(bytes).unwrap_or(i64::MAX)),
        started_at: Some(Time(started_at)),
        completed_at: Some(Time(now)),
        message: Some(
            "completed while the agent restarted; found the image and its manifest on the volume \
             (freeze time and strategy unknown)"
                .to_string(),
        ),
        ..CheckpointStatus::default()
    }
}

/// The job's state as the shim reports it, for a message.
async fn job_state(ctx: &Context, socket: &Path) -> String {
    match control::call(socket, Op::Status, ctx.shim_timeout).await {
        Ok(Reply::Status(s)) => match s.job {
            JobState::Running => "the shim reports the job running again on this node".to_string(),
            other => format!("the shim reports the job as {other:?}"),
        },
        Ok(other) => format!("the shim answered a status request with {other:?}"),
        Err(e) => format!("the shim's state is unknown ({e})"),
    }
}

/// Requeue policy for transient errors.
pub fn error_policy(_ckpt: Arc<Checkpoint>, err: &CheckpointError, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(err.category());
    tracing::warn!(error = %err, category = err.category(), "checkpoint reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the checkpoint controller for this node until the stream ends.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<Checkpoint> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.node={}", ctx.node_name));
    Controller::new(api, config)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "checkpoint controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use lodger_shim::control::ControlError;
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{
        ApiServerVerifier, FakeShim, context, shim_status, timeout_after, timeout_after_1s,
    };

    const STATUS_URI: &str = "/apis/lodger.dev/v1alpha1/namespaces/lab/checkpoints/sim-ckpt-3/status?&force=true&fieldManager=lodger-node-agent";
    const POD_URI: &str = "/api/v1/namespaces/lab/pods/sim-2";
    const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/lab/events?";

    fn checkpoint(deadline_seconds: i32) -> Checkpoint {
        serde_json::from_value(json!({
            "apiVersion": "lodger.dev/v1alpha1",
            "kind": "Checkpoint",
            "metadata": {
                "name": "sim-ckpt-3", "namespace": "lab", "uid": "ckpt-uid",
                "ownerReferences": [{
                    "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
                    "name": "sim", "uid": "job-uid-1", "controller": true
                }]
            },
            "spec": {
                "job": "sim", "pod": "sim-2", "node": "desk-7", "seq": 3,
                "strategy": "StopAndCopy", "reason": "OwnerReturned",
                "leaveRunning": false, "deadlineSeconds": deadline_seconds
            }
        }))
        .unwrap()
    }

    /// A shim's checkpoint outcome, from its wire form (keeps compiling when the shim adds
    /// optional fields).
    fn outcome(wire: Value) -> CheckpointOutcome {
        serde_json::from_value(wire).expect("an outcome in the protocol's wire form")
    }

    fn pod(node: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "sim-2", "namespace": "lab", "uid": "pod-uid-1"},
            "spec": {"nodeName": node, "containers": [{"name": "job", "image": "busybox"}]},
            "status": {"phase": "Running"}
        })
    }

    fn echo(body: &Value) -> Value {
        let mut out = serde_json::to_value(checkpoint(300)).unwrap();
        out["status"] = body["status"].clone();
        out
    }

    /// If this fails, a Checkpoint request does not reach the pod's shim with the right
    /// request (image path `<ns>/<job>/<seq>`, the job's identity, the deadline), or the shim's
    /// outcome does not come back on the Checkpoint's status (InProgress, then Completed with
    /// path, strategy, bytes, freeze, duration, stoppedAt) with a Checkpointed Event.
    #[tokio::test]
    async fn checkpoint_request_flows_to_the_shim_and_status_flows_back() {
        let kubelet = tempfile::tempdir().unwrap();
        let shim = FakeShim::start(kubelet.path(), "pod-uid-1", |req| match &req.op {
            Op::Checkpoint(c) => Some(Reply::Checkpointed(outcome(json!({
                "path": c.path, "strategy": "StopAndCopy", "fallbackReason": null,
                "imageBytes": 4_194_304, "freezeMs": 180, "durationMs": 420,
                "stoppedAtUnixMs": 1_795_000_000_000u64, "pageServer": null
            })))),
            _ => None,
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect("GET", POD_URI, None, pod("desk-7")).await;
            let progress = v.expect_fn("PATCH", STATUS_URI, echo).await;
            assert_eq!(progress["status"]["phase"], "InProgress");
            assert!(progress["status"]["startedAt"].is_string());
            let done = v.expect_fn("PATCH", STATUS_URI, echo).await;
            let s = &done["status"];
            assert_eq!(s["phase"], "Completed");
            assert_eq!(s["path"], "lab/sim/3");
            assert_eq!(s["strategy"], "StopAndCopy");
            assert_eq!(s["imageBytes"], 4_194_304);
            assert_eq!(s["freezeMillis"], 180);
            assert_eq!(s["durationMillis"], 420);
            assert_eq!(s["stoppedAt"], "2026-11-18T11:06:40Z");
            assert_eq!(s["startedAt"], progress["status"]["startedAt"]);
            let event = v.expect("POST", EVENTS_URI, None, json!({})).await;
            assert_eq!(event["reason"], "Checkpointed");
            assert_eq!(event["type"], "Normal");
            assert_eq!(event["regarding"]["name"], "sim-ckpt-3");
        });
        let ctx = Arc::new(context(client, kubelet.path()));
        let action = reconcile(Arc::new(checkpoint(300)), ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        timeout_after_1s(server).await;
        // A reconcile of the stale object (the watch has not shown our Completed status yet)
        // must neither dump again nor write: the verifier is gone, so any request would fail.
        let mut stale = checkpoint(300);
        stale.status = Some(CheckpointStatus {
            phase: Some(CheckpointPhase::InProgress),
            started_at: Some(Time(Timestamp::now())),
            ..CheckpointStatus::default()
        });
        assert_eq!(
            reconcile(Arc::new(stale), ctx.clone()).await.unwrap(),
            Action::await_change()
        );
        let requests = shim.requests();
        assert_eq!(requests.len(), 1);
        let Op::Checkpoint(req) = &requests[0].op else {
            panic!("expected a checkpoint request, got {:?}", requests[0].op);
        };
        assert_eq!(req.path, PathBuf::from("lab/sim/3"));
        assert_eq!(req.seq, 3);
        assert_eq!(req.job.uid, "job-uid-1");
        assert_eq!(
            (req.job.namespace.as_str(), req.job.name.as_str()),
            ("lab", "sim")
        );
        assert!(!req.leave_running);
        assert!(
            req.deadline_ms <= 300_000 && req.deadline_ms > 290_000,
            "{}",
            req.deadline_ms
        );
        assert!(
            ctx.metrics
                .encode()
                .contains("checkpoints_total{result=\"completed\"} 1")
        );
    }

    /// If this fails, a shim that does not answer within the deadline leaves the Checkpoint
    /// InProgress forever (the operator would wait on it), or the agent does not check and
    /// report that the job is running again on this node.
    #[tokio::test]
    async fn deadline_without_answer_fails_and_reports_the_job_running() {
        let kubelet = tempfile::tempdir().unwrap();
        let shim = FakeShim::start(kubelet.path(), "pod-uid-1", |req| match &req.op {
            Op::Checkpoint(_) => None,
            Op::Status => Some(Reply::Status(shim_status(JobState::Running, 0))),
            Op::Signal { .. } => None,
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect("GET", POD_URI, None, pod("desk-7")).await;
            let _progress = v.expect_fn("PATCH", STATUS_URI, echo).await;
            let done = v.expect_fn("PATCH", STATUS_URI, echo).await;
            assert_eq!(done["status"]["phase"], "Failed");
            let msg = done["status"]["message"].as_str().unwrap();
            assert!(msg.contains("did not answer"), "{msg}");
            assert!(msg.contains("running again on this node"), "{msg}");
            let event = v.expect("POST", EVENTS_URI, None, json!({})).await;
            assert_eq!(event["reason"], "CheckpointFailed");
            assert_eq!(event["type"], "Warning");
        });
        let mut ctx = context(client, kubelet.path());
        ctx.deadline_grace = Duration::ZERO;
        reconcile(Arc::new(checkpoint(1)), Arc::new(ctx))
            .await
            .unwrap();
        timeout_after(5, server).await;
        let ops: Vec<_> = shim.requests().into_iter().map(|r| r.op).collect();
        assert!(matches!(ops.as_slice(), [Op::Checkpoint(c), Op::Status] if c.deadline_ms <= 1000));
    }

    /// If this fails, a CRIU failure reported by the shim is not surfaced as a Failed
    /// Checkpoint with the shim's reason (the operator could not fall back).
    #[tokio::test]
    async fn shim_error_becomes_failed_with_its_message() {
        let kubelet = tempfile::tempdir().unwrap();
        let _shim = FakeShim::start(kubelet.path(), "pod-uid-1", |_| {
            Some(Reply::Error(ControlError {
                kind: ErrorKind::CheckpointFailed,
                message: "criu dump exited 1; the job keeps running".into(),
            }))
        });
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect("GET", POD_URI, None, pod("desk-7")).await;
            let _progress = v.expect_fn("PATCH", STATUS_URI, echo).await;
            let done = v.expect_fn("PATCH", STATUS_URI, echo).await;
            assert_eq!(done["status"]["phase"], "Failed");
            let msg = done["status"]["message"].as_str().unwrap();
            assert!(
                msg.contains("CheckpointFailed") && msg.contains("criu dump exited 1"),
                "{msg}"
            );
            v.expect("POST", EVENTS_URI, None, json!({})).await;
        });
        reconcile(
            Arc::new(checkpoint(300)),
            Arc::new(context(client, kubelet.path())),
        )
        .await
        .unwrap();
        timeout_after_1s(server).await;
    }

    /// If this fails, an agent could dump a pod that runs on another node (through a stale
    /// Checkpoint), or re-run a finished Checkpoint.
    #[tokio::test]
    async fn pod_on_another_node_fails_and_finished_checkpoints_are_left_alone() {
        let kubelet = tempfile::tempdir().unwrap();
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect("GET", POD_URI, None, pod("desk-9")).await;
            let done = v.expect_fn("PATCH", STATUS_URI, echo).await;
            assert_eq!(done["status"]["phase"], "Failed");
            assert!(
                done["status"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("runs on desk-9")
            );
            v.expect("POST", EVENTS_URI, None, json!({})).await;
            v.expect_silence(Duration::from_millis(100)).await;
        });
        let ctx = Arc::new(context(client, kubelet.path()));
        reconcile(Arc::new(checkpoint(300)), ctx.clone())
            .await
            .unwrap();
        let mut finished = checkpoint(300);
        finished.status = Some(CheckpointStatus {
            phase: Some(CheckpointPhase::Completed),
            ..CheckpointStatus::default()
        });
        assert_eq!(
            reconcile(Arc::new(finished), ctx).await.unwrap(),
            Action::await_change()
        );
        timeout_after_1s(server).await;
    }

    /// If this fails, the status the operator reads would misreport a fallback (strategy used
    /// vs requested) or the stop time used to compute downtime.
    #[test]
    fn completed_status_is_pure_and_names_fallbacks() {
        let outcome = outcome(json!({
            "path": "lab/sim/3", "strategy": "StopAndCopy",
            "fallbackReason": "no soft-dirty tracking", "imageBytes": 10, "freezeMs": 1,
            "durationMs": 2, "stoppedAtUnixMs": null, "pageServer": null
        }));
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let s = completed_status(&outcome, t, t, "desk-7");
        assert_eq!(s.strategy, Some(MigrationStrategy::StopAndCopy));
        assert_eq!(s.stopped_at, None);
        assert!(s.message.unwrap().contains("no soft-dirty tracking"));
        let mut c = checkpoint(300);
        c.spec.strategy = MigrationStrategy::PreCopy;
        c.spec.leave_running = true;
        let req = shim_request(&c, "u", Duration::from_millis(1500));
        assert_eq!(req.strategy, Strategy::PreCopy);
        assert!(req.leave_running);
        assert_eq!(req.deadline_ms, 1500);
    }
}
