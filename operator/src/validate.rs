//! Validation of a MigratableJob that got past admission (CEL rules may be missing on an old CRD,
//! or the object was written with validation off). Pure: job in, the problems out.

use lodger_api::MigratableJob;

/// Every problem with the job, as sentences a user can act on; empty when the job is valid.
pub fn problems(job: &MigratableJob) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = job.spec.template.spec.as_ref() else {
        out.push(
            "spec.template.spec is missing: the job needs a pod spec with one container".into(),
        );
        return out;
    };
    match spec.containers.as_slice() {
        [c] => {
            if c.command.as_ref().is_none_or(Vec::is_empty) {
                out.push(format!(
                    "container '{}' must set 'command': Lodger wraps that command with its shim and cannot read an image's entrypoint",
                    c.name
                ));
            }
            if c.image.as_deref().is_none_or(str::is_empty) {
                out.push(format!("container '{}' must set 'image'", c.name));
            }
        }
        cs => out.push(format!(
            "spec.template.spec.containers must hold exactly one container, found {}: Lodger migrates a single command per job (use spec.parallelism for several instances)",
            cs.len()
        )),
    }
    if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
        out.push("spec.template.spec.initContainers is not supported: Lodger adds its own init container".into());
    }
    if spec.restart_policy.as_deref().is_some_and(|p| p != "Never") {
        out.push("spec.template.spec.restartPolicy must be Never (or unset)".into());
    }
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        out.push("spec.template.spec.nodeName must not be set: Lodger picks the node".into());
    }
    let name = job.metadata.name.as_deref().unwrap_or_default();
    if name.len() > 52 {
        out.push(format!(
            "metadata.name is {} characters, at most 52 are allowed (pods are named '<job>-<generation>' and '<job>-home')",
            name.len()
        ));
    }
    if let Some(n) = job.spec.parallelism
        && !(1..=1000).contains(&n)
    {
        out.push(format!(
            "spec.parallelism must be between 1 and 1000, got {n}"
        ));
    }
    if job.spec.migration.grace_period_seconds < 1 {
        out.push("spec.migration.gracePeriodSeconds must be at least 1".into());
    }
    if job.spec.checkpoint.keep < 1 {
        out.push("spec.checkpoint.keep must be at least 1".into());
    }
    if job.spec.checkpoint.interval_seconds < 0 {
        out.push("spec.checkpoint.intervalSeconds must not be negative".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::JobBuilder;

    /// Objects that slipped past admission are caught with a message naming the field; if this
    /// breaks, an invalid job is placed and fails obscurely on a node.
    #[test]
    fn catches_what_admission_should_have() {
        assert!(problems(&JobBuilder::new("ok").build()).is_empty());
        let two = JobBuilder::new("two").two_containers().build();
        let p = problems(&two);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("exactly one container, found 2"), "{p:?}");
        let nocmd = JobBuilder::new("nocmd").no_command().build();
        assert!(problems(&nocmd)[0].contains("must set 'command'"));
        let long = JobBuilder::new(&"x".repeat(53)).build();
        assert!(problems(&long)[0].contains("at most 52"));
    }
}
