//! Flags and environment variables of the node agent (the Helm chart passes its values here).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::idle::policy::Thresholds;

/// Whether the agent detects idleness and writes the idle label, annotation and taint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Detection {
    /// Detect and report.
    On,
    /// Never write the idle label/annotation/taint (a lab or the e2e suite sets them by hand);
    /// checkpoints and signals are still driven.
    Off,
}

/// Whether to ask systemd-logind for its idle hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogindMode {
    /// Use it when the system bus is reachable; say once when it is not.
    Auto,
    /// Never.
    Off,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Lodger's node agent: idle detection, node reporting, checkpoint and signal driver.
#[derive(Clone, Debug, Parser)]
#[command(name = "lodger-node-agent", version, about)]
pub struct Args {
    /// This node's name (downward API `spec.nodeName`). The agent writes no other Node.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LODGER_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,

    /// The kubelet's root directory (k3s: /var/lib/rancher/k3s/agent/kubelet).
    #[arg(long, env = "LODGER_KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    pub kubelet_root: PathBuf,

    /// Where the checkpoint volume is mounted.
    #[arg(
        long,
        env = "LODGER_CHECKPOINT_ROOT",
        default_value = "/var/lib/lodger/checkpoints"
    )]
    pub checkpoint_root: PathBuf,

    /// The host's /proc (for loadavg).
    #[arg(long, env = "LODGER_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// The host's cgroup v2 root (pod cgroups of Lodger workloads are found below it by UID).
    #[arg(long, env = "LODGER_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// Count the CPU of cgroups matching this glob as Lodger's instead of finding the pod
    /// cgroups of workload pods (e.g. `/sys/fs/cgroup/lodger/*`).
    #[arg(long, env = "LODGER_JOB_CGROUP_GLOB")]
    pub job_cgroup_glob: Option<String>,

    /// Directory of evdev device nodes.
    #[arg(long, env = "LODGER_INPUT_DIR", default_value = "/dev/input")]
    pub input_dir: PathBuf,

    /// sysfs input class directory (to tell keyboards and mice from switches/accelerometers).
    #[arg(long, env = "LODGER_SYS_INPUT_DIR", default_value = "/sys/class/input")]
    pub sys_input_dir: PathBuf,

    /// The host's /dev (terminal times of tty* and pts/*).
    #[arg(long, env = "LODGER_DEV_DIR", default_value = "/dev")]
    pub dev_dir: PathBuf,

    /// Ask systemd-logind (system D-Bus; `DBUS_SYSTEM_BUS_ADDRESS` overrides the socket).
    #[arg(long, env = "LODGER_LOGIND", value_enum, default_value = "auto")]
    pub logind: LogindMode,

    /// Seconds without input and with low load before the node counts as idle (Sprite: 30;
    /// HTCondor's StartIdleTime: 15 minutes).
    #[arg(long, env = "LODGER_IDLE_AFTER_SECONDS", default_value_t = 30)]
    pub idle_after_seconds: u64,

    /// Non-job load below which the machine counts as quiet (HTCondor's BackgroundLoad).
    #[arg(long, env = "LODGER_IDLE_LOAD", default_value_t = 0.3)]
    pub idle_load: f64,

    /// Non-job load above which the owner counts as active (HTCondor's HighLoad).
    #[arg(
        long,
        alias = "busy-load",
        env = "LODGER_MAX_LOAD",
        default_value_t = 0.5
    )]
    pub max_load: f64,

    /// Idle detection and reporting on or off.
    #[arg(long, env = "LODGER_DETECTION", value_enum, default_value = "on")]
    pub detection: Detection,

    /// Same as `--detection=off`.
    #[arg(long)]
    pub no_detection: bool,

    /// Seconds between samples of terminals, logind and load (evdev input is seen at once).
    #[arg(long, env = "LODGER_POLL_SECONDS", default_value_t = 2)]
    pub poll_seconds: u64,

    /// Seconds between re-reads of the Node even when nothing changed (repairs drift).
    #[arg(long, env = "LODGER_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,

    /// Seconds the agent waits for a shim past a checkpoint's deadline.
    #[arg(long, env = "LODGER_DEADLINE_GRACE_SECONDS", default_value_t = 15)]
    pub deadline_grace_seconds: u64,

    /// Where fatal errors are written for `kubectl describe pod`.
    #[arg(
        long,
        env = "LODGER_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,

    /// Log format.
    #[arg(long, env = "LODGER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Run idle detection only, without an API server, printing each state change (and the
    /// Node patch it would apply) as a JSON line on stdout.
    #[arg(long)]
    pub dry_run: bool,

    /// Stop after this many seconds (benchmarks); runs forever when unset.
    #[arg(long, hide = true)]
    pub exit_after_seconds: Option<u64>,
}

impl Args {
    /// Whether idle detection and reporting run.
    pub fn detection_on(&self) -> bool {
        self.detection == Detection::On && !self.no_detection
    }

    /// The policy thresholds.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            idle_after: Duration::from_secs(self.idle_after_seconds),
            idle_load: self.idle_load,
            busy_load: self.max_load,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, the chart's arguments (docs/node-agent.md) no longer parse, or the
    /// defaults drift from Sprite's 30 s and HTCondor's 0.3/0.5.
    #[test]
    fn chart_flags_parse_and_defaults_hold() {
        let a = Args::try_parse_from([
            "lodger-node-agent",
            "--node-name=desk-7",
            "--metrics-addr=0.0.0.0:8081",
            "--kubelet-root=/var/lib/rancher/k3s/agent/kubelet",
            "--checkpoint-root=/var/lib/lodger/checkpoints",
            "--proc-root=/host/proc",
            "--cgroup-root=/host/sys/fs/cgroup",
            "--log-format=json",
            "--input-dir=/dev/input",
            "--idle-after-seconds=900",
            "--max-load=0.8",
        ])
        .unwrap();
        assert_eq!(a.node_name.as_deref(), Some("desk-7"));
        assert_eq!(a.thresholds().idle_after, Duration::from_secs(900));
        assert_eq!(a.thresholds().busy_load, 0.8);
        assert_eq!(a.thresholds().idle_load, 0.3);
        assert!(a.detection_on());
        let d = Args::try_parse_from(["x", "--no-detection"]).unwrap();
        assert!(!d.detection_on());
        let d = Args::try_parse_from(["x", "--detection=off"]).unwrap();
        assert!(!d.detection_on());
        let d = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(d.thresholds(), Thresholds::default());
    }
}
