//! The operator's configuration: command-line flags with environment fallbacks (the chart sets
//! the environment). Parsed by `main.rs`, shared read-only through the [`crate::Context`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use jiff::SignedDuration;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `lodger-operator`.
#[derive(Clone, Debug, Parser)]
#[command(name = "lodger-operator", version, about)]
pub struct Config {
    /// The Lodger image: the init container copies the shim and CRIU from it, and the home stub
    /// runs it.
    #[arg(long, env = "LODGER_IMAGE")]
    pub image: String,

    /// Name of the ReadWriteMany PersistentVolumeClaim holding checkpoints, in every namespace
    /// that runs MigratableJobs.
    #[arg(
        long,
        env = "LODGER_CHECKPOINT_CLAIM",
        default_value = "lodger-checkpoints"
    )]
    pub checkpoint_claim: String,

    /// Where the operator's own pod mounts the checkpoint volume (to delete checkpoint files).
    #[arg(long, env = "LODGER_CHECKPOINT_MOUNT", default_value = lodger_api::CHECKPOINT_MOUNT_PATH)]
    pub checkpoint_mount: PathBuf,

    /// Seconds a node must have been idle before a job is placed there (per-job override:
    /// spec.placement.minIdleSeconds).
    #[arg(long, env = "LODGER_MIN_IDLE_SECONDS", default_value_t = 30)]
    pub min_idle_seconds: u32,

    /// Extra seconds past a Checkpoint's deadlineSeconds before the operator counts it as failed.
    #[arg(long, env = "LODGER_CHECKPOINT_MARGIN_SECONDS", default_value_t = 30)]
    pub checkpoint_margin_seconds: u32,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "LODGER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "LODGER_LEASE_NAME", default_value = "lodger-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "LODGER_LEASE_NAMESPACE", default_value = "lodger-system")]
    pub lease_namespace: String,

    /// Identity of this replica in the Lease (the pod name, from the downward API).
    #[arg(long, env = "POD_NAME", default_value = "lodger-operator")]
    pub identity: String,

    /// Log format.
    #[arg(long, env = "LODGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The part of the configuration reconcilers use.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Lodger image.
    pub image: String,
    /// Checkpoint PVC name.
    pub checkpoint_claim: String,
    /// Operator's mount of the checkpoint volume.
    pub checkpoint_mount: PathBuf,
    /// Default minimum idle time.
    pub min_idle: SignedDuration,
    /// Grace past a Checkpoint's deadline.
    pub checkpoint_margin: SignedDuration,
}

impl Config {
    /// The reconcilers' settings.
    pub fn settings(&self) -> Settings {
        Settings {
            image: self.image.clone(),
            checkpoint_claim: self.checkpoint_claim.clone(),
            checkpoint_mount: self.checkpoint_mount.clone(),
            min_idle: SignedDuration::from_secs(i64::from(self.min_idle_seconds)),
            checkpoint_margin: SignedDuration::from_secs(i64::from(self.checkpoint_margin_seconds)),
        }
    }
}

impl Settings {
    /// Settings for tests: image `lodger:test`, claim `ckpt`, mount `mount`.
    pub fn for_tests(mount: PathBuf) -> Self {
        Self {
            image: "lodger:test".into(),
            checkpoint_claim: "ckpt".into(),
            checkpoint_mount: mount,
            min_idle: SignedDuration::from_secs(30),
            checkpoint_margin: SignedDuration::from_secs(30),
        }
    }
}
