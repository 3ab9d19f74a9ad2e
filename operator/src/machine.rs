//! The migration state machine: a pure function from observed state (the job and its status, its
//! workload pods, stub and Checkpoints, the nodes, the placement plan's target, the time) to a
//! [`Decision`]: the effects to apply, the next status, the Events to publish and when to look
//! again. Because it reads only observed state, an operator restart mid-migration resumes where
//! the status says, and running it twice on the same state decides the same thing.
//!
//! Phases: Pending/Placing -> Running -> Checkpointing -> Restoring -> Running, with Parked when
//! no node can take an evicted job, and Succeeded/Failed at the end. See DESIGN.md "Flows".

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lodger_api::{
    ANNOTATION_MIGRATE_TO, ANNOTATION_RESTORE_FROM, Checkpoint, CheckpointPhase, CheckpointReason,
    HISTORY_LIMIT, JobPhase, LABEL_GENERATION, MigratableJob, MigratableJobStatus, MigrationRecord,
    NodeLostPolicy, condition, reason,
};

use crate::desired::{RestoreFrom, checkpoint_name, checkpoint_path, pod_name, stub_name};
use crate::placement::{NodeInfo, constraints_match, demand_of, tolerated};

/// Backoff after the first failed checkpoint; doubles per consecutive failure.
pub const BACKOFF_BASE: SignedDuration = SignedDuration::from_secs(10);
/// Longest backoff.
pub const BACKOFF_MAX: SignedDuration = SignedDuration::from_secs(300);
/// How often a waiting job (Placing, Parked) looks again even without a watch event (a node's
/// idle time can pass minIdleSeconds without any object changing).
pub const WAIT_POLL: SignedDuration = SignedDuration::from_secs(15);

/// Everything the machine reads.
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    /// The job.
    pub job: &'a MigratableJob,
    /// The job's workload pods (label `lodger.dev/job`, role workload).
    pub pods: &'a [Pod],
    /// The job's home stub pod, if it exists.
    pub stub: Option<&'a Pod>,
    /// The job's Checkpoints.
    pub checkpoints: &'a [Checkpoint],
    /// Every node.
    pub nodes: &'a [NodeInfo],
    /// The idle node the placement plan gives this job, if any. A function so the (whole-
    /// cluster) plan is only computed when the job needs a node.
    pub idle_target: &'a (dyn Fn() -> Option<String> + Sync),
    /// Now.
    pub now: Timestamp,
    /// Grace past a Checkpoint's deadline before it counts as failed.
    pub checkpoint_margin: SignedDuration,
    /// Default minimum idle time (for constraint checks on manual targets).
    pub default_min_idle: SignedDuration,
}

impl std::fmt::Debug for Observed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("job", &self.job.metadata.name)
            .field("pods", &self.pods.len())
            .field("checkpoints", &self.checkpoints.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// One change to make in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Server-side apply the stub's ServiceAccount, RoleBinding and the stub pod.
    EnsureStub,
    /// Create workload pod `<job>-<generation>` on `node`, restoring from `restore` if given.
    CreatePod {
        /// Pod generation.
        generation: i64,
        /// Node to bind to.
        node: String,
        /// Checkpoint to restore from.
        restore: Option<RestoreFrom>,
    },
    /// Create Checkpoint `<job>-ckpt-<seq>` of `pod` on `node`.
    CreateCheckpoint {
        /// Sequence number.
        seq: i64,
        /// Pod to dump.
        pod: String,
        /// Node it runs on.
        node: String,
        /// Why.
        reason: CheckpointReason,
        /// Keep the job running (periodic).
        leave_running: bool,
    },
    /// Delete a workload pod.
    DeletePod(String),
    /// Delete a Checkpoint (retention; its finalizer removes the files).
    DeleteCheckpoint(String),
    /// Remove the `lodger.dev/migrate-to` annotation (the manual migration is done).
    ClearMigrateTo,
}

/// An Event to publish on the job.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason (constants in `lodger_api::reason`).
    pub reason: &'static str,
    /// Message for people.
    pub message: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Short name of the step, for logs.
    pub step: &'static str,
    /// Changes to make, in order.
    pub effects: Vec<Effect>,
    /// The status to write (written only when it differs from the current one).
    pub status: MigratableJobStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// Look again after this long (None: only on a watch event).
    pub requeue: Option<SignedDuration>,
    /// A migration that completed in this step (for metrics).
    pub completed: Option<MigrationRecord>,
}

/// What a workload pod is doing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PodState {
    /// No such pod (or it is being deleted).
    Missing,
    /// Created, not running yet.
    Starting,
    /// Running; `ready_since` when its Ready condition is True.
    Running {
        /// When the pod became Ready.
        ready_since: Option<Timestamp>,
    },
    /// Ended; the phase and the job container's exit code (None if it never ran).
    Ended {
        /// Pod phase was Succeeded.
        succeeded: bool,
        /// The container's exit code.
        exit_code: Option<i32>,
    },
}

/// Reads a pod's state.
pub fn pod_state(pod: Option<&Pod>) -> PodState {
    let Some(pod) = pod else {
        return PodState::Missing;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Missing;
    }
    let Some(status) = pod.status.as_ref() else {
        return PodState::Starting;
    };
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match status.phase.as_deref() {
        Some(p @ ("Succeeded" | "Failed")) => PodState::Ended {
            succeeded: p == "Succeeded",
            exit_code: terminated.map(|t| t.exit_code),
        },
        _ if terminated.is_some() => {
            let code = terminated.map(|t| t.exit_code);
            PodState::Ended {
                succeeded: code == Some(0),
                exit_code: code,
            }
        }
        Some("Running") => PodState::Running {
            ready_since: status
                .conditions
                .as_ref()
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                .map(|c| {
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or(Timestamp::UNIX_EPOCH)
                }),
        },
        _ => PodState::Starting,
    }
}

/// Pod `status.reason`s with which the kubelet refuses a pod at admission, before anything ran
/// (`OutOfcpu`, `OutOfmemory`, `OutOfpods`, `NodeAffinity`, `Taint`, ...).
pub fn is_admission_rejection(reason: &str) -> bool {
    reason.starts_with("OutOf")
        || matches!(
            reason,
            "NodeAffinity" | "NodeSelectorMismatching" | "Taint" | "UnexpectedAdmissionError"
        )
}

fn generation_of(pod: &Pod) -> i64 {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_GENERATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

fn ck_phase(ck: &Checkpoint) -> Option<CheckpointPhase> {
    ck.status.as_ref().and_then(|s| s.phase)
}

fn ck_created(ck: &Checkpoint) -> Timestamp {
    ck.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The checkpoint's restore source (status.path, else the conventional directory).
pub fn restore_from(ck: &Checkpoint) -> RestoreFrom {
    RestoreFrom {
        checkpoint: ck.metadata.name.clone().unwrap_or_default(),
        path: ck
            .status
            .as_ref()
            .and_then(|s| s.path.clone())
            .unwrap_or_else(|| {
                checkpoint_path(
                    ck.metadata.namespace.as_deref().unwrap_or_default(),
                    &ck.spec.job,
                    ck.spec.seq,
                )
            }),
    }
}

/// How a checkpoint in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CkOutcome {
    /// Image and manifest are on the volume.
    Completed,
    /// Failed, or past its deadline plus margin.
    Failed,
    /// Still being taken; look again at this time.
    InFlight(Timestamp),
}

/// Outcome of a checkpoint at `now`.
pub fn ck_outcome(ck: &Checkpoint, now: Timestamp, margin: SignedDuration) -> CkOutcome {
    match ck_phase(ck) {
        Some(CheckpointPhase::Completed) => CkOutcome::Completed,
        Some(CheckpointPhase::Failed) => CkOutcome::Failed,
        _ => {
            let deadline = ck_created(ck)
                + SignedDuration::from_secs(i64::from(ck.spec.deadline_seconds))
                + margin;
            if now > deadline {
                CkOutcome::Failed
            } else {
                CkOutcome::InFlight(deadline)
            }
        }
    }
}

/// Sets a condition, keeping lastTransitionTime when the status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    observed_generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(now);
        }
        c.status = status;
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = observed_generation;
    } else {
        conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation,
        });
    }
}

/// Why the job must leave its node now, if it must.
pub fn eviction_trigger(
    job: &MigratableJob,
    node_name: &str,
    node: Option<&NodeInfo>,
) -> Option<(CheckpointReason, String)> {
    let Some(node) = node else {
        return Some((
            CheckpointReason::NodeLost,
            format!("node {node_name} is gone"),
        ));
    };
    if !node.ready {
        return Some((
            CheckpointReason::NodeLost,
            format!("node {node_name} is NotReady"),
        ));
    }
    if node.owner_active() {
        return Some((
            CheckpointReason::OwnerReturned,
            format!("the owner of {node_name} returned"),
        ));
    }
    let tolerations = job
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    if let Some(t) = node
        .taints
        .iter()
        .find(|t| t.effect == "NoExecute" && !tolerated(&tolerations, t))
    {
        return Some((
            CheckpointReason::NodeTainted,
            format!(
                "node {node_name} has NoExecute taint {} the job does not tolerate",
                t.key
            ),
        ));
    }
    if node.unschedulable {
        return Some((
            CheckpointReason::Drain,
            format!("node {node_name} was cordoned"),
        ));
    }
    if let Some(target) = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_MIGRATE_TO))
    {
        let to = if target.is_empty() {
            "any idle node"
        } else {
            target.as_str()
        };
        return Some((
            CheckpointReason::Manual,
            format!("manual migration to {to} requested"),
        ));
    }
    None
}

struct Machine<'a> {
    o: Observed<'a>,
    name: &'a str,
    s: MigratableJobStatus,
    effects: Vec<Effect>,
    notes: Vec<Note>,
    requeue: Option<SignedDuration>,
    completed: Option<MigrationRecord>,
}

/// Decides the next step for one job.
pub fn decide(o: Observed<'_>) -> Decision {
    let mut m = Machine {
        o,
        name: o.job.metadata.name.as_deref().unwrap_or_default(),
        s: o.job.status.clone().unwrap_or_default(),
        effects: Vec::new(),
        notes: Vec::new(),
        requeue: None,
        completed: None,
    };
    m.s.observed_generation = o.job.metadata.generation;
    m.s.home_node = o.job.spec.home_node.clone();
    m.set(condition::VALID, true, "Valid", "");
    let step = m.step();
    m.prune();
    Decision {
        step,
        effects: m.effects,
        status: m.s,
        notes: m.notes,
        requeue: m.requeue,
        completed: m.completed,
    }
}

impl<'a> Machine<'a> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let g = self.o.job.metadata.generation;
        set_condition(
            &mut self.s.conditions,
            type_,
            status,
            reason,
            message,
            self.o.now,
            g,
        );
    }

    fn note(&mut self, warning: bool, reason: &'static str, message: String) {
        self.notes.push(Note {
            warning,
            reason,
            message,
        });
    }

    fn requeue_in(&mut self, after: SignedDuration) {
        let after = after.max(SignedDuration::from_secs(1));
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn requeue_at(&mut self, at: Timestamp) {
        self.requeue_in(at.duration_since(self.o.now));
    }

    fn pod(&self, name: Option<&str>) -> Option<&'a Pod> {
        let name = name?;
        self.o
            .pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    fn checkpoint(&self, name: Option<&str>) -> Option<&'a Checkpoint> {
        let name = name?;
        self.o.checkpoints.iter().find(|c| {
            c.metadata.name.as_deref() == Some(name) && c.metadata.deletion_timestamp.is_none()
        })
    }

    fn node(&self, name: &str) -> Option<&'a NodeInfo> {
        self.o.nodes.iter().find(|n| n.name == name)
    }

    fn next_seq(&self) -> i64 {
        self.o
            .checkpoints
            .iter()
            .map(|c| c.spec.seq)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn newest_completed_below(&self, below: i64) -> Option<&'a Checkpoint> {
        self.o
            .checkpoints
            .iter()
            .filter(|c| {
                c.spec.seq < below
                    && ck_phase(c) == Some(CheckpointPhase::Completed)
                    && c.metadata.deletion_timestamp.is_none()
            })
            .max_by_key(|c| c.spec.seq)
    }

    /// The home node if it can take the job now (Ready, schedulable, not the node it leaves).
    fn home_target(&self, leaving: Option<&str>) -> Option<String> {
        let home = self.o.job.spec.home_node.as_deref()?;
        let node = self.node(home)?;
        (node.ready && !node.unschedulable && Some(home) != leaving).then(|| home.to_string())
    }

    /// The node a manual migration names, if it can take the job.
    fn manual_target(&self, leaving: Option<&str>) -> Option<String> {
        let target = self
            .o
            .job
            .metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_MIGRATE_TO)?;
        let node = self.node(target)?;
        let demand = demand_of(self.o.job, self.o.default_min_idle);
        (node.ready
            && !node.unschedulable
            && !node.owner_active()
            && Some(target.as_str()) != leaving
            && constraints_match(&demand, node))
        .then(|| target.clone())
    }

    /// Target of a move: manual target, else the plan's idle node, else home.
    fn target(&self, leaving: Option<&str>) -> Option<String> {
        self.manual_target(leaving)
            .or_else(|| (self.o.idle_target)().filter(|t| Some(t.as_str()) != leaving))
            .or_else(|| self.home_target(leaving))
    }

    fn create_pod(&mut self, node: &str, restore: Option<RestoreFrom>) {
        let generation = self.s.pod_generation + 1;
        self.effects.push(Effect::CreatePod {
            generation,
            node: node.into(),
            restore,
        });
        self.s.pod_generation = generation;
        self.s.pod = Some(pod_name(self.name, generation));
        self.s.node = Some(node.into());
    }

    /// Deletes every workload pod of the job except the one status names.
    fn delete_other_pods(&mut self) {
        let keep = self.s.pod.clone();
        self.delete_pods_except(keep.as_deref());
    }

    /// Deletes every workload pod of the job (the job no longer runs anywhere).
    fn delete_all_pods(&mut self) {
        self.delete_pods_except(None);
    }

    fn delete_pods_except(&mut self, keep: Option<&str>) {
        for p in self.o.pods {
            let name = p.metadata.name.as_deref();
            if p.metadata.deletion_timestamp.is_none() && (keep.is_none() || name != keep) {
                self.effects
                    .push(Effect::DeletePod(name.unwrap_or_default().to_string()));
            }
        }
    }

    fn finish(
        &mut self,
        phase: JobPhase,
        exit_code: Option<i32>,
        why: &'static str,
        message: String,
    ) {
        self.s.phase = Some(phase);
        self.s.exit_code = exit_code.or(self.s.exit_code);
        self.s.pending_checkpoint = None;
        self.set(condition::READY, false, why, &message);
        self.set(condition::MIGRATING, false, why, &message);
        self.set(condition::COMPLETE, true, why, &message);
        self.note(phase == JobPhase::Failed, why, message);
    }

    fn step(&mut self) -> &'static str {
        let phase = self.s.phase.unwrap_or(JobPhase::Pending);
        if phase.is_terminal() {
            return "done";
        }
        self.adopt();
        if self.s.stub_pod.is_some() && self.o.stub.is_none() {
            self.delete_all_pods();
            self.finish(
                JobPhase::Failed,
                None,
                reason::FAILED,
                "the home stub was deleted: deleting the job's stub ends the job".into(),
            );
            return "stub-deleted";
        }
        match self.s.phase.unwrap_or(JobPhase::Pending) {
            JobPhase::Pending | JobPhase::Placing => self.placing(),
            JobPhase::Running => self.running(),
            JobPhase::Checkpointing => self.checkpointing(),
            JobPhase::Restoring => self.restoring(),
            JobPhase::Parked => self.parked(),
            JobPhase::Succeeded | JobPhase::Failed => "done",
        }
    }

    /// Picks up objects created by a previous reconcile whose status write was lost (operator
    /// restart, conflict): a newer workload pod or a Checkpoint in flight.
    fn adopt(&mut self) {
        if let Some(p) = self
            .o
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .max_by_key(|p| generation_of(p))
            .filter(|p| generation_of(p) > self.s.pod_generation)
        {
            self.s.pod_generation = generation_of(p);
            self.s.pod = p.metadata.name.clone();
            self.s.node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let restoring = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_RESTORE_FROM))
                .cloned();
            if let Some(ck) = restoring {
                self.s.pending_checkpoint = Some(ck);
                self.s.phase = Some(JobPhase::Restoring);
            } else if matches!(
                self.s.phase,
                None | Some(JobPhase::Pending | JobPhase::Placing)
            ) {
                self.s.phase = Some(JobPhase::Running);
            }
        }
        if self.s.pending_checkpoint.is_none()
            && self.s.phase == Some(JobPhase::Running)
            && let Some(ck) = self
                .o
                .checkpoints
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .filter(|c| Some(&c.spec.pod) == self.s.pod.as_ref())
                .filter(|c| {
                    matches!(
                        ck_outcome(c, self.o.now, self.o.checkpoint_margin),
                        CkOutcome::InFlight(_)
                    )
                })
                .max_by_key(|c| c.spec.seq)
        {
            self.s.pending_checkpoint = ck.metadata.name.clone();
            if !ck.spec.leave_running {
                self.s.phase = Some(JobPhase::Checkpointing);
                self.s.eviction_reason = Some(ck.spec.reason);
                self.s.source_node = Some(ck.spec.node.clone());
            }
        }
    }

    fn placing(&mut self) -> &'static str {
        if let Some(node) = (self.o.idle_target)() {
            if self.o.stub.is_none() {
                self.effects.push(Effect::EnsureStub);
            }
            self.s.stub_pod = Some(stub_name(self.name));
            self.create_pod(&node, None);
            self.s.phase = Some(JobPhase::Running);
            let msg = format!(
                "placed on idle node {node} as pod {}",
                self.s.pod.as_deref().unwrap_or_default()
            );
            self.set(condition::READY, false, reason::PLACED, &msg);
            self.set(condition::PARKED, false, reason::PLACED, "");
            self.note(false, reason::PLACED, msg);
            return "place";
        }
        if self.s.phase != Some(JobPhase::Placing) {
            self.note(
                false,
                reason::NO_IDLE_NODE,
                "no idle node can take the job yet: waiting".into(),
            );
        }
        self.s.phase = Some(JobPhase::Placing);
        self.set(
            condition::READY,
            false,
            reason::NO_IDLE_NODE,
            "waiting for an idle node",
        );
        self.requeue_in(WAIT_POLL);
        "wait-for-node"
    }

    fn max_reached(&self) -> bool {
        self.o
            .job
            .spec
            .migration
            .max_migrations
            .is_some_and(|max| self.s.migrations >= max)
    }

    fn fail_max(&mut self, why: &str) -> &'static str {
        self.delete_all_pods();
        let msg = format!(
            "{why}, but the job already made {} of at most {} migrations: ending it",
            self.s.migrations,
            self.o.job.spec.migration.max_migrations.unwrap_or_default()
        );
        self.finish(JobPhase::Failed, None, reason::MAX_MIGRATIONS, msg);
        "max-migrations"
    }

    /// Consecutive failed checkpoints since the newest completed one, and when the latest ended.
    fn failures(&self) -> (u32, Option<Timestamp>) {
        let newest_ok = self
            .o
            .checkpoints
            .iter()
            .filter(|c| ck_phase(c) == Some(CheckpointPhase::Completed))
            .map(|c| c.spec.seq)
            .max()
            .unwrap_or(0);
        let failed: Vec<&Checkpoint> = self
            .o
            .checkpoints
            .iter()
            .filter(|c| c.spec.seq > newest_ok)
            .filter(|c| ck_outcome(c, self.o.now, self.o.checkpoint_margin) == CkOutcome::Failed)
            .collect();
        let last = failed.iter().max_by_key(|c| c.spec.seq).map(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.completed_at.as_ref())
                .map_or(ck_created(c), |t| t.0)
        });
        (u32::try_from(failed.len()).unwrap_or(u32::MAX), last)
    }

    /// When the next checkpoint may be attempted after failures.
    fn backoff_until(&self) -> Option<Timestamp> {
        let (n, last) = self.failures();
        let last = last?;
        if n == 0 {
            return None;
        }
        let factor = 2i32.saturating_pow(n.saturating_sub(1).min(16));
        let wait = (BACKOFF_BASE * factor).min(BACKOFF_MAX);
        let until = last + wait;
        (until > self.o.now).then_some(until)
    }

    fn running(&mut self) -> &'static str {
        let pod = self.pod(self.s.pod.as_deref());
        let state = pod_state(pod);
        let node_name = self.s.node.clone().unwrap_or_default();
        match state {
            PodState::Ended {
                succeeded,
                exit_code,
            } => {
                let pod_reason = pod
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.reason.clone())
                    .unwrap_or_default();
                if exit_code.is_none() && is_admission_rejection(&pod_reason) {
                    // The kubelet refused the pod (our view of the node's room was stale):
                    // nothing ran, so place the job again.
                    self.s.pod = None;
                    self.s.node = None;
                    self.s.phase = Some(JobPhase::Placing);
                    self.note(
                        true,
                        reason::NO_IDLE_NODE,
                        format!("the kubelet on {node_name} refused the pod ({pod_reason}): placing the job again"),
                    );
                    self.requeue_in(SignedDuration::from_secs(1));
                    return "admission-rejected";
                }
                // The shim exits with the job's code.
                let (phase, why) = if succeeded {
                    (JobPhase::Succeeded, reason::SUCCEEDED)
                } else {
                    (JobPhase::Failed, reason::FAILED)
                };
                let message = match exit_code {
                    Some(code) => format!("the job exited with code {code} on {node_name}"),
                    None => format!(
                        "the pod failed on {node_name} before the job ran{}",
                        if pod_reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({pod_reason})")
                        }
                    ),
                };
                self.finish(phase, exit_code, why, message);
                return "complete";
            }
            PodState::Missing => {
                return self.node_lost(&format!(
                    "pod {} disappeared",
                    self.s.pod.as_deref().unwrap_or_default()
                ));
            }
            PodState::Starting | PodState::Running { .. } => {}
        }
        if self.s.stub_pod.is_none() {
            // Adopted a pod whose stub was never recorded: make sure it exists.
            if self.o.stub.is_none() {
                self.effects.push(Effect::EnsureStub);
            }
            self.s.stub_pod = Some(stub_name(self.name));
        }
        let ready = matches!(
            state,
            PodState::Running {
                ready_since: Some(_)
            }
        );
        if ready {
            self.set(
                condition::READY,
                true,
                "Running",
                &format!("running on {node_name}"),
            );
            // Leftovers of earlier generations (a failed restore, a lost node) go once the
            // current pod runs.
            self.delete_other_pods();
        }

        // A periodic checkpoint in flight.
        if let Some(ck) = self.checkpoint(self.s.pending_checkpoint.as_deref()) {
            match ck_outcome(ck, self.o.now, self.o.checkpoint_margin) {
                CkOutcome::Completed => {
                    self.s.last_checkpoint = ck.metadata.name.clone();
                    self.s.pending_checkpoint = None;
                }
                CkOutcome::Failed => {
                    self.s.pending_checkpoint = None;
                    let msg = ck
                        .status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_else(|| "deadline passed".into());
                    self.note(
                        true,
                        reason::CHECKPOINT_FAILED,
                        format!("periodic checkpoint {} failed: {msg}", ck.spec.seq),
                    );
                }
                CkOutcome::InFlight(deadline) => {
                    // One dump at a time: any eviction waits for this one.
                    self.requeue_at(deadline);
                    return "periodic-in-flight";
                }
            }
        } else {
            self.s.pending_checkpoint = None;
        }

        if let Some((why, msg)) = eviction_trigger(self.o.job, &node_name, self.node(&node_name)) {
            if why == CheckpointReason::NodeLost {
                // NB: a NotReady node may only be partitioned, its job still running. Wait the
                // grace period (the taint manager evicts the pod then too) before starting a
                // second copy elsewhere.
                let grace = SignedDuration::from_secs(i64::from(
                    self.o.job.spec.migration.grace_period_seconds,
                ));
                if let Some(since) = self.node(&node_name).and_then(|n| n.not_ready_since)
                    && since + grace > self.o.now
                {
                    self.set(condition::READY, false, "NodeNotReady", &msg);
                    self.requeue_at(since + grace);
                    return "node-not-ready-grace";
                }
                return self.node_lost(&msg);
            }
            if state == PodState::Starting {
                // Nothing has run yet: start afresh elsewhere instead of checkpointing.
                self.effects
                    .push(Effect::DeletePod(self.s.pod.clone().unwrap_or_default()));
                self.s.pod = None;
                self.s.node = None;
                self.s.phase = Some(JobPhase::Placing);
                self.note(
                    false,
                    reason::EVICTING,
                    format!("{msg} before the job started: placing it again"),
                );
                self.requeue_in(SignedDuration::from_secs(1));
                return "replace-unstarted";
            }
            if self.max_reached() {
                return self.fail_max(&msg);
            }
            if let Some(until) = self.backoff_until() {
                self.requeue_at(until);
                return "backoff";
            }
            return self.start_checkpoint(why, false, &msg);
        }

        let interval = self.o.job.spec.checkpoint.interval_seconds;
        if interval > 0 && ready {
            let base = self
                .o
                .checkpoints
                .iter()
                .map(ck_created)
                .chain(
                    pod.and_then(|p| p.metadata.creation_timestamp.as_ref())
                        .map(|t| t.0),
                )
                .max()
                .unwrap_or(self.o.now);
            let due = base + SignedDuration::from_secs(i64::from(interval));
            if due <= self.o.now && self.backoff_until().is_none() {
                return self.start_checkpoint(
                    CheckpointReason::Periodic,
                    true,
                    "periodic checkpoint",
                );
            }
            self.requeue_at(due.max(self.backoff_until().unwrap_or(due)));
        }
        "running"
    }

    fn start_checkpoint(
        &mut self,
        why: CheckpointReason,
        leave_running: bool,
        msg: &str,
    ) -> &'static str {
        let seq = self.next_seq();
        let node = self.s.node.clone().unwrap_or_default();
        self.effects.push(Effect::CreateCheckpoint {
            seq,
            pod: self.s.pod.clone().unwrap_or_default(),
            node: node.clone(),
            reason: why,
            leave_running,
        });
        self.s.pending_checkpoint = Some(checkpoint_name(self.name, seq));
        self.requeue_in(SignedDuration::from_secs(30));
        if leave_running {
            return "periodic-checkpoint";
        }
        self.s.phase = Some(JobPhase::Checkpointing);
        self.s.eviction_reason = Some(why);
        self.s.source_node = Some(node);
        let strategy = self.o.job.spec.migration.strategy;
        let text = format!("{msg}: checkpointing ({strategy}, checkpoint {seq})");
        self.set(condition::MIGRATING, true, reason::EVICTING, &text);
        self.note(false, reason::EVICTING, text);
        "evict"
    }

    fn node_lost(&mut self, msg: &str) -> &'static str {
        if self.max_reached() {
            return self.fail_max(msg);
        }
        let lost = self.s.node.clone();
        self.s.source_node = lost.clone();
        self.s.eviction_reason = Some(CheckpointReason::NodeLost);
        self.s.pending_checkpoint = None;
        let target = (self.o.idle_target)()
            .filter(|t| Some(t.as_str()) != lost.as_deref())
            .or_else(|| self.home_target(lost.as_deref()));
        let last = self.newest_completed_below(i64::MAX);
        match (last, target) {
            (Some(ck), Some(t)) => {
                self.create_pod(&t, Some(restore_from(ck)));
                self.s.phase = Some(JobPhase::Restoring);
                self.s.pending_checkpoint = ck.metadata.name.clone();
                self.s.last_checkpoint = ck.metadata.name.clone();
                let text = format!("{msg}: restoring from checkpoint {} on {t}", ck.spec.seq);
                self.set(
                    condition::READY,
                    false,
                    reason::RESTORED_FROM_CHECKPOINT,
                    &text,
                );
                self.set(
                    condition::MIGRATING,
                    true,
                    reason::RESTORED_FROM_CHECKPOINT,
                    &text,
                );
                self.note(true, reason::RESTORED_FROM_CHECKPOINT, text);
                "node-lost-restore"
            }
            (Some(ck), None) => {
                self.s.last_checkpoint = ck.metadata.name.clone();
                self.park(&format!("{msg}; checkpoint {} is kept", ck.spec.seq), None)
            }
            (None, _) if self.o.job.spec.migration.on_node_lost == NodeLostPolicy::Fail => {
                self.delete_all_pods();
                self.finish(
                    JobPhase::Failed,
                    None,
                    reason::FAILED,
                    format!("{msg} and there is no checkpoint to restore (onNodeLost: Fail)"),
                );
                "node-lost-fail"
            }
            (None, Some(t)) => {
                self.create_pod(&t, None);
                self.s.phase = Some(JobPhase::Restoring);
                let text =
                    format!("{msg} and there is no checkpoint: restarting the command on {t}");
                self.set(condition::READY, false, reason::RESTARTED, &text);
                self.set(condition::MIGRATING, true, reason::RESTARTED, &text);
                self.note(true, reason::RESTARTED, text);
                "node-lost-restart"
            }
            (None, None) => {
                self.delete_all_pods();
                self.s.phase = Some(JobPhase::Placing);
                self.s.pod = None;
                self.s.node = None;
                let text = format!(
                    "{msg} and there is no checkpoint: the command restarts when a node is idle"
                );
                self.set(condition::READY, false, reason::RESTARTED, &text);
                self.note(true, reason::RESTARTED, text);
                self.requeue_in(WAIT_POLL);
                "node-lost-wait"
            }
        }
    }

    /// Parks the job on the volume: its last checkpoint waits there, nothing runs.
    fn park(&mut self, why: &str, record: Option<MigrationRecord>) -> &'static str {
        self.delete_all_pods();
        if let Some(r) = record {
            self.push_history(r);
        }
        self.s.phase = Some(JobPhase::Parked);
        self.s.pod = None;
        self.s.node = None;
        self.s.pending_checkpoint = None;
        let text =
            format!("{why}: no idle node and no home to go to, parked on the checkpoint volume");
        self.set(condition::PARKED, true, reason::PARKED, &text);
        self.set(condition::READY, false, reason::PARKED, &text);
        self.set(condition::MIGRATING, false, reason::PARKED, &text);
        self.note(false, reason::PARKED, text);
        self.requeue_in(WAIT_POLL);
        "park"
    }

    fn push_history(&mut self, r: MigrationRecord) {
        self.s.history.push(r);
        let excess = self.s.history.len().saturating_sub(HISTORY_LIMIT);
        self.s.history.drain(..excess);
    }

    fn record(&self, ck: &Checkpoint, to: &str, downtime: Option<i64>) -> MigrationRecord {
        let st = ck.status.clone().unwrap_or_default();
        MigrationRecord {
            from: self
                .s
                .source_node
                .clone()
                .unwrap_or_else(|| ck.spec.node.clone()),
            to: to.into(),
            reason: self.s.eviction_reason.unwrap_or(ck.spec.reason),
            strategy: st.strategy.unwrap_or(ck.spec.strategy),
            freeze_millis: st.freeze_millis,
            downtime_millis: downtime,
            image_bytes: st.image_bytes,
            at: Time(self.o.now),
        }
    }

    fn checkpointing(&mut self) -> &'static str {
        let Some(ck) = self.checkpoint(self.s.pending_checkpoint.as_deref()) else {
            return self.checkpoint_failed(None, "the Checkpoint object is gone");
        };
        match ck_outcome(ck, self.o.now, self.o.checkpoint_margin) {
            CkOutcome::InFlight(deadline) => {
                self.requeue_at(deadline);
                "checkpoint-in-flight"
            }
            CkOutcome::Failed => {
                let msg = ck
                    .status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "no result before the deadline".into());
                self.checkpoint_failed(Some(ck), &msg)
            }
            CkOutcome::Completed => {
                self.s.last_checkpoint = ck.metadata.name.clone();
                let source = ck.spec.node.clone();
                let bytes = ck.status.as_ref().and_then(|s| s.image_bytes).unwrap_or(0);
                match self.target(Some(&source)) {
                    Some(t) => {
                        self.create_pod(&t, Some(restore_from(ck)));
                        self.s.phase = Some(JobPhase::Restoring);
                        let text = format!(
                            "checkpoint {} completed ({bytes} bytes): restoring on {t}",
                            ck.spec.seq
                        );
                        self.set(condition::READY, false, reason::CHECKPOINTED, &text);
                        self.set(condition::MIGRATING, true, reason::CHECKPOINTED, &text);
                        self.note(false, reason::CHECKPOINTED, text);
                        self.requeue_in(SignedDuration::from_secs(30));
                        "restore"
                    }
                    None => {
                        let r = self.record(ck, "", None);
                        self.park(&format!("checkpoint {} completed", ck.spec.seq), Some(r))
                    }
                }
            }
        }
    }

    fn checkpoint_failed(&mut self, ck: Option<&Checkpoint>, msg: &str) -> &'static str {
        self.s.phase = Some(JobPhase::Running);
        self.s.pending_checkpoint = None;
        self.s.eviction_reason = None;
        self.s.source_node = None;
        let seq = ck.map_or_else(|| "?".into(), |c| c.spec.seq.to_string());
        let (n, _) = self.failures();
        let text = format!(
            "checkpoint {seq} failed ({msg}): the job keeps running on {}; retrying with backoff (failure {n})",
            self.s.node.as_deref().unwrap_or_default()
        );
        self.set(
            condition::MIGRATING,
            false,
            reason::CHECKPOINT_FAILED,
            &text,
        );
        self.note(true, reason::CHECKPOINT_FAILED, text);
        if let Some(until) = self.backoff_until() {
            self.requeue_at(until);
        } else {
            self.requeue_in(BACKOFF_BASE);
        }
        "checkpoint-failed"
    }

    fn restoring(&mut self) -> &'static str {
        let pod = self.pod(self.s.pod.as_deref());
        let target = self.s.node.clone().unwrap_or_default();
        match pod_state(pod) {
            PodState::Running {
                ready_since: Some(ready),
            } => {
                self.delete_other_pods();
                let ck = self.checkpoint(self.s.pending_checkpoint.as_deref());
                let unparking = self
                    .s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == condition::MIGRATING && c.reason == reason::UNPARKED);
                let home = self.o.job.spec.home_node.as_deref() == Some(target.as_str());
                let (why, text) = match ck {
                    Some(ck) => {
                        let downtime = (self.s.eviction_reason != Some(CheckpointReason::NodeLost))
                            .then(|| ck.status.as_ref().and_then(|s| s.stopped_at.as_ref()))
                            .flatten()
                            .map(|stopped| ready.duration_since(stopped.0).as_millis() as i64);
                        let r = self.record(ck, &target, downtime);
                        self.s.migrations += 1;
                        self.completed = Some(r.clone());
                        self.push_history(r.clone());
                        let down = downtime.map_or(String::new(), |d| format!(", downtime {d} ms"));
                        if unparking {
                            (
                                reason::UNPARKED,
                                format!(
                                    "unparked onto {target} from checkpoint {}{down}",
                                    ck.spec.seq
                                ),
                            )
                        } else if r.reason == CheckpointReason::NodeLost {
                            (
                                reason::RESTORED_FROM_CHECKPOINT,
                                format!(
                                    "restored on {target} from checkpoint {} after losing {}",
                                    ck.spec.seq, r.from
                                ),
                            )
                        } else if home {
                            (
                                reason::WENT_HOME,
                                format!("went home to {target} from {}{down}", r.from),
                            )
                        } else {
                            (
                                reason::MIGRATED,
                                format!("migrated from {} to {target}{down}", r.from),
                            )
                        }
                    }
                    None => (
                        reason::RESTARTED,
                        format!("restarted the command on {target}"),
                    ),
                };
                if self.s.eviction_reason == Some(CheckpointReason::Manual) {
                    self.effects.push(Effect::ClearMigrateTo);
                }
                self.s.phase = Some(JobPhase::Running);
                self.s.pending_checkpoint = None;
                self.s.eviction_reason = None;
                self.s.source_node = None;
                self.set(
                    condition::READY,
                    true,
                    "Running",
                    &format!("running on {target}"),
                );
                self.set(condition::MIGRATING, false, why, &text);
                self.set(condition::PARKED, false, why, "");
                self.note(false, why, text);
                "restored"
            }
            PodState::Ended {
                succeeded: true,
                exit_code,
            } => {
                self.delete_other_pods();
                self.finish(
                    JobPhase::Succeeded,
                    exit_code,
                    reason::SUCCEEDED,
                    format!("the job exited with code 0 on {target}"),
                );
                "complete"
            }
            PodState::Ended {
                succeeded: false, ..
            }
            | PodState::Missing => self.restore_failed(pod),
            _ => {
                self.requeue_in(SignedDuration::from_secs(30));
                "restore-in-flight"
            }
        }
    }

    /// The restored pod failed before it became Ready: fall back to the previous good
    /// checkpoint, then restart per policy.
    fn restore_failed(&mut self, pod: Option<&Pod>) -> &'static str {
        let failed_node = self.s.node.clone().unwrap_or_default();
        let from = pod
            .and_then(|p| p.metadata.annotations.as_ref())
            .and_then(|a| a.get(ANNOTATION_RESTORE_FROM))
            .cloned()
            .or_else(|| self.s.pending_checkpoint.clone());
        let from_seq = self
            .o
            .checkpoints
            .iter()
            .find(|c| c.metadata.name.as_ref() == from.as_ref())
            .map_or(i64::MAX, |c| c.spec.seq);
        let older = from.as_ref().and(self.newest_completed_below(from_seq));
        let source = self.s.source_node.clone();
        let target = self.target(source.as_deref()).or_else(|| {
            self.node(&failed_node)
                .filter(|n| n.ready && !n.unschedulable && !n.owner_active())
                .map(|n| n.name.clone())
        });
        let what = from.clone().map_or_else(
            || "the restarted pod".to_string(),
            |f| format!("restore from {f}"),
        );
        if self.max_reached() {
            return self.fail_max(&format!("{what} failed on {failed_node}"));
        }
        match (older, target) {
            (Some(ck), Some(t)) => {
                self.create_pod(&t, Some(restore_from(ck)));
                self.s.pending_checkpoint = ck.metadata.name.clone();
                self.s.last_checkpoint = ck.metadata.name.clone();
                let text = format!(
                    "{what} failed on {failed_node}: falling back to checkpoint {} on {t}",
                    ck.spec.seq
                );
                self.set(condition::MIGRATING, true, reason::RESTORE_FAILED, &text);
                self.note(true, reason::RESTORE_FAILED, text);
                "restore-fallback"
            }
            (Some(ck), None) => {
                self.s.last_checkpoint = ck.metadata.name.clone();
                self.park(&format!("{what} failed on {failed_node}"), None)
            }
            (None, _) if self.o.job.spec.migration.on_node_lost == NodeLostPolicy::Fail => {
                self.finish(
                    JobPhase::Failed,
                    None,
                    reason::RESTORE_FAILED,
                    format!("{what} failed on {failed_node} and no older checkpoint exists (onNodeLost: Fail)"),
                );
                "restore-failed"
            }
            (None, Some(t)) => {
                self.create_pod(&t, None);
                self.s.pending_checkpoint = None;
                let text = format!(
                    "{what} failed on {failed_node} and no older checkpoint exists: restarting the command on {t}"
                );
                self.set(condition::MIGRATING, true, reason::RESTARTED, &text);
                self.note(true, reason::RESTORE_FAILED, text);
                "restore-restart"
            }
            (None, None) => {
                self.s.phase = Some(JobPhase::Placing);
                self.s.pod = None;
                self.s.node = None;
                self.s.pending_checkpoint = None;
                let text = format!(
                    "{what} failed on {failed_node}: the command restarts when a node is idle"
                );
                self.note(true, reason::RESTORE_FAILED, text);
                self.requeue_in(WAIT_POLL);
                "restore-wait"
            }
        }
    }

    fn parked(&mut self) -> &'static str {
        let last = self.checkpoint(self.s.last_checkpoint.as_deref());
        let Some(ck) = last.filter(|c| ck_phase(c) == Some(CheckpointPhase::Completed)) else {
            self.s.phase = Some(JobPhase::Placing);
            self.note(
                true,
                reason::RESTARTED,
                "the parked job's checkpoint is gone: the command restarts when a node is idle"
                    .into(),
            );
            self.requeue_in(SignedDuration::from_secs(1));
            return "parked-lost";
        };
        let Some(t) = (self.o.idle_target)() else {
            self.requeue_in(WAIT_POLL);
            return "parked";
        };
        self.create_pod(&t, Some(restore_from(ck)));
        self.s.phase = Some(JobPhase::Restoring);
        self.s.pending_checkpoint = ck.metadata.name.clone();
        let text = format!(
            "node {t} is idle: unparking from checkpoint {}",
            ck.spec.seq
        );
        self.set(condition::PARKED, false, reason::UNPARKED, &text);
        self.set(condition::MIGRATING, true, reason::UNPARKED, &text);
        "unpark"
    }

    /// Retention: completed checkpoints beyond `keep` and failed ones older than the newest
    /// completed one go, except any the status names or a live pod restores from.
    fn prune(&mut self) {
        let keep = usize::try_from(self.o.job.spec.checkpoint.keep.max(1)).unwrap_or(1);
        let mut completed: Vec<&Checkpoint> = self
            .o
            .checkpoints
            .iter()
            .filter(|c| ck_phase(c) == Some(CheckpointPhase::Completed))
            .collect();
        completed.sort_by_key(|c| std::cmp::Reverse(c.spec.seq));
        let newest_ok = completed.first().map_or(0, |c| c.spec.seq);
        let in_use = |name: &str| {
            self.s.last_checkpoint.as_deref() == Some(name)
                || self.s.pending_checkpoint.as_deref() == Some(name)
                || self.o.pods.iter().any(|p| {
                    !matches!(
                        pod_state(Some(p)),
                        PodState::Ended { .. } | PodState::Missing
                    ) && p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_RESTORE_FROM))
                        .is_some_and(|r| r == name)
                })
        };
        let mut doomed: Vec<String> = completed
            .iter()
            .skip(keep)
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        doomed.extend(
            self.o
                .checkpoints
                .iter()
                .filter(|c| c.spec.seq < newest_ok && ck_phase(c) == Some(CheckpointPhase::Failed))
                .filter_map(|c| c.metadata.name.clone()),
        );
        for name in doomed {
            let deleting = self.o.checkpoints.iter().any(|c| {
                c.metadata.name.as_deref() == Some(&name) && c.metadata.deletion_timestamp.is_some()
            });
            if !in_use(&name) && !deleting {
                self.effects.push(Effect::DeleteCheckpoint(name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{CheckpointBuilder, JobBuilder, NodeBuilder, PodBuilder, ts};
    use k8s_openapi::api::core::v1::Node;
    use lodger_api::{MigrationStrategy, TAINT_OWNER_ACTIVE};

    const NOW: i64 = 10_000;

    struct World {
        job: MigratableJob,
        pods: Vec<Pod>,
        stub: Option<Pod>,
        cks: Vec<Checkpoint>,
        nodes: Vec<NodeInfo>,
        target: Option<&'static str>,
    }

    impl World {
        fn new(job: JobBuilder) -> Self {
            let job = job.build();
            let stub = job
                .status
                .as_ref()
                .and_then(|s| s.stub_pod.as_ref())
                .map(|_| PodBuilder::stub(job.metadata.name.as_deref().unwrap()).build());
            Self {
                job,
                pods: vec![],
                stub,
                cks: vec![],
                nodes: vec![],
                target: None,
            }
        }
        fn pod(mut self, p: PodBuilder) -> Self {
            self.pods.push(p.build());
            self
        }
        fn ck(mut self, c: CheckpointBuilder) -> Self {
            self.cks.push(c.build());
            self
        }
        fn node(mut self, n: NodeBuilder) -> Self {
            let n: Node = n.build();
            self.nodes.push(NodeInfo::from_node(&n));
            self
        }
        fn target(mut self, t: &'static str) -> Self {
            self.target = Some(t);
            self
        }
        fn no_stub(mut self) -> Self {
            self.stub = None;
            self
        }
        fn decide(&self) -> Decision {
            decide(Observed {
                job: &self.job,
                pods: &self.pods,
                stub: self.stub.as_ref(),
                checkpoints: &self.cks,
                nodes: &self.nodes,
                idle_target: &|| self.target.map(String::from),
                now: ts(NOW),
                checkpoint_margin: SignedDuration::from_secs(30),
                default_min_idle: SignedDuration::from_secs(30),
            })
        }
    }

    fn running(job: JobBuilder) -> World {
        World::new(job.running_on("a")).pod(PodBuilder::workload("j", 1, "a").ready_at(100))
    }

    fn creates_pod(d: &Decision) -> Option<(i64, String, Option<String>)> {
        d.effects.iter().find_map(|e| match e {
            Effect::CreatePod {
                generation,
                node,
                restore,
            } => Some((
                *generation,
                node.clone(),
                restore.as_ref().map(|r| r.checkpoint.clone()),
            )),
            _ => None,
        })
    }

    fn creates_checkpoint(d: &Decision) -> Option<(i64, CheckpointReason, bool)> {
        d.effects.iter().find_map(|e| match e {
            Effect::CreateCheckpoint {
                seq,
                reason,
                leave_running,
                ..
            } => Some((*seq, *reason, *leave_running)),
            _ => None,
        })
    }

    fn reasons(d: &Decision) -> Vec<&'static str> {
        d.notes.iter().map(|n| n.reason).collect()
    }

    /// A waiting job is placed on the plan's idle node with its stub, or waits in Placing
    /// (announced once). If this breaks, jobs never start or start without a home stub.
    #[test]
    fn place_or_wait() {
        let d = World::new(JobBuilder::new("j")).target("n1").decide();
        assert_eq!(d.effects[0], Effect::EnsureStub);
        assert_eq!(creates_pod(&d), Some((1, "n1".into(), None)));
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        assert_eq!(d.status.pod.as_deref(), Some("j-1"));
        assert_eq!(d.status.stub_pod.as_deref(), Some("j-home"));
        assert_eq!(reasons(&d), [reason::PLACED]);

        let d = World::new(JobBuilder::new("j")).decide();
        assert!(d.effects.is_empty());
        assert_eq!(d.status.phase, Some(JobPhase::Placing));
        assert_eq!(reasons(&d), [reason::NO_IDLE_NODE]);
        assert!(d.requeue.is_some());
        // Already Placing: no second Event.
        let d = World::new(JobBuilder::new("j").phase(JobPhase::Placing)).decide();
        assert!(d.notes.is_empty());
    }

    /// Every eviction trigger on the job's node leads to a Checkpoint with the matching reason,
    /// and a quiet node or a tolerated NoExecute taint to none. If a row breaks, the job is
    /// either not moved off a returning owner's desktop or moved for nothing.
    #[test]
    fn eviction_trigger_table() {
        let rows: Vec<(&str, JobBuilder, NodeBuilder, Option<CheckpointReason>)> = vec![
            (
                "quiet",
                JobBuilder::new("j"),
                NodeBuilder::new("a").idle_since(0),
                None,
            ),
            (
                "owner returned",
                JobBuilder::new("j"),
                NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"),
                Some(CheckpointReason::OwnerReturned),
            ),
            (
                "NoExecute taint",
                JobBuilder::new("j"),
                NodeBuilder::new("a").taint("maint", "NoExecute"),
                Some(CheckpointReason::NodeTainted),
            ),
            (
                "tolerated NoExecute",
                JobBuilder::new("j").tolerate("maint"),
                NodeBuilder::new("a").taint("maint", "NoExecute"),
                None,
            ),
            (
                "NoSchedule taint is no trigger",
                JobBuilder::new("j"),
                NodeBuilder::new("a").taint("x", "NoSchedule"),
                None,
            ),
            (
                "cordon",
                JobBuilder::new("j"),
                NodeBuilder::new("a").cordoned(),
                Some(CheckpointReason::Drain),
            ),
            (
                "manual",
                JobBuilder::new("j").annotate(ANNOTATION_MIGRATE_TO, ""),
                NodeBuilder::new("a").idle_since(0),
                Some(CheckpointReason::Manual),
            ),
        ];
        for (name, job, node, want) in rows {
            let d = running(job).node(node).decide();
            match want {
                None => {
                    assert!(d.effects.is_empty(), "{name}: {:?}", d.effects);
                    assert_eq!(d.status.phase, Some(JobPhase::Running), "{name}");
                }
                Some(r) => {
                    assert_eq!(creates_checkpoint(&d), Some((1, r, false)), "{name}");
                    assert_eq!(d.status.phase, Some(JobPhase::Checkpointing), "{name}");
                    assert_eq!(
                        d.status.pending_checkpoint.as_deref(),
                        Some("j-ckpt-1"),
                        "{name}"
                    );
                    assert_eq!(d.status.eviction_reason, Some(r), "{name}");
                    assert_eq!(d.status.source_node.as_deref(), Some("a"), "{name}");
                    assert_eq!(reasons(&d), [reason::EVICTING], "{name}");
                }
            }
        }
    }

    fn checkpointing(job: JobBuilder) -> World {
        World::new(job.running_on("a").status(|s| {
            s.phase = Some(JobPhase::Checkpointing);
            s.pending_checkpoint = Some("j-ckpt-1".into());
            s.eviction_reason = Some(CheckpointReason::OwnerReturned);
            s.source_node = Some("a".into());
        }))
        .pod(PodBuilder::workload("j", 1, "a").ready_at(100))
        .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
    }

    /// Where a job goes when its checkpoint completes: the idle node, else home, else Parked
    /// (source pod deleted, history records the park); a manual target wins when it can take
    /// the job. If this breaks, evicted jobs are lost or sent to a busy machine.
    #[test]
    fn target_after_checkpoint() {
        let done = || CheckpointBuilder::new("j", 1).completed(4096, 9_000);
        // Idle node.
        let d = checkpointing(JobBuilder::new("j").home("h"))
            .node(NodeBuilder::new("h"))
            .ck(done())
            .target("b")
            .decide();
        assert_eq!(
            creates_pod(&d),
            Some((2, "b".into(), Some("j-ckpt-1".into())))
        );
        assert_eq!(d.status.phase, Some(JobPhase::Restoring));
        assert_eq!(d.status.last_checkpoint.as_deref(), Some("j-ckpt-1"));
        assert!(
            !d.effects.iter().any(|e| matches!(e, Effect::DeletePod(_))),
            "source stays until the target is Ready"
        );
        // Home.
        let d = checkpointing(JobBuilder::new("j").home("h"))
            .node(NodeBuilder::new("h"))
            .ck(done())
            .decide();
        assert_eq!(
            creates_pod(&d),
            Some((2, "h".into(), Some("j-ckpt-1".into())))
        );
        // Home not Ready: park.
        let d = checkpointing(JobBuilder::new("j").home("h"))
            .node(NodeBuilder::new("h").not_ready())
            .ck(done())
            .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Parked));
        assert_eq!(d.effects, vec![Effect::DeletePod("j-1".into())]);
        assert_eq!(d.status.history.last().unwrap().to, "");
        assert_eq!(d.status.history.last().unwrap().image_bytes, Some(4096));
        assert_eq!(reasons(&d), [reason::PARKED]);
        assert_eq!(d.status.migrations, 0);
        // Manual target beats the plan.
        let d = checkpointing(JobBuilder::new("j").annotate(ANNOTATION_MIGRATE_TO, "m"))
            .node(NodeBuilder::new("m"))
            .ck(done())
            .target("b")
            .decide();
        assert_eq!(creates_pod(&d).unwrap().1, "m");
        // Manual target that is cordoned: fall back to the plan.
        let d = checkpointing(JobBuilder::new("j").annotate(ANNOTATION_MIGRATE_TO, "m"))
            .node(NodeBuilder::new("m").cordoned())
            .ck(done())
            .target("b")
            .decide();
        assert_eq!(creates_pod(&d).unwrap().1, "b");
    }

    /// A failed (or overdue) checkpoint leaves the job Running where it was, with a Warning and
    /// backoff before the next try. If this breaks, a job whose dump failed is marked moved, or
    /// the operator hammers a failing node with checkpoints.
    #[test]
    fn checkpoint_failure_keeps_job_running_with_backoff() {
        let d = checkpointing(JobBuilder::new("j"))
            .ck(CheckpointBuilder::new("j", 1).failed("criu: EPERM", NOW))
            .target("b")
            .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        assert_eq!(d.status.node.as_deref(), Some("a"));
        assert!(d.status.pending_checkpoint.is_none());
        assert!(creates_pod(&d).is_none());
        assert_eq!(reasons(&d), [reason::CHECKPOINT_FAILED]);
        assert_eq!(d.requeue, Some(BACKOFF_BASE));
        let migrating = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::MIGRATING)
            .unwrap();
        assert_eq!(
            (migrating.status.as_str(), migrating.reason.as_str()),
            ("False", reason::CHECKPOINT_FAILED)
        );

        // Overdue: still InProgress past deadline (60 s) + margin (30 s).
        let overdue = CheckpointBuilder::new("j", 1)
            .in_progress()
            .created(NOW - 91);
        let d = checkpointing(JobBuilder::new("j")).ck(overdue).decide();
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        let in_time = CheckpointBuilder::new("j", 1)
            .in_progress()
            .created(NOW - 80);
        let d = checkpointing(JobBuilder::new("j")).ck(in_time).decide();
        assert_eq!(d.status.phase, Some(JobPhase::Checkpointing));
        assert_eq!(d.requeue, Some(SignedDuration::from_secs(10)));

        // Back in Running with the trigger still there: no new checkpoint during backoff...
        let w = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
            .ck(CheckpointBuilder::new("j", 1).failed("x", NOW - 15))
            .ck(CheckpointBuilder::new("j", 2).failed("x", NOW - 5));
        let d = w.decide();
        assert!(creates_checkpoint(&d).is_none());
        assert_eq!(
            d.requeue,
            Some(SignedDuration::from_secs(15)),
            "second failure waits 20 s"
        );
        // ...and after it, checkpoint 3.
        let w = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
            .ck(CheckpointBuilder::new("j", 1).failed("x", NOW - 100));
        assert_eq!(
            creates_checkpoint(&w.decide()),
            Some((2, CheckpointReason::OwnerReturned, false))
        );
    }

    fn restoring(job: JobBuilder, reason: CheckpointReason) -> World {
        World::new(job.status(|s| {
            s.phase = Some(JobPhase::Restoring);
            s.node = Some("b".into());
            s.pod = Some("j-2".into());
            s.pod_generation = 2;
            s.stub_pod = Some("j-home".into());
            s.pending_checkpoint = Some("j-ckpt-1".into());
            s.last_checkpoint = Some("j-ckpt-1".into());
            s.eviction_reason = Some(reason);
            s.source_node = Some("a".into());
        }))
        .pod(PodBuilder::workload("j", 1, "a").failed(137))
        .ck(CheckpointBuilder::new("j", 1).completed(1 << 20, 9_000))
    }

    /// Once the restored pod is Running and Ready the source pod is deleted, the move is
    /// recorded (downtime = Ready time - stoppedAt) and the right Event says how it went; a
    /// manual request's annotation is cleared. If this breaks, residual pods stay on vacated
    /// desktops or the history lies about downtime.
    #[test]
    fn restore_completes_and_records() {
        let w = restoring(JobBuilder::new("j"), CheckpointReason::OwnerReturned).pod(
            PodBuilder::workload("j", 2, "b")
                .restore_from("j-ckpt-1")
                .ready_at(9_002),
        );
        let d = w.decide();
        assert_eq!(d.effects, vec![Effect::DeletePod("j-1".into())]);
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        assert_eq!(d.status.migrations, 1);
        let h = d.status.history.last().unwrap();
        assert_eq!(
            (h.from.as_str(), h.to.as_str(), h.reason),
            ("a", "b", CheckpointReason::OwnerReturned)
        );
        assert_eq!(
            (h.freeze_millis, h.downtime_millis, h.image_bytes),
            (Some(120), Some(2_000), Some(1 << 20))
        );
        assert_eq!(h.strategy, MigrationStrategy::StopAndCopy);
        assert_eq!(reasons(&d), [reason::MIGRATED]);
        assert!(d.status.pending_checkpoint.is_none() && d.status.source_node.is_none());
        assert_eq!(d.completed.as_ref(), Some(h));

        // Not Ready yet: nothing is deleted.
        let w = restoring(JobBuilder::new("j"), CheckpointReason::OwnerReturned).pod(
            PodBuilder::workload("j", 2, "b")
                .restore_from("j-ckpt-1")
                .running(),
        );
        let d = w.decide();
        assert!(d.effects.is_empty());
        assert_eq!(d.status.phase, Some(JobPhase::Restoring));

        // Home: WentHome; manual: annotation cleared.
        let w = restoring(
            JobBuilder::new("j")
                .home("b")
                .annotate(ANNOTATION_MIGRATE_TO, "b"),
            CheckpointReason::Manual,
        )
        .pod(
            PodBuilder::workload("j", 2, "b")
                .restore_from("j-ckpt-1")
                .ready_at(9_001),
        );
        let d = w.decide();
        assert_eq!(reasons(&d), [reason::WENT_HOME]);
        assert!(d.effects.contains(&Effect::ClearMigrateTo));
    }

    /// A restored pod that fails before Ready falls back to the previous good checkpoint, then
    /// restarts per policy. If this breaks, one corrupt image loses the job for good, or a
    /// Fail policy is ignored.
    #[test]
    fn restore_failure_falls_back_then_restarts() {
        let w = restoring(JobBuilder::new("j"), CheckpointReason::OwnerReturned)
            .ck(CheckpointBuilder::new("j", 2).completed(1, 9_500))
            .pod(
                PodBuilder::workload("j", 2, "b")
                    .restore_from("j-ckpt-2")
                    .failed(1),
            )
            .node(NodeBuilder::new("b").idle_since(0))
            .target("c");
        let d = w.decide();
        assert_eq!(
            creates_pod(&d),
            Some((3, "c".into(), Some("j-ckpt-1".into())))
        );
        assert_eq!(reasons(&d), [reason::RESTORE_FAILED]);
        assert_eq!(d.status.pending_checkpoint.as_deref(), Some("j-ckpt-1"));

        // Restoring from the oldest: restart the command afresh.
        let w = restoring(JobBuilder::new("j"), CheckpointReason::OwnerReturned)
            .pod(
                PodBuilder::workload("j", 2, "b")
                    .restore_from("j-ckpt-1")
                    .failed(1),
            )
            .target("c");
        let d = w.decide();
        assert_eq!(creates_pod(&d), Some((3, "c".into(), None)));
        assert!(d.status.pending_checkpoint.is_none());

        // Policy Fail.
        let w = restoring(
            JobBuilder::new("j").fail_on_node_lost(),
            CheckpointReason::OwnerReturned,
        )
        .pod(
            PodBuilder::workload("j", 2, "b")
                .restore_from("j-ckpt-1")
                .failed(1),
        )
        .target("c");
        assert_eq!(w.decide().status.phase, Some(JobPhase::Failed));
    }

    /// A lost (NotReady) node: restore from the last checkpoint if there is one, else restart
    /// or fail per onNodeLost, and say which. If this breaks, a crashed desktop silently loses
    /// the job or restarts it although a checkpoint exists.
    #[test]
    fn node_lost_table() {
        let lost = || NodeBuilder::new("a").not_ready();
        let d = running(JobBuilder::new("j"))
            .node(lost())
            .ck(CheckpointBuilder::new("j", 1)
                .reason(CheckpointReason::Periodic)
                .completed(10, 50))
            .target("b")
            .decide();
        assert_eq!(
            creates_pod(&d),
            Some((2, "b".into(), Some("j-ckpt-1".into())))
        );
        assert_eq!(d.status.eviction_reason, Some(CheckpointReason::NodeLost));
        assert_eq!(reasons(&d), [reason::RESTORED_FROM_CHECKPOINT]);
        let c = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::MIGRATING)
            .unwrap();
        assert_eq!(c.reason, reason::RESTORED_FROM_CHECKPOINT);

        let d = running(JobBuilder::new("j"))
            .node(lost())
            .target("b")
            .decide();
        assert_eq!(creates_pod(&d), Some((2, "b".into(), None)));
        assert_eq!(reasons(&d), [reason::RESTARTED]);

        let d = running(JobBuilder::new("j").fail_on_node_lost())
            .node(lost())
            .target("b")
            .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Failed));
        assert!(creates_pod(&d).is_none());

        // NotReady for less than the grace period (30 s): wait, it may only be partitioned.
        let d = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a").not_ready_since(NOW - 10))
            .target("b")
            .decide();
        assert!(d.effects.is_empty(), "{:?}", d.effects);
        assert_eq!(d.requeue, Some(SignedDuration::from_secs(20)));
        let d = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a").not_ready_since(NOW - 31))
            .target("b")
            .decide();
        assert_eq!(creates_pod(&d), Some((2, "b".into(), None)));

        // A node that vanished from the cluster counts as lost.
        let d = running(JobBuilder::new("j")).target("b").decide();
        assert_eq!(d.status.eviction_reason, Some(CheckpointReason::NodeLost));

        // Nowhere to go, checkpoint exists: parked.
        let d = running(JobBuilder::new("j"))
            .node(lost())
            .ck(CheckpointBuilder::new("j", 1)
                .reason(CheckpointReason::Periodic)
                .completed(10, 50))
            .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Parked));
        assert_eq!(d.status.last_checkpoint.as_deref(), Some("j-ckpt-1"));
    }

    /// A parked job resumes by itself on an idle node and announces Unparked when Ready; it
    /// stays parked (using nothing) while no node is idle. If this breaks, parked jobs wait
    /// forever.
    #[test]
    fn park_and_unpark() {
        let parked = JobBuilder::new("j").status(|s| {
            s.phase = Some(JobPhase::Parked);
            s.last_checkpoint = Some("j-ckpt-1".into());
            s.pod_generation = 1;
            s.stub_pod = Some("j-home".into());
            s.source_node = Some("a".into());
            s.eviction_reason = Some(CheckpointReason::OwnerReturned);
        });
        let w = World::new(parked.clone()).ck(CheckpointBuilder::new("j", 1).completed(1, 9_000));
        let d = w.decide();
        assert!(d.effects.is_empty());
        assert_eq!(d.status.phase, Some(JobPhase::Parked));
        let d = World::new(parked)
            .ck(CheckpointBuilder::new("j", 1).completed(1, 9_000))
            .target("c")
            .decide();
        assert_eq!(
            creates_pod(&d),
            Some((2, "c".into(), Some("j-ckpt-1".into())))
        );
        assert_eq!(d.status.phase, Some(JobPhase::Restoring));
        // Feed the decision back with the pod Ready: Unparked.
        let mut job = JobBuilder::new("j").build();
        job.status = Some(d.status);
        let w = World {
            job,
            pods: vec![
                PodBuilder::workload("j", 2, "c")
                    .restore_from("j-ckpt-1")
                    .ready_at(9_990)
                    .build(),
            ],
            stub: Some(PodBuilder::stub("j").build()),
            cks: vec![CheckpointBuilder::new("j", 1).completed(1, 9_000).build()],
            nodes: vec![],
            target: None,
        };
        let d = w.decide();
        assert_eq!(reasons(&d), [reason::UNPARKED]);
        assert_eq!(d.status.history.last().unwrap().from, "a");
        assert_eq!(d.status.history.last().unwrap().to, "c");
    }

    /// maxMigrations: an eviction past the limit ends the job as Failed instead of moving it.
    /// If this breaks, a job ping-pongs between desktops forever.
    #[test]
    fn max_migrations_ends_the_job() {
        let d = running(
            JobBuilder::new("j")
                .max_migrations(2)
                .status(|s| s.migrations = 2),
        )
        .node(NodeBuilder::new("a").cordoned())
        .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Failed));
        assert_eq!(d.effects, vec![Effect::DeletePod("j-1".into())]);
        assert_eq!(reasons(&d), [reason::MAX_MIGRATIONS]);
        let d = running(
            JobBuilder::new("j")
                .max_migrations(2)
                .status(|s| s.migrations = 1),
        )
        .node(NodeBuilder::new("a").cordoned())
        .decide();
        assert_eq!(d.status.phase, Some(JobPhase::Checkpointing));
    }

    /// The job's end comes from the workload container's exit code. If this breaks, a failed
    /// job shows Succeeded or the exit code is lost.
    #[test]
    fn completion_carries_exit_code() {
        let w = World::new(JobBuilder::new("j").running_on("a"))
            .pod(PodBuilder::workload("j", 1, "a").failed(3))
            .node(NodeBuilder::new("a"));
        let d = w.decide();
        assert_eq!(
            (d.status.phase, d.status.exit_code),
            (Some(JobPhase::Failed), Some(3))
        );
        let w = World::new(JobBuilder::new("j").running_on("a"))
            .pod(PodBuilder::workload("j", 1, "a").succeeded())
            .node(NodeBuilder::new("a"));
        let d = w.decide();
        assert_eq!(
            (d.status.phase, d.status.exit_code),
            (Some(JobPhase::Succeeded), Some(0))
        );
        let complete = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::COMPLETE)
            .unwrap();
        assert_eq!(complete.status, "True");
        // Terminal: nothing more happens.
        let mut job = JobBuilder::new("j").build();
        job.status = Some(d.status);
        let d2 = World {
            job,
            pods: vec![],
            stub: None,
            cks: vec![],
            nodes: vec![],
            target: Some("x"),
        }
        .decide();
        assert!(d2.effects.is_empty() && d2.notes.is_empty());
    }

    /// Periodic checkpoints leave the job running, come every intervalSeconds, and block
    /// evictions while in flight. If this breaks, a lost node loses hours of work or the shim
    /// is asked for two dumps at once.
    #[test]
    fn periodic_checkpoints() {
        // Pod created at 0, interval 3600 s, now 10000: due.
        let d = running(JobBuilder::new("j").interval(3600))
            .node(NodeBuilder::new("a"))
            .decide();
        assert_eq!(
            creates_checkpoint(&d),
            Some((1, CheckpointReason::Periodic, true))
        );
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        // Last checkpoint at 9000: next at 12600.
        let d = running(JobBuilder::new("j").interval(3600))
            .node(NodeBuilder::new("a"))
            .ck(CheckpointBuilder::new("j", 1)
                .reason(CheckpointReason::Periodic)
                .created(9_000)
                .completed(1, 9_000))
            .decide();
        assert!(creates_checkpoint(&d).is_none());
        assert_eq!(d.requeue, Some(SignedDuration::from_secs(2_600)));
        // In flight + owner returns: wait for it.
        let d = running(
            JobBuilder::new("j")
                .interval(3600)
                .status(|s| s.pending_checkpoint = Some("j-ckpt-1".into())),
        )
        .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
        .ck(CheckpointBuilder::new("j", 1)
            .reason(CheckpointReason::Periodic)
            .created(NOW - 5)
            .in_progress())
        .decide();
        assert!(creates_checkpoint(&d).is_none());
        // Completed: becomes lastCheckpoint, then the eviction starts.
        let d = running(
            JobBuilder::new("j")
                .interval(3600)
                .status(|s| s.pending_checkpoint = Some("j-ckpt-1".into())),
        )
        .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
        .ck(CheckpointBuilder::new("j", 1)
            .reason(CheckpointReason::Periodic)
            .created(NOW - 5)
            .completed(1, NOW - 5))
        .decide();
        assert_eq!(d.status.last_checkpoint.as_deref(), Some("j-ckpt-1"));
        assert_eq!(
            creates_checkpoint(&d),
            Some((2, CheckpointReason::OwnerReturned, false))
        );
    }

    /// Retention keeps `keep` completed checkpoints and never deletes one that status names or
    /// a live pod restores from. If this breaks, the volume fills up, or a restore loses its
    /// image mid-way.
    #[test]
    fn retention() {
        let mut w = running(
            JobBuilder::new("j")
                .keep(2)
                .status(|s| s.last_checkpoint = Some("j-ckpt-4".into())),
        )
        .node(NodeBuilder::new("a"));
        for seq in 1..=4 {
            w = w.ck(CheckpointBuilder::new("j", seq)
                .created(seq)
                .completed(1, seq));
        }
        let d = w.decide();
        let deleted: Vec<&Effect> = d
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::DeleteCheckpoint(_)))
            .collect();
        assert_eq!(
            deleted,
            [
                &Effect::DeleteCheckpoint("j-ckpt-2".into()),
                &Effect::DeleteCheckpoint("j-ckpt-1".into())
            ]
        );
        // A pod restoring from checkpoint 1 protects it.
        let w = w.pod(
            PodBuilder::workload("j", 0, "x")
                .restore_from("j-ckpt-1")
                .running(),
        );
        let d = w.decide();
        assert!(
            !d.effects
                .contains(&Effect::DeleteCheckpoint("j-ckpt-1".into()))
        );
    }

    /// State written by an earlier reconcile whose status write was lost is adopted, not
    /// duplicated: a pod newer than status means Running, an in-flight Checkpoint means
    /// Checkpointing. If this breaks, an operator restart mid-migration creates a second pod or
    /// a second Checkpoint.
    #[test]
    fn adopts_objects_from_a_lost_status_write() {
        let w = World::new(JobBuilder::new("j").phase(JobPhase::Placing))
            .pod(PodBuilder::workload("j", 1, "n1").running())
            .node(NodeBuilder::new("n1").idle_since(0))
            .target("n2");
        let d = w.decide();
        assert_eq!(
            d.effects,
            vec![Effect::EnsureStub],
            "no second pod; the stub is ensured"
        );
        assert_eq!(d.status.phase, Some(JobPhase::Running));
        assert_eq!(d.status.node.as_deref(), Some("n1"));

        let w = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a").taint(TAINT_OWNER_ACTIVE, "NoSchedule"))
            .ck(CheckpointBuilder::new("j", 1).created(NOW - 2));
        let d = w.decide();
        assert!(creates_checkpoint(&d).is_none());
        assert_eq!(d.status.phase, Some(JobPhase::Checkpointing));
        assert_eq!(d.status.pending_checkpoint.as_deref(), Some("j-ckpt-1"));
    }

    /// Deciding again on the state the last decision produced changes nothing. If this breaks,
    /// every reconcile writes (and the API server sees a hot loop).
    #[test]
    fn deciding_twice_is_a_fixed_point() {
        let w = running(JobBuilder::new("j")).node(NodeBuilder::new("a").idle_since(0));
        let d1 = w.decide();
        let mut job = w.job.clone();
        job.status = Some(d1.status.clone());
        let w2 = World { job, ..w };
        let d2 = w2.decide();
        assert!(d2.effects.is_empty() && d2.notes.is_empty());
        assert_eq!(d2.status, d1.status);
    }

    /// A pod the kubelet refused at admission (OutOfcpu) is placed again; one that failed
    /// without a reason we know ends the job with a message saying nothing ran. If this breaks,
    /// a stale view of a node's room fails jobs that never started.
    #[test]
    fn admission_rejection_replaces() {
        let mut rejected = PodBuilder::workload("j", 1, "a").build();
        rejected.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Failed", "reason": "OutOfcpu"}))
                .unwrap(),
        );
        let mut w = World::new(JobBuilder::new("j").running_on("a")).node(NodeBuilder::new("a"));
        w.pods.push(rejected);
        let d = w.decide();
        assert_eq!(d.step, "admission-rejected");
        assert_eq!(d.status.phase, Some(JobPhase::Placing));
        let mut other = PodBuilder::workload("j", 1, "a").build();
        other.status =
            Some(serde_json::from_value(serde_json::json!({"phase": "Failed"})).unwrap());
        let mut w = World::new(JobBuilder::new("j").running_on("a")).node(NodeBuilder::new("a"));
        w.pods.push(other);
        let d = w.decide();
        assert_eq!(d.status.phase, Some(JobPhase::Failed));
        assert!(
            d.notes[0].message.contains("before the job ran"),
            "{}",
            d.notes[0].message
        );
    }

    /// A pod that never started is re-placed rather than checkpointed; deleting the stub ends
    /// the job. If this breaks, the agent is asked to dump a process that does not exist, or a
    /// job outlives its stub.
    #[test]
    fn unstarted_pod_and_deleted_stub() {
        let w = World::new(JobBuilder::new("j").running_on("a"))
            .pod(PodBuilder::workload("j", 1, "a"))
            .node(NodeBuilder::new("a").cordoned());
        let d = w.decide();
        assert_eq!(d.effects, vec![Effect::DeletePod("j-1".into())]);
        assert_eq!(d.status.phase, Some(JobPhase::Placing));
        let w = running(JobBuilder::new("j"))
            .node(NodeBuilder::new("a"))
            .no_stub();
        let d = w.decide();
        assert_eq!(d.status.phase, Some(JobPhase::Failed));
        assert_eq!(d.effects, vec![Effect::DeletePod("j-1".into())]);
    }
}

#[cfg(test)]
mod laziness {
    use super::*;
    use crate::fixtures::{JobBuilder, NodeBuilder, PodBuilder, ts};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A running job on a quiet node never asks for the (whole-cluster) placement plan; a
    /// waiting one does, once. If this breaks, every reconcile of every running job pays for
    /// placing all waiting jobs.
    #[test]
    fn plan_is_computed_only_when_a_target_is_needed() {
        let calls = AtomicUsize::new(0);
        let target = || {
            calls.fetch_add(1, Ordering::Relaxed);
            Some("n1".to_string())
        };
        let node = NodeInfo::from_node(&NodeBuilder::new("a").idle_since(0).build());
        let running = JobBuilder::new("j").running_on("a").build();
        let pods = [PodBuilder::workload("j", 1, "a").ready_at(100).build()];
        let stub = PodBuilder::stub("j").build();
        let observe = |job, pods| Observed {
            job,
            pods,
            stub: Some(&stub),
            checkpoints: &[],
            nodes: std::slice::from_ref(&node),
            idle_target: &target,
            now: ts(10_000),
            checkpoint_margin: SignedDuration::from_secs(30),
            default_min_idle: SignedDuration::from_secs(30),
        };
        let d = decide(observe(&running, &pods));
        assert_eq!(d.step, "running");
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let waiting = JobBuilder::new("j").build();
        let d = decide(observe(&waiting, &[]));
        assert_eq!(d.step, "place");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}

#[cfg(test)]
mod lifecycle {
    use super::*;
    use crate::desired;
    use crate::fixtures::{JobBuilder, NodeBuilder, PodBuilder, ts};
    use lodger_api::{CheckpointStatus, TAINT_OWNER_ACTIVE};

    /// A tiny cluster the machine's effects are applied to: pods and Checkpoints appear and go
    /// as the API server would make them.
    struct Cluster {
        job: MigratableJob,
        pods: Vec<Pod>,
        stub: Option<Pod>,
        cks: Vec<Checkpoint>,
        nodes: Vec<NodeInfo>,
        now: i64,
    }

    impl Cluster {
        fn step(&mut self, target: Option<&str>) -> Decision {
            let target = target.map(String::from);
            let idle = || target.clone();
            let d = decide(Observed {
                job: &self.job,
                pods: &self.pods,
                stub: self.stub.as_ref(),
                checkpoints: &self.cks,
                nodes: &self.nodes,
                idle_target: &idle,
                now: ts(self.now),
                checkpoint_margin: SignedDuration::from_secs(30),
                default_min_idle: SignedDuration::from_secs(30),
            });
            let settings = crate::config::Settings::for_tests("/unused".into());
            for e in &d.effects {
                match e {
                    Effect::EnsureStub => self.stub = Some(PodBuilder::stub("j").build()),
                    Effect::CreatePod {
                        generation,
                        node,
                        restore,
                    } => {
                        let mut pod = desired::workload_pod(
                            &self.job,
                            &settings,
                            *generation,
                            node,
                            restore.as_ref(),
                        );
                        pod.status = PodBuilder::workload("j", *generation, node).build().status;
                        pod.metadata.creation_timestamp = Some(Time(ts(self.now)));
                        self.pods.push(pod);
                    }
                    Effect::CreateCheckpoint {
                        seq,
                        pod,
                        node,
                        reason,
                        leave_running,
                    } => {
                        let mut ck = desired::checkpoint(
                            &self.job,
                            pod,
                            node,
                            *seq,
                            *reason,
                            *leave_running,
                        );
                        ck.metadata.creation_timestamp = Some(Time(ts(self.now)));
                        self.cks.push(ck);
                    }
                    Effect::DeletePod(name) => self
                        .pods
                        .retain(|p| p.metadata.name.as_deref() != Some(name)),
                    Effect::DeleteCheckpoint(name) => self
                        .cks
                        .retain(|c| c.metadata.name.as_deref() != Some(name)),
                    Effect::ClearMigrateTo => {}
                }
            }
            self.job.status = Some(d.status.clone());
            self.now += 1;
            d
        }
        fn pod_ready(&mut self, name: &str) {
            let ready = PodBuilder::workload("j", 0, "x")
                .ready_at(self.now)
                .build()
                .status;
            self.pods
                .iter_mut()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap()
                .status = ready;
        }
        fn agent_completes(&mut self, seq: i64) {
            let now = self.now;
            let ck = self.cks.iter_mut().find(|c| c.spec.seq == seq).unwrap();
            ck.status = Some(CheckpointStatus {
                phase: Some(CheckpointPhase::Completed),
                path: Some(format!("ns/j/{seq}")),
                image_bytes: Some(1 << 20),
                freeze_millis: Some(80),
                stopped_at: Some(Time(ts(now - 1))),
                ..CheckpointStatus::default()
            });
        }
    }

    /// A whole life: placed on n1, owner returns, checkpoint, agent completes it, restored on
    /// n2, source deleted once the target is Ready, then a second eviction with nowhere to go
    /// parks it, a node comes idle and it resumes, and it exits 0. Each step is fed the state
    /// the previous one produced. If this breaks, the steps disagree about the state they hand
    /// each other (a pod created twice, a source deleted early, a lost history entry).
    #[test]
    fn place_evict_migrate_park_unpark_complete() {
        let mut c = Cluster {
            job: JobBuilder::new("j").build(),
            pods: vec![],
            stub: None,
            cks: vec![],
            nodes: ["n1", "n2", "n3"]
                .map(|n| NodeInfo::from_node(&NodeBuilder::new(n).idle_since(0).build()))
                .to_vec(),
            now: 1_000,
        };
        assert_eq!(c.step(Some("n1")).step, "place");
        assert_eq!(
            c.step(Some("n2")).step,
            "running",
            "nothing new while the pod starts"
        );
        c.pod_ready("j-1");
        let d = c.step(None);
        assert_eq!(d.step, "running");
        assert!(d.effects.is_empty());

        c.nodes[0] = NodeInfo::from_node(
            &NodeBuilder::new("n1")
                .taint(TAINT_OWNER_ACTIVE, "NoSchedule")
                .build(),
        );
        assert_eq!(c.step(None).step, "evict");
        assert_eq!(c.step(Some("n2")).step, "checkpoint-in-flight");
        c.agent_completes(1);
        assert_eq!(c.step(Some("n2")).step, "restore");
        assert_eq!(c.pods.len(), 2, "source kept until the target is Ready");
        assert_eq!(c.step(Some("n3")).step, "restore-in-flight");
        c.pod_ready("j-2");
        let d = c.step(None);
        assert_eq!(d.step, "restored");
        assert_eq!(
            c.pods
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
            ["j-2"]
        );
        let st = c.job.status.clone().unwrap();
        assert_eq!(
            (st.phase, st.node.as_deref(), st.migrations),
            (Some(JobPhase::Running), Some("n2"), 1)
        );
        assert_eq!(
            st.history[0].downtime_millis,
            Some(3_000),
            "stopped at t-1, Ready at t+2"
        );

        c.nodes[1] = NodeInfo::from_node(&NodeBuilder::new("n2").cordoned().build());
        assert_eq!(c.step(None).step, "evict");
        c.agent_completes(2);
        assert_eq!(c.step(None).step, "park");
        assert!(c.pods.is_empty());
        assert_eq!(c.step(None).step, "parked");
        assert_eq!(c.step(Some("n3")).step, "unpark");
        c.pod_ready("j-3");
        let d = c.step(None);
        assert_eq!(d.notes[0].reason, reason::UNPARKED);
        let st = c.job.status.clone().unwrap();
        assert_eq!(
            (st.migrations, st.history.len(), st.pod.as_deref()),
            (2, 3, Some("j-3"))
        );

        let done = PodBuilder::workload("j", 3, "n3")
            .succeeded()
            .build()
            .status;
        c.pods[0].status = done;
        assert_eq!(c.step(None).step, "complete");
        assert_eq!(
            c.job.status.as_ref().unwrap().phase,
            Some(JobPhase::Succeeded)
        );
        assert!(
            c.step(Some("n1")).effects.is_empty(),
            "a finished job stays finished"
        );
    }

    /// Crash recovery: a periodic checkpoint is taken while the job keeps running; the node is
    /// lost; after the grace period the job is restored elsewhere from that checkpoint; the
    /// restore fails, no older checkpoint exists, so the command restarts afresh; once that pod
    /// is Ready every older pod goes. If this breaks, crash recovery loops, loses the job, or
    /// leaves pods of dead generations behind.
    #[test]
    fn periodic_then_node_lost_then_failed_restore_then_restart() {
        let mut c = Cluster {
            job: JobBuilder::new("j").interval(600).build(),
            pods: vec![],
            stub: None,
            cks: vec![],
            nodes: ["n1", "n2"]
                .map(|n| NodeInfo::from_node(&NodeBuilder::new(n).idle_since(0).build()))
                .to_vec(),
            now: 1_000,
        };
        assert_eq!(c.step(Some("n1")).step, "place");
        c.pod_ready("j-1");
        assert_eq!(c.step(None).step, "running");
        c.now += 600;
        let d = c.step(None);
        assert_eq!(d.step, "periodic-checkpoint");
        assert_eq!(
            c.job.status.as_ref().unwrap().phase,
            Some(JobPhase::Running)
        );
        c.agent_completes(1);
        assert_eq!(c.step(None).step, "running");
        assert_eq!(
            c.job.status.as_ref().unwrap().last_checkpoint.as_deref(),
            Some("j-ckpt-1")
        );

        let lost_at = c.now;
        c.nodes[0] = NodeInfo::from_node(&NodeBuilder::new("n1").not_ready_since(lost_at).build());
        assert_eq!(c.step(Some("n2")).step, "node-not-ready-grace");
        c.now = lost_at + 31;
        assert_eq!(c.step(Some("n2")).step, "node-lost-restore");
        let failed = PodBuilder::workload("j", 2, "n2").failed(1).build().status;
        c.pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some("j-2"))
            .unwrap()
            .status = failed;
        assert_eq!(c.step(Some("n2")).step, "restore-restart");
        assert_eq!(c.pods.len(), 3, "nothing deleted before a successor runs");
        c.pod_ready("j-3");
        assert_eq!(c.step(None).step, "restored");
        assert_eq!(
            c.pods
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
            ["j-3"]
        );
        let st = c.job.status.clone().unwrap();
        assert_eq!(
            (st.phase, st.node.as_deref(), st.migrations),
            (Some(JobPhase::Running), Some("n2"), 0)
        );
        assert!(st.pending_checkpoint.is_none() && st.eviction_reason.is_none());
    }

    /// A failed dump: the job stays where it was, the retry waits out the backoff, the second
    /// checkpoint succeeds and the job moves. If this breaks, a failed dump strands the job in
    /// Checkpointing or the operator retries in a hot loop.
    #[test]
    fn failed_checkpoint_backs_off_then_migrates() {
        let mut c = Cluster {
            job: JobBuilder::new("j").build(),
            pods: vec![],
            stub: None,
            cks: vec![],
            nodes: ["n1", "n2"]
                .map(|n| NodeInfo::from_node(&NodeBuilder::new(n).idle_since(0).build()))
                .to_vec(),
            now: 1_000,
        };
        c.step(Some("n1"));
        c.pod_ready("j-1");
        c.nodes[0] = NodeInfo::from_node(&NodeBuilder::new("n1").cordoned().build());
        assert_eq!(c.step(None).step, "evict");
        let now = c.now;
        c.cks[0].status = Some(CheckpointStatus {
            phase: Some(CheckpointPhase::Failed),
            message: Some("criu: can't dump".into()),
            completed_at: Some(Time(ts(now))),
            ..CheckpointStatus::default()
        });
        let d = c.step(Some("n2"));
        assert_eq!(d.step, "checkpoint-failed");
        assert_eq!(c.job.status.as_ref().unwrap().node.as_deref(), Some("n1"));
        assert_eq!(c.step(Some("n2")).step, "backoff");
        c.now = now + 10;
        assert_eq!(c.step(Some("n2")).step, "evict");
        assert_eq!(c.cks.len(), 2);
        c.agent_completes(2);
        assert_eq!(c.step(Some("n2")).step, "restore");
        c.pod_ready("j-2");
        assert_eq!(c.step(None).step, "restored");
        let st = c.job.status.clone().unwrap();
        assert_eq!((st.node.as_deref(), st.migrations), (Some("n2"), 1));
        assert_eq!(st.history[0].reason, CheckpointReason::Drain);
    }
}
