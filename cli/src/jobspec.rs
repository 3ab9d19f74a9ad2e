//! Building the MigratableJob `kubectl lodger run` creates (pure: no IO), and checking names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use lodger_api::{CheckpointPolicy, MigratableJob, MigratableJobSpec, MigrationPolicy, Placement};

use crate::args::RunArgs;
use crate::error::CliError;

/// Longest MigratableJob name (the CRD refuses longer: Lodger appends `-<generation>` and `-home`).
pub const MAX_JOB_NAME: usize = 52;
/// Characters the API server appends to a `generateName` prefix.
const GENERATED_SUFFIX: usize = 5;
/// Name of the job's container in the pod template.
pub const CONTAINER_NAME: &str = "job";

/// Whether `name` is a DNS-1123 label (what Kubernetes requires of these names).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A `generateName` prefix from the command: its base name, lowercased, other characters as
/// dashes, short enough for the suffix and, with `--parallel`, the instance index.
pub fn name_prefix(command: &str, max_len: usize) -> String {
    let base = command.rsplit('/').next().unwrap_or(command);
    let mut out = String::new();
    for c in base.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max_len);
    let trimmed = out.trim_end_matches('-');
    let prefix = if trimmed.is_empty() { "job" } else { trimmed };
    format!("{prefix}-")
}

/// Characters `-<index>` adds to child names for `parallelism` n.
fn index_suffix_len(parallelism: Option<i32>) -> usize {
    parallelism.map_or(0, |n| 1 + (n - 1).max(0).to_string().len())
}

/// Builds the MigratableJob for `run` (checks the name and the other arguments first).
pub fn build_job(args: &RunArgs, namespace: &str) -> Result<MigratableJob, CliError> {
    let command_name = args
        .command
        .first()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CliError::Invalid("a command is required after `--`, e.g. `kubectl lodger run -- ./simulate --steps 1000`".into()))?;
    let room = MAX_JOB_NAME - index_suffix_len(args.parallel);
    let (name, generate_name) = match &args.name {
        Some(name) => {
            if !is_dns_label(name) {
                return Err(CliError::Invalid(format!(
                    "invalid --name '{name}': use lowercase letters, digits and '-', starting and ending with a letter or digit"
                )));
            }
            if name.len() > room {
                return Err(CliError::Invalid(format!(
                    "--name '{name}' is {} characters; at most {room} are allowed{} (Lodger names pods <job>-<generation> and <job>-home)",
                    name.len(),
                    if args.parallel.is_some() {
                        " with --parallel, whose instances are named <name>-<index>"
                    } else {
                        ""
                    }
                )));
            }
            (Some(name.clone()), None)
        }
        None => (
            None,
            Some(name_prefix(command_name, room - GENERATED_SUFFIX - 1)),
        ),
    };
    if args.home.as_deref().is_some_and(|h| h.is_empty()) {
        return Err(CliError::Invalid(
            "--home needs a node name (see `kubectl lodger nodes`)".into(),
        ));
    }
    let mut requests = BTreeMap::new();
    if let Some(cpu) = &args.cpu {
        requests.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &args.memory {
        requests.insert("memory".to_string(), Quantity(memory.clone()));
    }
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(args.image.clone()),
        command: Some(args.command.clone()),
        env: (!args.env.is_empty()).then(|| {
            args.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    value_from: None,
                })
                .collect()
        }),
        resources: (!requests.is_empty()).then(|| ResourceRequirements {
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let migration = MigrationPolicy {
        strategy: args.strategy.unwrap_or_default(),
        ..MigrationPolicy::default()
    };
    Ok(MigratableJob {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec: MigratableJobSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".to_string()),
                    ..PodSpec::default()
                }),
            },
            home_node: args.home.clone(),
            placement: Placement::default(),
            migration,
            checkpoint: CheckpointPolicy::default(),
            parallelism: args.parallel,
        },
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, `run` would send names the API server refuses.
    #[test]
    fn dns_labels() {
        assert!(is_dns_label("sim-1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    /// If this fails, generated names could be invalid or too long for the pods Lodger derives
    /// from them.
    #[test]
    fn prefixes_from_commands() {
        assert_eq!(name_prefix("/usr/bin/Python3.11", 40), "python3-11-");
        assert_eq!(name_prefix("./run_sim", 40), "run-sim-");
        assert_eq!(name_prefix("___", 40), "job-");
        assert_eq!(name_prefix("abcdefghij", 4), "abcd-");
    }
}
