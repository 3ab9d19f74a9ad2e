//! The shim's command line (fixed by docs/contracts.md), each flag with an environment fallback.

use std::net::IpAddr;
use std::path::PathBuf;

/// Default checkpoint volume mount; the same as `lodger_api::CHECKPOINT_MOUNT_PATH` (the shim does
/// not depend on lodger-api, which pulls in kube).
pub const DEFAULT_CHECKPOINT_ROOT: &str = "/var/lib/lodger/checkpoints";
/// Default control directory; the same as `lodger_api::CONTROL_MOUNT_PATH`.
pub const DEFAULT_CONTROL_DIR: &str = "/run/lodger";

/// `lodger-shim [FLAGS] -- CMD ARGS...`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "lodger-shim",
    version,
    about = "PID 1 of a Lodger workload container: runs the job in a nested PID namespace and \
             checkpoints/restores it with CRIU on request"
)]
pub struct Args {
    /// Directory of the control socket (`shim.sock`) and CRIU's work files.
    #[arg(long, env = "LODGER_CONTROL_DIR", default_value = DEFAULT_CONTROL_DIR)]
    pub control_dir: PathBuf,

    /// Mount point of the checkpoint volume.
    #[arg(long, env = "LODGER_CHECKPOINT_ROOT", default_value = DEFAULT_CHECKPOINT_ROOT)]
    pub checkpoint_root: PathBuf,

    /// The CRIU binary (4.x).
    #[arg(long, env = "LODGER_CRIU", default_value = lodger_engine::DEFAULT_CRIU_PATH)]
    pub criu: PathBuf,

    /// Namespace of the MigratableJob.
    #[arg(long, env = "LODGER_JOB_NAMESPACE")]
    pub job_namespace: String,

    /// Name of the MigratableJob.
    #[arg(long, env = "LODGER_JOB_NAME")]
    pub job_name: String,

    /// UID of the MigratableJob (checked against a checkpoint's manifest before restoring).
    #[arg(long, env = "LODGER_JOB_UID")]
    pub job_uid: String,

    /// User id the job runs as (the pod template's runAsUser).
    #[arg(long, env = "LODGER_UID")]
    pub uid: Option<u32>,

    /// Group id the job runs as (the pod template's runAsGroup).
    #[arg(long, env = "LODGER_GID")]
    pub gid: Option<u32>,

    /// Restore from this checkpoint (relative to the checkpoint root) instead of running CMD.
    #[arg(long, env = "LODGER_RESTORE")]
    pub restore: Option<PathBuf>,

    /// Address the PostCopy page server listens on (the pod IP or 0.0.0.0 in a cluster).
    #[arg(long, env = "LODGER_PAGE_SERVER_LISTEN", default_value = "127.0.0.1")]
    pub page_server_listen: IpAddr,

    /// Port of the PostCopy page server (0 = any free port).
    #[arg(long, env = "LODGER_PAGE_SERVER_PORT", default_value_t = 0)]
    pub page_server_port: u16,

    /// Address the target should fetch PostCopy pages from (e.g. the pod IP from the downward
    /// API); defaults to the listen address.
    #[arg(long, env = "LODGER_POD_IP")]
    pub page_server_advertise: Option<String>,

    /// Exit (code 0) once the job has migrated away, instead of waiting for SIGTERM.
    #[arg(long, env = "LODGER_EXIT_AFTER_MIGRATION")]
    pub exit_after_migration: bool,

    /// Time limit of a restore, in seconds.
    #[arg(long, env = "LODGER_RESTORE_TIMEOUT_SECONDS", default_value_t = 300)]
    pub restore_timeout_seconds: u64,

    /// The job's command and arguments (ignored when restoring).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The operator builds exactly this command line (docs/contracts.md); if parsing it breaks,
    /// no workload pod starts.
    #[test]
    fn parses_the_contract_command_line() {
        let args = Args::try_parse_from([
            "lodger-shim",
            "--control-dir",
            "/run/lodger",
            "--checkpoint-root",
            "/var/lib/lodger/checkpoints",
            "--criu",
            "/opt/lodger/bin/criu",
            "--job-namespace",
            "lab",
            "--job-name",
            "render",
            "--job-uid",
            "abc",
            "--uid",
            "1000",
            "--gid",
            "100",
            "--restore",
            "lab/render/3",
            "--",
            "python3",
            "-c",
            "print(1)",
        ])
        .unwrap();
        assert_eq!(args.criu, PathBuf::from("/opt/lodger/bin/criu"));
        assert_eq!((args.uid, args.gid), (Some(1000), Some(100)));
        assert_eq!(args.restore, Some(PathBuf::from("lab/render/3")));
        assert_eq!(args.command, ["python3", "-c", "print(1)"]);
        assert_eq!(args.page_server_port, 0);
    }
}
