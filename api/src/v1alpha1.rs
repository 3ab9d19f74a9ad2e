//! `lodger.dev/v1alpha1`: MigratableJob, Checkpoint and JobSignal.
//!
//! Every `///` comment on a field becomes the CRD description `kubectl explain` shows. Invariants
//! a user can break at `kubectl apply` are CEL rules (`x-kubernetes-validations`) with messages
//! that say what to change; ranges and enums are plain OpenAPI constraints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAffinity, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ----------------------------------------------------------------------------------------------
// MigratableJob
// ----------------------------------------------------------------------------------------------

/// A batch job that lodges on idle desktops and migrates, live, when their owners return.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lodger.dev",
    version = "v1alpha1",
    kind = "MigratableJob",
    plural = "migratablejobs",
    shortname = "mj",
    namespaced,
    status = "MigratableJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Home","type":"string","jsonPath":".status.homeNode"}"#,
    printcolumn = r#"{"name":"Migrations","type":"integer","jsonPath":".status.migrations"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 52").message("metadata.name must be at most 52 characters: Lodger appends '-<generation>' and '-home' to it to name pods"),
    validation = Rule::new("has(self.spec.homeNode) == has(oldSelf.spec.homeNode) && (!has(self.spec.homeNode) || self.spec.homeNode == oldSelf.spec.homeNode)").message("spec.homeNode is immutable: the job's home is fixed when it is created"),
    validation = Rule::new("has(self.spec.parallelism) == has(oldSelf.spec.parallelism) && (!has(self.spec.parallelism) || self.spec.parallelism == oldSelf.spec.parallelism)").message("spec.parallelism is immutable: delete the MigratableJob and create it again to change the fan-out"),
)]
#[serde(rename_all = "camelCase")]
pub struct MigratableJobSpec {
    /// The pod to run. Exactly one container, whose `command` must be set: Lodger wraps that
    /// command with its shim and cannot read an image's entrypoint. `spec.template` cannot be
    /// changed after creation (delete and re-create the job instead).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Node the job belongs to. Its home stub runs there, and an evicted job with no idle node to
    /// go to returns there. When unset the stub runs on a non-workstation node and an evicted job
    /// with nowhere to go is Parked. Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub home_node: Option<String>,

    /// Where the job may run, on top of the template's own nodeSelector, affinity and tolerations.
    #[serde(default)]
    pub placement: Placement,

    /// How the job moves when its node's owner returns or the node is tainted, cordoned or lost.
    #[serde(default)]
    pub migration: MigrationPolicy,

    /// Periodic checkpoints for crash recovery (a node that goes NotReady) and their retention.
    #[serde(default)]
    pub checkpoint: CheckpointPolicy,

    /// Run this many independent instances of the job (pmake-style fan-out), one per idle node;
    /// fewer run when fewer nodes are idle, and the rest start as nodes become idle. Each instance
    /// is a child MigratableJob named `<job>-<index>`; `{}` in the command is replaced by the
    /// index. Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: Option<i32>,
}

/// Extra placement constraints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a node must carry (in addition to `lodger.dev/workstation=true`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Node affinity the target node must satisfy (required terms) and prefers (preferred terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,

    /// How long a node must have been idle before this job may be placed on it, in seconds.
    /// Overrides the operator's default (30 s, as in Sprite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub min_idle_seconds: Option<i32>,
}

/// How a running job is migrated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicy {
    /// Checkpoint/restore strategy. `StopAndCopy`: freeze, dump everything, restore eagerly.
    /// `LazyRestore`: the target resumes at once and pages memory in from the volume.
    /// `PostCopy`: the source serves memory pages to the target until it has them all.
    /// `PreCopy`: copy memory while the job runs, then a short final dump (needs kernel
    /// soft-dirty tracking; falls back to StopAndCopy where absent and says so in status).
    #[serde(default)]
    pub strategy: MigrationStrategy,

    /// Seconds from the owner's return (or a taint) until the job must be off the node. The
    /// workload pod tolerates NoExecute taints for this long so the checkpoint can finish.
    #[serde(default = "default_grace_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub grace_period_seconds: i32,

    /// Most migrations this job may make; when reached, an eviction ends the job as Failed
    /// instead of moving it again. Unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_migrations: Option<i32>,

    /// What to do when the job's node is lost (NotReady) and no checkpoint exists to restore:
    /// `Restart` starts the command afresh on another node, `Fail` ends the job as Failed.
    #[serde(default)]
    pub on_node_lost: NodeLostPolicy,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self {
            strategy: MigrationStrategy::default(),
            grace_period_seconds: default_grace_period(),
            max_migrations: None,
            on_node_lost: NodeLostPolicy::default(),
        }
    }
}

fn default_grace_period() -> i32 {
    30
}

/// Checkpoint/restore strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum MigrationStrategy {
    /// Freeze, dump everything to the volume, restore eagerly on the target.
    #[default]
    StopAndCopy,
    /// Dump to the volume; the target resumes at once and pages memory in from the volume.
    LazyRestore,
    /// Dump with lazy pages; the source serves pages until the target has them all.
    PostCopy,
    /// Iterative pre-dumps while the job runs, then a short final dump.
    PreCopy,
}

impl MigrationStrategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [MigrationStrategy; 4] = [
        MigrationStrategy::StopAndCopy,
        MigrationStrategy::LazyRestore,
        MigrationStrategy::PostCopy,
        MigrationStrategy::PreCopy,
    ];

    /// The name used in the API (`StopAndCopy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStrategy::StopAndCopy => "StopAndCopy",
            MigrationStrategy::LazyRestore => "LazyRestore",
            MigrationStrategy::PostCopy => "PostCopy",
            MigrationStrategy::PreCopy => "PreCopy",
        }
    }
}

impl std::fmt::Display for MigrationStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MigrationStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MigrationStrategy::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown strategy '{s}': expected one of StopAndCopy, LazyRestore, PostCopy, PreCopy"
                )
            })
    }
}

/// What happens when a job's node is lost and there is no checkpoint to restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NodeLostPolicy {
    /// Start the command afresh on another node.
    #[default]
    Restart,
    /// End the job as Failed.
    Fail,
}

/// Periodic checkpoints and retention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointPolicy {
    /// Seconds between periodic checkpoints taken while the job keeps running (for recovery
    /// when a node is lost). 0 turns periodic checkpoints off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 604800))]
    pub interval_seconds: i32,

    /// How many completed checkpoints to keep per job; older ones and their files are deleted.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: i32,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            interval_seconds: 0,
            keep: default_keep(),
        }
    }
}

fn default_keep() -> i32 {
    2
}

/// Observed state of a MigratableJob.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigratableJobStatus {
    /// Where the job is in its life: Pending, Placing, Running, Checkpointing, Restoring, Parked,
    /// Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,

    /// The job's home node (where its stub runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_node: Option<String>,

    /// The node the job runs on now (or is being restored onto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,

    /// The workload pod running the job now, `<job>-<generation>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,

    /// The home stub pod, `<job>-home`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub_pod: Option<String>,

    /// Generation of the current workload pod; each restore or restart creates the next one.
    #[serde(default)]
    pub pod_generation: i64,

    /// Migrations made so far.
    #[serde(default)]
    pub migrations: i32,

    /// Name of the newest Completed Checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<String>,

    /// Name of the Checkpoint in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_checkpoint: Option<String>,

    /// The node the job is moving away from (set while Checkpointing/Restoring, and while
    /// Parked: the node it left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,

    /// Why the job is moving now (set while Checkpointing/Restoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_reason: Option<CheckpointReason>,

    /// The most recent migrations, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<MigrationRecord>,

    /// The job's exit code once it has ended (128 + signal number if a signal killed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// Child instances when `spec.parallelism` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,

    /// Standard conditions: Ready, Migrating, Parked, Valid, Complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Phase of a MigratableJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum JobPhase {
    /// Accepted, nothing created yet.
    Pending,
    /// Looking for an idle node.
    Placing,
    /// Running on a node.
    Running,
    /// Being checkpointed on its node.
    Checkpointing,
    /// Being restored on a target node.
    Restoring,
    /// Waiting on the checkpoint volume; no node could take it. Resumes when one becomes idle.
    Parked,
    /// Ended with exit code 0.
    Succeeded,
    /// Ended with a non-zero exit code, or could not be run or moved.
    Failed,
}

impl JobPhase {
    /// True for Succeeded and Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Placing => "Placing",
            JobPhase::Running => "Running",
            JobPhase::Checkpointing => "Checkpointing",
            JobPhase::Restoring => "Restoring",
            JobPhase::Parked => "Parked",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One migration of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRecord {
    /// Node the job left.
    pub from: String,
    /// Node the job went to (empty when it was Parked).
    #[serde(default)]
    pub to: String,
    /// Why it moved.
    pub reason: CheckpointReason,
    /// Strategy actually used (after any fallback).
    pub strategy: MigrationStrategy,
    /// Milliseconds the job's processes were frozen for the dump (from CRIU's statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_millis: Option<i64>,
    /// Milliseconds from the job stopping on the source to running on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_millis: Option<i64>,
    /// Size of the checkpoint image in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<i64>,
    /// When the move completed.
    pub at: Time,
}

/// One child instance of a job with `spec.parallelism`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Name of the child MigratableJob.
    pub name: String,
    /// Its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// The node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Schema of `spec.template`: the pod template is kept as a free-form object (its full schema
/// would make the CRD hundreds of kilobytes and the API server validates the pod when the operator
/// creates it), but the parts Lodger relies on are typed and checked at admission.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": "self == oldSelf",
                "message": "spec.template is immutable: delete the MigratableJob and create it again to change what it runs"
            }
        ],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "x-kubernetes-validations": [
                    {
                        "rule": "size(self.containers) == 1",
                        "message": "spec.template.spec.containers must hold exactly one container: Lodger checkpoints and migrates a single command per job (use spec.parallelism for several instances)"
                    },
                    {
                        "rule": "!has(self.initContainers) || size(self.initContainers) == 0",
                        "message": "spec.template.spec.initContainers is not supported: Lodger adds its own init container; do set-up in the job's command"
                    },
                    {
                        "rule": "!has(self.restartPolicy) || self.restartPolicy == 'Never'",
                        "message": "spec.template.spec.restartPolicy must be Never (or unset): Lodger decides where and how a job runs again"
                    }
                ],
                "properties": {
                    "containers": {
                        "type": "array",
                        "maxItems": 1,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "required": ["name"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": "has(self.command) && size(self.command) > 0",
                                    "message": "the container must set 'command': Lodger wraps that command with its shim and cannot read an image's entrypoint"
                                }
                            ],
                            "properties": {
                                "name": { "type": "string" },
                                "image": { "type": "string" },
                                "command": {
                                    "type": "array",
                                    "maxItems": 256,
                                    "items": { "type": "string" }
                                },
                                "args": {
                                    "type": "array",
                                    "maxItems": 4096,
                                    "items": { "type": "string" }
                                }
                            }
                        }
                    },
                    "initContainers": {
                        "type": "array",
                        "maxItems": 16,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true
                        }
                    },
                    "restartPolicy": { "type": "string" },
                    "nodeName": {
                        "type": "string",
                        "x-kubernetes-validations": [
                            {
                                "rule": "self == ''",
                                "message": "spec.template.spec.nodeName must not be set: Lodger picks the node (use spec.placement or spec.homeNode)"
                            }
                        ]
                    }
                }
            }
        }
    })
}

// ----------------------------------------------------------------------------------------------
// Checkpoint
// ----------------------------------------------------------------------------------------------

/// One request to checkpoint one job's pod into the checkpoint volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lodger.dev",
    version = "v1alpha1",
    kind = "Checkpoint",
    plural = "checkpoints",
    shortname = "ckpt",
    namespaced,
    status = "CheckpointStatus",
    selectable = ".spec.node",
    selectable = ".spec.job",
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.job"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.imageBytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec == oldSelf.spec").message("a Checkpoint's spec is immutable: create a new Checkpoint instead"),
)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Name of the MigratableJob (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub job: String,
    /// Name of the workload pod to checkpoint.
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// Node the pod runs on; that node's agent takes the checkpoint.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// Sequence number of this checkpoint within the job; the image goes to
    /// `<namespace>/<job>/<seq>/` on the volume.
    #[schemars(range(min = 0))]
    pub seq: i64,
    /// Strategy to dump with.
    #[serde(default)]
    pub strategy: MigrationStrategy,
    /// Why the checkpoint is taken.
    pub reason: CheckpointReason,
    /// Keep the job running after the dump (periodic checkpoints) instead of stopping it
    /// (migrations).
    #[serde(default)]
    pub leave_running: bool,
    /// Seconds the node agent may take before it gives up, resumes the job where it was and
    /// marks the Checkpoint Failed.
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 5, max = 3600))]
    pub deadline_seconds: i32,
}

fn default_deadline() -> i32 {
    300
}

/// Why a checkpoint is taken.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CheckpointReason {
    /// The desktop's owner came back (`lodger.dev/owner-active` taint).
    OwnerReturned,
    /// A NoExecute taint the job does not tolerate.
    NodeTainted,
    /// The node was cordoned or drained.
    Drain,
    /// The node went NotReady (restore from the last periodic checkpoint).
    NodeLost,
    /// A periodic checkpoint for crash recovery.
    Periodic,
    /// Requested by a user (`kubectl lodger migrate`).
    Manual,
}

impl CheckpointReason {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::OwnerReturned => "OwnerReturned",
            CheckpointReason::NodeTainted => "NodeTainted",
            CheckpointReason::Drain => "Drain",
            CheckpointReason::NodeLost => "NodeLost",
            CheckpointReason::Periodic => "Periodic",
            CheckpointReason::Manual => "Manual",
        }
    }
}

impl std::fmt::Display for CheckpointReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a Checkpoint (written by the node agent).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Pending, InProgress, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CheckpointPhase>,
    /// Directory of the image, relative to the checkpoint volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Strategy actually used (differs from spec.strategy after a fallback; see message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<MigrationStrategy>,
    /// Total size of the image files in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<i64>,
    /// Milliseconds the job was frozen (from CRIU's statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_millis: Option<i64>,
    /// Milliseconds the whole checkpoint took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_millis: Option<i64>,
    /// When the job stopped on the source (migrations), to compute downtime at restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,
    /// When the agent started working on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it reached Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// What happened, for people: the fallback taken, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a Checkpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CheckpointPhase {
    /// Created, not yet picked up by the node agent.
    Pending,
    /// The node agent is dumping the job.
    InProgress,
    /// The image and its manifest are on the volume.
    Completed,
    /// The dump failed; the job kept running where it was.
    Failed,
}

// ----------------------------------------------------------------------------------------------
// JobSignal
// ----------------------------------------------------------------------------------------------

/// A signal for a job, wherever it runs. The home stub creates one for each signal it catches;
/// the node agent of the node the job runs on delivers it to the shim, exactly once, in `seq`
/// order, and records the outcome. Being an API object it is audited and governed by RBAC.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lodger.dev",
    version = "v1alpha1",
    kind = "JobSignal",
    plural = "jobsignals",
    shortname = "jsig",
    namespaced,
    status = "JobSignalStatus",
    selectable = ".spec.job",
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.job"}"#,
    printcolumn = r#"{"name":"Signal","type":"integer","jsonPath":".spec.signal"}"#,
    printcolumn = r#"{"name":"Seq","type":"integer","jsonPath":".spec.seq"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec == oldSelf.spec").message("a JobSignal's spec is immutable: send a new signal instead"),
    validation = Rule::new("self.spec.signal != 32 && self.spec.signal != 33").message("spec.signal 32 and 33 are reserved by the C library and never reach a job: real-time signals are 34 (SIGRTMIN) to 64 (SIGRTMAX)"),
)]
#[serde(rename_all = "camelCase")]
pub struct JobSignalSpec {
    /// Name of the MigratableJob (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub job: String,
    /// Signal number (Linux numbering, e.g. 10 for SIGUSR1, 15 for SIGTERM, 34..64 for
    /// SIGRTMIN..SIGRTMAX; 32 and 33 are refused, the C library keeps them).
    #[schemars(range(min = 1, max = 64))]
    pub signal: i32,
    /// Per-job sequence number, starting at 1. Signals are delivered in this order and each
    /// number at most once.
    #[schemars(range(min = 1))]
    pub seq: i64,
}

/// Observed state of a JobSignal (written by the node agent).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSignalStatus {
    /// Pending, Delivered or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SignalPhase>,
    /// Node whose agent delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Time>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a JobSignal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SignalPhase {
    /// Waiting for the job to be running somewhere.
    Pending,
    /// Handed to the job's shim (which delivers each seq once, also across a migration).
    Delivered,
    /// Could not be delivered (the job had ended).
    Failed,
}
