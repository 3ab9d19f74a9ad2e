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

/// When the kubelet pulls the Lodger image for the pods the operator creates (the workload
/// pod's `lodger-install` init container and the home stub). Spelt as in Kubernetes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// Pull on every start of a container.
    #[value(name = "Always")]
    Always,
    /// Pull only when the node does not have the image yet.
    #[default]
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Never pull; the image must be on the node.
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling (`imagePullPolicy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A Secret name as `imagePullSecrets` takes it: a DNS-1123 subdomain (dot-separated labels of
/// lowercase letters, digits and `-`, each starting and ending with a letter or digit; at most
/// 253 characters; the chart's values.schema.json has the same pattern). Surrounding blanks are
/// trimmed (`LODGER_IMAGE_PULL_SECRETS="a, b"`). Refusing a bad name at start-up beats creating
/// pods the API server rejects one by one.
fn secret_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("a Secret name cannot be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "Secret name {name:?} is longer than 253 characters"
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let label_ok = |label: &str| {
        label.starts_with(alnum)
            && label.ends_with(alnum)
            && label.chars().all(|c| alnum(c) || c == '-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a valid Secret name (a DNS-1123 subdomain: lowercase letters, \
             digits, '-' and '.', each dot-separated part starting and ending with a letter or \
             digit)"
        ));
    }
    Ok(name.to_string())
}

/// Flags of `lodger-operator`.
#[derive(Clone, Debug, Parser)]
#[command(name = "lodger-operator", version, about)]
pub struct Config {
    /// The Lodger image: the init container copies the shim and CRIU from it, and the home stub
    /// runs it.
    #[arg(long, env = "LODGER_IMAGE")]
    pub image: String,

    /// Pull policy of the Lodger image in the pods the operator creates (the `lodger-install`
    /// init container and the home stub).
    #[arg(long, env = "LODGER_IMAGE_PULL_POLICY", value_enum, default_value_t = PullPolicy::IfNotPresent)]
    pub image_pull_policy: PullPolicy,

    /// Secret (type kubernetes.io/dockerconfigjson) to pull the Lodger image with, added to the
    /// `imagePullSecrets` of every workload pod and home stub; repeat the flag for several, or
    /// give a comma-separated list. Secrets are namespaced: a Secret of this name must exist in
    /// every namespace that runs MigratableJobs (the operator does not copy Secrets).
    #[arg(
        long = "image-pull-secret",
        env = "LODGER_IMAGE_PULL_SECRETS",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = secret_name
    )]
    pub image_pull_secrets: Vec<String>,

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
    /// Pull policy of the Lodger image (init container and stub).
    pub image_pull_policy: PullPolicy,
    /// Secrets to pull the Lodger image with, in order, without duplicates; added after the
    /// template's own `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
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
            image_pull_policy: self.image_pull_policy,
            image_pull_secrets: self
                .image_pull_secrets
                .iter()
                .fold(Vec::new(), |mut out, name| {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                    out
                }),
            checkpoint_claim: self.checkpoint_claim.clone(),
            checkpoint_mount: self.checkpoint_mount.clone(),
            min_idle: SignedDuration::from_secs(i64::from(self.min_idle_seconds)),
            checkpoint_margin: SignedDuration::from_secs(i64::from(self.checkpoint_margin_seconds)),
        }
    }
}

impl Settings {
    /// Settings for tests: image `lodger:test` (IfNotPresent, no pull secrets), claim `ckpt`,
    /// mount `mount`.
    pub fn for_tests(mount: PathBuf) -> Self {
        Self {
            image: "lodger:test".into(),
            image_pull_policy: PullPolicy::IfNotPresent,
            image_pull_secrets: Vec::new(),
            checkpoint_claim: "ckpt".into(),
            checkpoint_mount: mount,
            min_idle: SignedDuration::from_secs(30),
            checkpoint_margin: SignedDuration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec!["lodger-operator", "--image", "reg.lab/lodger:1"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    /// Pull secrets come from a repeated flag or a comma-separated list (the form
    /// `LODGER_IMAGE_PULL_SECRETS` takes; clap splits both with the same delimiter), blanks
    /// trimmed, in order, each name once in the settings. If this breaks, the chart's
    /// `imagePullSecrets` do not reach job pods and they fail with ImagePullBackOff.
    #[test]
    fn pull_secrets_parse_from_repeats_and_lists() {
        let config = parse(&[
            "--image-pull-secret",
            "regcred",
            "--image-pull-secret=mirror, regcred ,backup.lab",
        ])
        .unwrap();
        assert_eq!(
            config.image_pull_secrets,
            ["regcred", "mirror", "regcred", "backup.lab"]
        );
        assert_eq!(
            config.settings().image_pull_secrets,
            ["regcred", "mirror", "backup.lab"]
        );
        assert!(parse(&[]).unwrap().settings().image_pull_secrets.is_empty());
    }

    /// Names that are not valid Secret names are refused at start-up, with the name in the
    /// message. If this breaks, a typo in the chart values makes every pod create fail instead.
    #[test]
    fn bad_pull_secret_names_are_refused() {
        for bad in [
            "Regcred", "reg_cred", "-regcred", "regcred.", "a..b", "a.-b", "", "a,,b",
        ] {
            let err = parse(&[&format!("--image-pull-secret={bad}")])
                .map(|c| c.image_pull_secrets)
                .expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        let long = "a".repeat(254);
        assert!(parse(&["--image-pull-secret", &long]).is_err());
        assert!(parse(&["--image-pull-secret", &"a".repeat(253)]).is_ok());
    }

    /// The Lodger image's pull policy defaults to IfNotPresent and takes the Kubernetes
    /// spellings only. If this breaks, the chart's `image.pullPolicy` is refused or ignored.
    #[test]
    fn pull_policy_uses_kubernetes_spelling() {
        assert_eq!(
            parse(&[]).unwrap().settings().image_pull_policy,
            PullPolicy::IfNotPresent
        );
        for policy in [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ] {
            let config = parse(&["--image-pull-policy", policy.as_str()]).unwrap();
            assert_eq!(config.settings().image_pull_policy, policy);
        }
        assert!(parse(&["--image-pull-policy", "if-not-present"]).is_err());
    }
}
