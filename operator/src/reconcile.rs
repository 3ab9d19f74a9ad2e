//! The MigratableJob reconciler: fetch (the job's pods and Checkpoints from the API server, nodes
//! and other jobs from caches) -> validate (pure) -> decide (the pure state machine in
//! [`crate::machine`], fed by the pure placement plan) -> apply (server-side apply with field
//! manager `lodger-operator`, deterministic names, owner references) -> status (written only when
//! it changed) -> Events and metrics.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use lodger_api::{
    ANNOTATION_MIGRATE_TO, Checkpoint, FINALIZER_JOB, JobPhase, LABEL_JOB, LABEL_PARENT,
    LABEL_ROLE, MANAGER_OPERATOR, MigratableJob, MigratableJobStatus, ROLE_STUB, ROLE_WORKLOAD,
    condition, reason,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::config::Settings;
use crate::desired;
use crate::machine::{self, Effect, Observed, set_condition};
use crate::metrics::{CategoryLabels, ControllerLabels, Metrics, MigrationLabels, PhaseLabels};
use crate::placement;
use crate::validate;

/// Errors of the job reconciler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing the job's children failed.
    #[error("failed to list {what} of job {job}")]
    List {
        /// What was listed.
        what: &'static str,
        /// The job.
        job: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("failed to apply {kind} {name}")]
    Apply {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child failed.
    #[error("failed to delete {kind} {name}")]
    Delete {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("failed to write the status of job {job}")]
    Status {
        /// The job.
        job: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Publishing an Event failed.
    #[error("failed to publish an event")]
    Event(#[source] kube::Error),
    /// The object is invalid (reported with a Warning Event and the Valid condition).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// Removing the job's checkpoint directory failed.
    #[error("failed to remove {path}")]
    RemoveDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Adding or removing the job finalizer failed.
    #[error("failed to update the job finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Stable category, used as a metrics label and Warning Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::List { .. } => "list",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status { .. } => "status",
            Error::Event(_) => "event",
            Error::Invalid(_) => "invalid",
            Error::RemoveDir { .. } => "job_dir_remove",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings from the command line.
    pub settings: Settings,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cache of every Node.
    pub nodes: Store<Node>,
    /// Cache of every pod (for the requests of what runs on each node).
    pub pods: Store<Pod>,
    /// Cache of every MigratableJob (fair share, waiting jobs, parallel instances).
    pub jobs: Store<DeserializeGuard<MigratableJob>>,
    /// The clock (tests fix it).
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context with an Event recorder reporting as `lodger-operator`.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        nodes: Store<Node>,
        pods: Store<Pod>,
        jobs: Store<DeserializeGuard<MigratableJob>>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER_OPERATOR.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            settings,
            recorder,
            metrics,
            nodes,
            pods,
            jobs,
            clock: Arc::new(Timestamp::now),
        }
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        warning: bool,
        why: &str,
        note: String,
    ) -> Result<(), Error> {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: why.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.recorder
            .publish(&ev, reference)
            .await
            .map_err(Error::Event)
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER_OPERATOR).force()
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::from_secs(1))
}

/// Reconciles one MigratableJob (or reports why it cannot).
#[instrument(skip(obj, ctx), fields(job = %obj.name_any(), ns = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(
    obj: Arc<DeserializeGuard<MigratableJob>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics
        .reconciles
        .get_or_create(&ControllerLabels {
            controller: "migratablejob".into(),
        })
        .inc();
    let out = match &obj.0 {
        Err(invalid) => report_malformed(invalid, &ctx).await,
        Ok(job) => reconcile_job(job, &ctx).await,
    };
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    update_phase_gauges(&ctx);
    out
}

fn update_phase_gauges(ctx: &Context) {
    let state = ctx.jobs.state();
    let mut parked = 0;
    let mut counts = std::collections::BTreeMap::new();
    for j in state.iter().filter_map(|g| g.0.as_ref().ok()) {
        let phase = j
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(JobPhase::Pending);
        *counts.entry(phase.as_str()).or_insert(0i64) += 1;
        parked += i64::from(phase == JobPhase::Parked);
    }
    for phase in [
        "Pending",
        "Placing",
        "Running",
        "Checkpointing",
        "Restoring",
        "Parked",
        "Succeeded",
        "Failed",
    ] {
        ctx.metrics
            .jobs
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
            })
            .set(counts.get(phase).copied().unwrap_or(0));
    }
    ctx.metrics.parked.set(parked);
}

/// What the controller does after an error: invalid objects wait for a change, the rest retry.
pub fn error_policy(
    obj: Arc<DeserializeGuard<MigratableJob>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&CategoryLabels {
            category: error.category().into(),
        })
        .inc();
    warn!(error = %error, category = error.category(), "reconcile failed");
    if let (Error::Invalid(_), _) | (_, Err(_)) = (error, &obj.0) {
        // Invalid objects were reported by the reconcile itself.
        return Action::await_change();
    }
    // A Warning Event with the error chain, published off the (synchronous) error policy.
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let reference = obj.object_ref(&());
    let category = error.category();
    let publisher = ctx.clone();
    tokio::spawn(async move {
        let note = format!("{category}: {chain}");
        if let Err(e) = publisher
            .publish(&reference, true, reason::RECONCILE_ERROR, note)
            .await
        {
            warn!(error = %e, "could not publish the error Event");
        }
    });
    Action::requeue(Duration::from_secs(5))
}

/// A MigratableJob that does not even deserialize: Warning Event and Valid=False, then wait for a
/// change. The controller keeps serving every other job.
async fn report_malformed(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let (Some(name), Some(ns)) = (meta.name.clone(), meta.namespace.clone()) else {
        return Ok(Action::await_change());
    };
    let reference = ObjectReference {
        api_version: Some(MigratableJob::api_version(&()).into_owned()),
        kind: Some(MigratableJob::kind(&()).into_owned()),
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        uid: meta.uid.clone(),
        ..ObjectReference::default()
    };
    let message = format!(
        "the object does not match the MigratableJob schema: {}",
        invalid.error
    );
    ctx.publish(&reference, true, reason::INVALID_SPEC, message.clone())
        .await?;
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        condition::VALID,
        false,
        reason::INVALID_SPEC,
        &message,
        (ctx.clock)(),
        meta.generation,
    );
    // NB: the reply is as malformed as the object; the guard keeps it from failing the call.
    let api: Api<DeserializeGuard<MigratableJob>> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .map_err(|source| Error::Status { job: name, source })?;
    Ok(Action::await_change())
}

async fn write_status(
    api: &Api<MigratableJob>,
    name: &str,
    status: &MigratableJobStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": MigratableJob::api_version(&()),
        "kind": MigratableJob::kind(&()),
        "status": status,
    });
    api.patch_status(name, &apply_params(), &Patch::Apply(body))
        .await
        .map_err(|source| Error::Status {
            job: name.into(),
            source,
        })?;
    Ok(())
}

async fn reconcile_job(job: &MigratableJob, ctx: &Context) -> Result<Action, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<MigratableJob> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = job.object_ref(&());
    let now = (ctx.clock)();

    let problems = validate::problems(job);
    if !problems.is_empty() {
        let message = problems.join("; ");
        let mut status = job.status.clone().unwrap_or_default();
        status.observed_generation = job.metadata.generation;
        set_condition(
            &mut status.conditions,
            condition::VALID,
            false,
            reason::INVALID_SPEC,
            &message,
            now,
            job.metadata.generation,
        );
        if job.status.as_ref() != Some(&status) {
            ctx.publish(&reference, true, reason::INVALID_SPEC, message.clone())
                .await?;
            write_status(&jobs, &name, &status).await?;
        }
        return Err(Error::Invalid(message));
    }
    if let Some(n) = job.spec.parallelism {
        if job.metadata.deletion_timestamp.is_some() {
            // Instances go by owner reference; each has its own finalizer.
            return Ok(Action::await_change());
        }
        return reconcile_parent(job, n, ctx).await;
    }
    // The job finalizer: its directory on the volume goes before the job does. Pods, the stub
    // and Checkpoints then go by owner reference (each Checkpoint's finalizer finds its
    // directory already gone).
    finalizer(&jobs, FINALIZER_JOB, Arc::new(job.clone()), |event| async {
        match event {
            FinalizerEvent::Apply(job) => reconcile_single(&job, ctx).await,
            FinalizerEvent::Cleanup(job) => remove_job_dir(&job, ctx),
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// Removes `<mount>/<namespace>/<job>/` (every checkpoint image of the job).
fn remove_job_dir(job: &MigratableJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let rel = std::path::Path::new(&ns).join(&name);
    if ns.is_empty()
        || name.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::Invalid(format!(
            "job path {} is not inside the volume",
            rel.display()
        )));
    }
    let dir = ctx.settings.checkpoint_mount.join(rel);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => info!(path = %dir.display(), "removed the job's checkpoint directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::RemoveDir { path: dir, source }),
    }
    Ok(Action::await_change())
}

/// One (non-parallel, valid, not deleted) job: fetch -> decide -> apply -> status.
async fn reconcile_single(job: &MigratableJob, ctx: &Context) -> Result<Action, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<MigratableJob> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = job.object_ref(&());
    let now = (ctx.clock)();

    // ---- fetch ----
    let selector = ListParams::default().labels(&format!("{LABEL_JOB}={name}"));
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pod_api
        .list(&selector)
        .await
        .map_err(|source| Error::List {
            what: "pods",
            job: name.clone(),
            source,
        })?
        .items;
    let ck_api: Api<Checkpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let checkpoints = ck_api
        .list(&selector)
        .await
        .map_err(|source| Error::List {
            what: "checkpoints",
            job: name.clone(),
            source,
        })?
        .items;
    let role = |p: &Pod| p.labels().get(LABEL_ROLE).cloned().unwrap_or_default();
    let (workload, stubs): (Vec<Pod>, Vec<Pod>) = pods
        .into_iter()
        .filter(|p| role(p) == ROLE_WORKLOAD || role(p) == ROLE_STUB)
        .partition(|p| role(p) == ROLE_WORKLOAD);
    let stub = stubs.iter().find(|p| {
        p.metadata.name.as_deref() == Some(desired::stub_name(&name).as_str())
            && p.metadata.deletion_timestamp.is_none()
    });

    // ---- decide (pure) ----
    let node_state = ctx.nodes.state();
    let nodes: Vec<placement::NodeInfo> = node_state
        .iter()
        .map(|n| placement::NodeInfo::from_node(n))
        .collect();
    // The whole-cluster plan, computed only if the machine asks for a target.
    let plan_target = std::sync::OnceLock::new();
    let idle_target = || {
        plan_target
            .get_or_init(|| {
                let pod_state = ctx.pods.state();
                let job_state = ctx.jobs.state();
                let others = job_state
                    .iter()
                    .filter_map(|g| g.0.as_ref().ok())
                    .filter(|j| {
                        j.metadata.name != job.metadata.name
                            || j.metadata.namespace != job.metadata.namespace
                    });
                let mut snapshot = placement::snapshot(
                    node_state.iter().map(|n| n.as_ref()),
                    pod_state.iter().map(|p| p.as_ref()),
                    others.chain(std::iter::once(job)),
                    ctx.settings.min_idle,
                );
                placement::ensure_demand(&mut snapshot, job, ctx.settings.min_idle);
                placement::plan(&snapshot, now).remove(&placement::key_of(job))
            })
            .clone()
    };
    let decision = machine::decide(Observed {
        job,
        pods: &workload,
        stub,
        checkpoints: &checkpoints,
        nodes: &nodes,
        idle_target: &idle_target,
        now,
        checkpoint_margin: ctx.settings.checkpoint_margin,
        default_min_idle: ctx.settings.min_idle,
    });
    info!(
        step = decision.step,
        effects = decision.effects.len(),
        "decided"
    );

    // ---- apply ----
    for effect in &decision.effects {
        apply_effect(effect, job, ctx).await?;
    }
    if job.status.as_ref() != Some(&decision.status) {
        write_status(&jobs, &name, &decision.status).await?;
    }
    for note in &decision.notes {
        ctx.publish(&reference, note.warning, note.reason, note.message.clone())
            .await?;
    }
    if let Some(r) = &decision.completed {
        ctx.metrics
            .migrations
            .get_or_create(&MigrationLabels {
                reason: r.reason.to_string(),
                strategy: r.strategy.to_string(),
            })
            .inc();
        if let Some(f) = r.freeze_millis {
            ctx.metrics.freeze_seconds.observe(f as f64 / 1000.0);
        }
        if let Some(d) = r.downtime_millis {
            ctx.metrics.downtime_seconds.observe(d as f64 / 1000.0);
        }
    }
    Ok(match decision.requeue {
        Some(after) => Action::requeue(to_std(after)),
        None => Action::await_change(),
    })
}

async fn apply_effect(effect: &Effect, job: &MigratableJob, ctx: &Context) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let client = ctx.client.clone();
    match effect {
        Effect::EnsureStub => {
            let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let obj = desired::stub_service_account(&ns);
            sa.patch(desired::STUB_ACCOUNT, &apply_params(), &Patch::Apply(&obj))
                .await
                .map_err(|source| Error::Apply {
                    kind: "ServiceAccount",
                    name: desired::STUB_ACCOUNT.into(),
                    source,
                })?;
            let rb: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
            let obj = desired::stub_role_binding(&ns);
            rb.patch(desired::STUB_ACCOUNT, &apply_params(), &Patch::Apply(&obj))
                .await
                .map_err(|source| Error::Apply {
                    kind: "RoleBinding",
                    name: desired::STUB_ACCOUNT.into(),
                    source,
                })?;
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let stub = desired::stub_pod(job, &ctx.settings);
            let stub_name = desired::stub_name(&name);
            pods.patch(&stub_name, &apply_params(), &Patch::Apply(&stub))
                .await
                .map_err(|source| Error::Apply {
                    kind: "Pod",
                    name: stub_name,
                    source,
                })?;
        }
        Effect::CreatePod {
            generation,
            node,
            restore,
        } => {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let pod =
                desired::workload_pod(job, &ctx.settings, *generation, node, restore.as_ref());
            let pod_name = desired::pod_name(&name, *generation);
            pods.patch(&pod_name, &apply_params(), &Patch::Apply(&pod))
                .await
                .map_err(|source| Error::Apply {
                    kind: "Pod",
                    name: pod_name,
                    source,
                })?;
        }
        Effect::CreateCheckpoint {
            seq,
            pod,
            node,
            reason,
            leave_running,
        } => {
            let cks: Api<Checkpoint> = Api::namespaced(client, &ns);
            let ck = desired::checkpoint(job, pod, node, *seq, *reason, *leave_running);
            let ck_name = desired::checkpoint_name(&name, *seq);
            cks.patch(&ck_name, &apply_params(), &Patch::Apply(&ck))
                .await
                .map_err(|source| Error::Apply {
                    kind: "Checkpoint",
                    name: ck_name,
                    source,
                })?;
        }
        Effect::DeletePod(pod) => {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            pods.delete(pod, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(|source| Error::Delete {
                    kind: "Pod",
                    name: pod.clone(),
                    source,
                })?;
        }
        Effect::DeleteCheckpoint(ck) => {
            let cks: Api<Checkpoint> = Api::namespaced(client, &ns);
            cks.delete(ck, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(|source| Error::Delete {
                    kind: "Checkpoint",
                    name: ck.clone(),
                    source,
                })?;
        }
        Effect::ClearMigrateTo => {
            let jobs: Api<MigratableJob> = Api::namespaced(client, &ns);
            let patch = json!({"metadata": {"annotations": {ANNOTATION_MIGRATE_TO: null}}});
            jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Apply {
                    kind: "MigratableJob",
                    name: name.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        _ => Err(e),
    }
}

/// A parallel job: ensure its instances `<job>-<index>` exist and sum up their state.
async fn reconcile_parent(job: &MigratableJob, n: i32, ctx: &Context) -> Result<Action, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let api: Api<MigratableJob> = Api::namespaced(ctx.client.clone(), &ns);
    let state = ctx.jobs.state();
    let children: Vec<&MigratableJob> = state
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|c| {
            c.namespace().as_deref() == Some(ns.as_str())
                && c.labels().get(LABEL_PARENT) == Some(&name)
        })
        .collect();
    for i in 0..n {
        let child_name = format!("{name}-{i}");
        if !children.iter().any(|c| c.name_any() == child_name) {
            let child = desired::instance(job, i);
            api.patch(&child_name, &apply_params(), &Patch::Apply(&child))
                .await
                .map_err(|source| Error::Apply {
                    kind: "MigratableJob",
                    name: child_name,
                    source,
                })?;
        }
    }
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = job.metadata.generation;
    status.instances = children
        .iter()
        .map(|c| lodger_api::InstanceStatus {
            name: c.name_any(),
            phase: c.status.as_ref().and_then(|s| s.phase),
            node: c.status.as_ref().and_then(|s| s.node.clone()),
        })
        .collect();
    status.instances.sort_by(|a, b| a.name.cmp(&b.name));
    let phases: Vec<JobPhase> = status
        .instances
        .iter()
        .map(|i| i.phase.unwrap_or(JobPhase::Pending))
        .collect();
    let all_done =
        phases.len() == usize::try_from(n).unwrap_or(0) && phases.iter().all(|p| p.is_terminal());
    status.phase = Some(if all_done {
        if phases.iter().all(|p| *p == JobPhase::Succeeded) {
            JobPhase::Succeeded
        } else {
            JobPhase::Failed
        }
    } else if phases.iter().any(|p| {
        matches!(
            p,
            JobPhase::Running | JobPhase::Checkpointing | JobPhase::Restoring
        )
    }) {
        JobPhase::Running
    } else if phases.contains(&JobPhase::Parked) {
        JobPhase::Parked
    } else {
        JobPhase::Placing
    });
    let now = (ctx.clock)();
    let running = phases
        .iter()
        .filter(|p| {
            matches!(
                p,
                JobPhase::Running | JobPhase::Checkpointing | JobPhase::Restoring
            )
        })
        .count();
    set_condition(
        &mut status.conditions,
        condition::VALID,
        true,
        "Valid",
        "",
        now,
        job.metadata.generation,
    );
    set_condition(
        &mut status.conditions,
        condition::READY,
        running > 0,
        if running > 0 {
            "Running"
        } else {
            reason::NO_IDLE_NODE
        },
        &format!("{running} of {n} instances running"),
        now,
        job.metadata.generation,
    );
    if job.status.as_ref() != Some(&status) {
        write_status(&api, &name, &status).await?;
    }
    Ok(if all_done {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(60))
    })
}

/// Jobs a Node change concerns: those on it or leaving it, and those waiting for a node.
pub fn jobs_for_node(
    store: &Store<DeserializeGuard<MigratableJob>>,
    node: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<DeserializeGuard<MigratableJob>>> {
    store
        .state()
        .iter()
        .filter(|g| match &g.0 {
            Ok(j) => {
                let s = j.status.as_ref();
                let phase = s.and_then(|s| s.phase);
                j.spec.parallelism.is_none()
                    && !phase.is_some_and(JobPhase::is_terminal)
                    && (s.and_then(|s| s.node.as_deref()) == Some(node)
                        || s.and_then(|s| s.source_node.as_deref()) == Some(node)
                        || j.spec.home_node.as_deref() == Some(node)
                        || placement::needs_node(j))
            }
            Err(_) => false,
        })
        .map(|g| kube::runtime::reflector::ObjectRef::from_obj(g.as_ref()))
        .collect()
}
