//! Every name shared between Lodger's components: labels, annotations, taints, finalizers, field
//! managers, condition types and reasons, Event reasons, file names. Components never spell these
//! strings themselves.

/// API group of every Lodger resource.
pub const GROUP: &str = "lodger.dev";
/// API version of every Lodger resource.
pub const VERSION: &str = "v1alpha1";

// ---- Node labels, annotations and taints (written by admins or the node agent) ----

/// Node label an admin sets on desktops that may host lodgers: `lodger.dev/workstation=true`.
pub const LABEL_WORKSTATION: &str = "lodger.dev/workstation";
/// Node label naming the desktop's owner (a user name); used for fair share.
pub const LABEL_OWNER: &str = "lodger.dev/owner";
/// Node label the node agent keeps at `true` while the owner is away and the machine is quiet.
pub const LABEL_IDLE: &str = "lodger.dev/idle";
/// Node annotation with the RFC 3339 time since which the node has been idle.
pub const ANNOTATION_IDLE_SINCE: &str = "lodger.dev/idle-since";
/// NoSchedule taint the node agent sets while the owner is active.
pub const TAINT_OWNER_ACTIVE: &str = "lodger.dev/owner-active";

// ---- Pod / child labels (written by the operator) ----

/// Label on every object Lodger creates for a job: the MigratableJob's name.
pub const LABEL_JOB: &str = "lodger.dev/job";
/// Label on workload pods: the job's pod generation (`<job>-<generation>`).
pub const LABEL_GENERATION: &str = "lodger.dev/generation";
/// Label on pods: what the pod is for, one of [`ROLE_WORKLOAD`] or [`ROLE_STUB`].
pub const LABEL_ROLE: &str = "lodger.dev/role";
/// Label on child MigratableJobs created for `spec.parallelism`: the parent's name.
pub const LABEL_PARENT: &str = "lodger.dev/parent";
/// Label on MigratableJobs: the user that owns the work (for fair share); defaults to the
/// namespace when absent.
pub const LABEL_USER: &str = "lodger.dev/user";
/// Role value of the pod running the job itself (under the shim).
pub const ROLE_WORKLOAD: &str = "workload";
/// Role value of the home stub pod `<job>-home`.
pub const ROLE_STUB: &str = "stub";

/// Pod annotation naming the Checkpoint the shim restores from instead of starting the command.
pub const ANNOTATION_RESTORE_FROM: &str = "lodger.dev/restore-from";
/// Pod annotation with the checkpoint path (relative to the volume) the shim restores from.
pub const ANNOTATION_RESTORE_PATH: &str = "lodger.dev/restore-path";
/// MigratableJob annotation a user (or `kubectl lodger migrate`) sets to request a manual
/// migration; the value is a target node name or empty for "any idle node".
pub const ANNOTATION_MIGRATE_TO: &str = "lodger.dev/migrate-to";
/// JobSignal annotation: an opaque id its sender (stub or plugin) picks per signal. A retry after an
/// ambiguous failure that gets AlreadyExists compares it to tell "my earlier attempt landed" from
/// "another sender took this seq".
pub const ANNOTATION_SIGNAL_ID: &str = "lodger.dev/signal-id";

// ---- Finalizers and field managers ----

/// Finalizer on Checkpoints: their files on the volume are removed before the object goes.
pub const FINALIZER_CHECKPOINT: &str = "checkpoints.lodger.dev";
/// Finalizer on MigratableJobs: the job's checkpoint directory is removed before the object goes.
pub const FINALIZER_JOB: &str = "migratablejobs.lodger.dev";

/// Server-side apply field manager of the operator.
pub const MANAGER_OPERATOR: &str = "lodger-operator";
/// Server-side apply field manager of the node agent.
pub const MANAGER_NODE_AGENT: &str = "lodger-node-agent";
/// Server-side apply field manager of the home stub.
pub const MANAGER_STUB: &str = "lodger-stub";
/// Server-side apply field manager of the kubectl plugin.
pub const MANAGER_CLI: &str = "kubectl-lodger";

// ---- Volume layout ----

/// Name of the manifest CRIU images are described by; written last, atomically.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the shim's control socket inside the pod's control directory.
pub const SHIM_SOCKET: &str = "shim.sock";
/// Name of the emptyDir volume holding the shim's control socket.
pub const CONTROL_VOLUME: &str = "lodger-control";
/// Mount path of the control emptyDir inside workload containers.
pub const CONTROL_MOUNT_PATH: &str = "/run/lodger";
/// Name of the checkpoint (ReadWriteMany) volume in pods.
pub const CHECKPOINT_VOLUME: &str = "lodger-checkpoints";
/// Mount path of the checkpoint volume inside workload containers and the node agent.
pub const CHECKPOINT_MOUNT_PATH: &str = "/var/lib/lodger/checkpoints";
/// Name of the emptyDir the init container fills with the shim and the CRIU bundle.
pub const TOOLS_VOLUME: &str = "lodger-tools";
/// Mount path of the tools emptyDir inside workload containers.
pub const TOOLS_MOUNT_PATH: &str = "/opt/lodger";

/// Number of migrations kept in `status.history`.
pub const HISTORY_LIMIT: usize = 20;

/// Condition types on MigratableJob status.
pub mod condition {
    /// True while the job runs on a node (or is being restored onto one).
    pub const READY: &str = "Ready";
    /// True while a migration (checkpoint + restore) is in flight.
    pub const MIGRATING: &str = "Migrating";
    /// True while the job waits on the volume because no node can take it.
    pub const PARKED: &str = "Parked";
    /// False when the object is invalid in a way admission could not catch.
    pub const VALID: &str = "Valid";
    /// True once the job has ended (successfully or not).
    pub const COMPLETE: &str = "Complete";
}

/// Condition reasons and Event reasons (CamelCase, stable: dashboards and alerts key on them).
pub mod reason {
    pub const PLACED: &str = "Placed";
    pub const NO_IDLE_NODE: &str = "NoIdleNode";
    pub const EVICTING: &str = "Evicting";
    pub const CHECKPOINTED: &str = "Checkpointed";
    pub const CHECKPOINT_FAILED: &str = "CheckpointFailed";
    pub const MIGRATED: &str = "Migrated";
    pub const WENT_HOME: &str = "WentHome";
    pub const PARKED: &str = "Parked";
    pub const UNPARKED: &str = "Unparked";
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    pub const RESTARTED: &str = "Restarted";
    pub const RESTORED_FROM_CHECKPOINT: &str = "RestoredFromCheckpoint";
    pub const MAX_MIGRATIONS: &str = "MaxMigrationsReached";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const SIGNAL_DELIVERED: &str = "SignalDelivered";
}
