//! Desired child objects, built as pure functions of the job (docs/contracts.md): the workload
//! pod `<job>-<generation>`, the home stub `<job>-home`, its ServiceAccount and RoleBinding, the
//! Checkpoint `<job>-ckpt-<seq>` and the instances `<job>-<index>` of a parallel job. Names are
//! deterministic and every object carries an owner reference, so applying twice changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    SeccompProfile, SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use lodger_api::{
    CHECKPOINT_MOUNT_PATH, CHECKPOINT_VOLUME, CONTROL_MOUNT_PATH, CONTROL_VOLUME, Checkpoint,
    CheckpointReason, CheckpointSpec, FINALIZER_CHECKPOINT, LABEL_GENERATION, LABEL_JOB,
    LABEL_PARENT, LABEL_ROLE, LABEL_WORKSTATION, MigratableJob, MigrationStrategy, ROLE_STUB,
    ROLE_WORKLOAD, TOOLS_MOUNT_PATH, TOOLS_VOLUME,
};

use crate::config::Settings;

/// Name (ServiceAccount, ClusterRole and RoleBinding) of the stub's identity.
pub const STUB_ACCOUNT: &str = "lodger-stub";
/// Name of the init container that installs the tools bundle.
pub const INSTALL_CONTAINER: &str = "lodger-install";
/// Where the init container mounts the tools emptyDir.
const INSTALL_MOUNT: &str = "/lodger-tools";
/// Termination grace of PostCopy workload pods: how long a deleted source may still serve pages.
pub const POST_COPY_GRACE_SECONDS: i64 = 300;
/// UID the stub runs as (non-root).
const STUB_UID: i64 = 65532;

/// Name of the workload pod of `generation`.
pub fn pod_name(job: &str, generation: i64) -> String {
    format!("{job}-{generation}")
}

/// Name of the home stub pod.
pub fn stub_name(job: &str) -> String {
    format!("{job}-home")
}

/// Name of checkpoint `seq` of a job.
pub fn checkpoint_name(job: &str, seq: i64) -> String {
    format!("{job}-ckpt-{seq}")
}

/// Checkpoint directory of `seq`, relative to the volume root.
pub fn checkpoint_path(namespace: &str, job: &str, seq: i64) -> String {
    format!("{namespace}/{job}/{seq}")
}

/// Controller owner reference to the job.
pub fn owner_ref(job: &MigratableJob) -> OwnerReference {
    // NB: jobs reach the reconciler from the API server, which always sets name and uid.
    job.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: MigratableJob::api_version(&()).into_owned(),
            kind: MigratableJob::kind(&()).into_owned(),
            name: job.metadata.name.clone().unwrap_or_default(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

fn meta(job: &MigratableJob, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner_ref(job)]),
        ..ObjectMeta::default()
    }
}

fn name_ns(job: &MigratableJob) -> (&str, &str) {
    (
        job.metadata.name.as_deref().unwrap_or_default(),
        job.metadata.namespace.as_deref().unwrap_or_default(),
    )
}

/// `imagePullSecrets` of the pods the operator creates for `job` (workload pod and home stub):
/// the template's own first, in their order, then the operator's (`--image-pull-secret`, the
/// chart's `imagePullSecrets`), each name once; `None` when there are none. The stub gets the
/// same list as the workload pod: it runs the Lodger image, like the workload pod's
/// `lodger-install` init container, so whatever credentials pull it there pull it here too.
/// The names refer to Secrets in the job's namespace; the operator neither reads nor copies
/// them (it has no access to Secrets).
pub fn image_pull_secrets(
    job: &MigratableJob,
    settings: &Settings,
) -> Option<Vec<LocalObjectReference>> {
    let template = job
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or_default();
    let mut out: Vec<LocalObjectReference> = Vec::new();
    let operator = settings
        .image_pull_secrets
        .iter()
        .map(|name| LocalObjectReference { name: name.clone() });
    for secret in template.iter().cloned().chain(operator) {
        if !out.iter().any(|s| s.name == secret.name) {
            out.push(secret);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The checkpoint a new pod restores from.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreFrom {
    /// Checkpoint object name.
    pub checkpoint: String,
    /// Image directory relative to the volume.
    pub path: String,
}

/// The workload pod `<job>-<generation>` bound to `node`, restoring from `restore` when given.
pub fn workload_pod(
    job: &MigratableJob,
    settings: &Settings,
    generation: i64,
    node: &str,
    restore: Option<&RestoreFrom>,
) -> Pod {
    let (name, ns) = name_ns(job);
    let template = &job.spec.template;
    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(LABEL_JOB.into(), name.into());
    labels.insert(LABEL_GENERATION.into(), generation.to_string());
    labels.insert(LABEL_ROLE.into(), ROLE_WORKLOAD.into());
    let mut annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    if let Some(r) = restore {
        annotations.insert(
            lodger_api::ANNOTATION_RESTORE_FROM.into(),
            r.checkpoint.clone(),
        );
        annotations.insert(lodger_api::ANNOTATION_RESTORE_PATH.into(), r.path.clone());
    }

    // The template's user moves from the security context to the shim, which applies it to the
    // job after dropping capabilities; the container itself runs as root (CRIU needs it).
    let pod_sc = spec.security_context.take().unwrap_or_default();
    let mut container = spec.containers.first().cloned().unwrap_or_default();
    let csc = container.security_context.take().unwrap_or_default();
    let uid = csc.run_as_user.or(pod_sc.run_as_user);
    let gid = csc.run_as_group.or(pod_sc.run_as_group);
    spec.security_context = Some(PodSecurityContext {
        run_as_user: None,
        run_as_group: None,
        run_as_non_root: None,
        ..pod_sc
    });

    let mut command: Vec<String> = vec![
        format!("{TOOLS_MOUNT_PATH}/bin/lodger-shim"),
        "--control-dir".into(),
        CONTROL_MOUNT_PATH.into(),
        "--checkpoint-root".into(),
        CHECKPOINT_MOUNT_PATH.into(),
        "--criu".into(),
        format!("{TOOLS_MOUNT_PATH}/bin/criu"),
        "--job-namespace".into(),
        ns.into(),
        "--job-name".into(),
        name.into(),
        "--job-uid".into(),
        job.metadata.uid.clone().unwrap_or_default(),
    ];
    if let Some(uid) = uid {
        command.extend(["--uid".into(), uid.to_string()]);
    }
    if let Some(gid) = gid {
        command.extend(["--gid".into(), gid.to_string()]);
    }
    if let Some(r) = restore {
        command.extend(["--restore".into(), r.path.clone()]);
    }
    if job.spec.migration.strategy == MigrationStrategy::PostCopy {
        // NB: after a PostCopy dump the source shim serves memory pages to the target pod over
        // the pod network: it listens on every interface and advertises the pod IP (recorded in
        // the manifest, where the target's `criu lazy-pages` finds it). CRIU's page server has
        // no authentication: docs/security.md says to confine it with a NetworkPolicy.
        command.extend(["--page-server-listen".into(), "0.0.0.0".into()]);
        let env = container.env.get_or_insert_with(Vec::new);
        env.push(EnvVar {
            name: "LODGER_POD_IP".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: "status.podIP".into(),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    command.push("--".into());
    command.extend(container.command.take().unwrap_or_default());
    command.extend(container.args.take().unwrap_or_default());
    container.command = Some(command);
    container.security_context = Some(SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(shim_capabilities(uid.is_some() || gid.is_some())),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        }),
        ..csc
    });
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.push(VolumeMount {
        name: TOOLS_VOLUME.into(),
        mount_path: TOOLS_MOUNT_PATH.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    mounts.push(VolumeMount {
        name: CONTROL_VOLUME.into(),
        mount_path: CONTROL_MOUNT_PATH.into(),
        ..VolumeMount::default()
    });
    mounts.push(VolumeMount {
        name: CHECKPOINT_VOLUME.into(),
        mount_path: CHECKPOINT_MOUNT_PATH.into(),
        ..VolumeMount::default()
    });
    spec.containers = vec![container];

    spec.image_pull_secrets = image_pull_secrets(job, settings);
    spec.init_containers = Some(vec![Container {
        name: INSTALL_CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.as_str().into()),
        command: Some(
            ["cp", "-a", "/opt/lodger/.", "/lodger-tools/"]
                .map(String::from)
                .to_vec(),
        ),
        volume_mounts: Some(vec![VolumeMount {
            name: TOOLS_VOLUME.into(),
            mount_path: INSTALL_MOUNT.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            // NB: `cp -a` sets the times of the emptyDir's root, which belongs to root; as the
            // image's non-root default user (or the template's runAsUser) it fails with EPERM
            // and the pod never starts. uid 0 without any capability owns it (chart-tests
            // bundle test runs exactly this copy).
            run_as_user: Some(0),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }]);

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: TOOLS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: CONTROL_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: CHECKPOINT_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: settings.checkpoint_claim.clone(),
            read_only: None,
        }),
        ..Volume::default()
    });

    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    tolerations.push(Toleration {
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        toleration_seconds: Some(i64::from(job.spec.migration.grace_period_seconds)),
        ..Toleration::default()
    });

    spec.node_name = Some(node.into());
    spec.restart_policy = Some("Never".into());
    if job.spec.migration.strategy == MigrationStrategy::PostCopy {
        // NB: after a PostCopy dump the source shim serves memory pages until the target has
        // them all, and the operator deletes the source once the target is Ready: the pod's
        // termination grace is what the page server gets to finish.
        spec.termination_grace_period_seconds = Some(
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .max(POST_COPY_GRACE_SECONDS),
        );
    }

    let mut metadata = meta(job, pod_name(name, generation), labels);
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    Pod {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

/// The home stub `<job>-home`: on `spec.homeNode`, else kept off workstations.
pub fn stub_pod(job: &MigratableJob, settings: &Settings) -> Pod {
    let (name, ns) = name_ns(job);
    let labels = BTreeMap::from([
        (LABEL_JOB.to_string(), name.to_string()),
        (LABEL_ROLE.to_string(), ROLE_STUB.to_string()),
    ]);
    let affinity = job.spec.home_node.is_none().then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: LABEL_WORKSTATION.into(),
                        operator: "NotIn".into(),
                        values: Some(vec!["true".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });
    Pod {
        metadata: meta(job, stub_name(name), labels),
        spec: Some(PodSpec {
            service_account_name: Some(STUB_ACCOUNT.into()),
            image_pull_secrets: image_pull_secrets(job, settings),
            node_name: job.spec.home_node.clone(),
            affinity,
            restart_policy: Some("Never".into()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(STUB_UID),
                run_as_group: Some(STUB_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "stub".into(),
                image: Some(settings.image.clone()),
                image_pull_policy: Some(settings.image_pull_policy.as_str().into()),
                command: Some(
                    ["lodger-stub", "--namespace", ns, "--job", name]
                        .map(String::from)
                        .to_vec(),
                ),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The stub's ServiceAccount in the job's namespace (shared by every job there, so no owner).
pub fn stub_service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(STUB_ACCOUNT.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                lodger_api::MANAGER_OPERATOR.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }
}

/// RoleBinding of the stub's ServiceAccount to the chart's ClusterRole `lodger-stub`.
pub fn stub_role_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(STUB_ACCOUNT.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                lodger_api::MANAGER_OPERATOR.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: STUB_ACCOUNT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: STUB_ACCOUNT.into(),
            namespace: Some(namespace.into()),
            api_group: None,
        }]),
    }
}

/// Checkpoint `seq` of the job's pod on `node`.
pub fn checkpoint(
    job: &MigratableJob,
    pod: &str,
    node: &str,
    seq: i64,
    reason: CheckpointReason,
    leave_running: bool,
) -> Checkpoint {
    let (name, _) = name_ns(job);
    let strategy = job.spec.migration.strategy;
    let mut ck = Checkpoint::new(
        &checkpoint_name(name, seq),
        CheckpointSpec {
            job: name.into(),
            pod: pod.into(),
            node: node.into(),
            seq,
            // A periodic checkpoint is a plain dump whatever the migration strategy.
            strategy: if leave_running {
                MigrationStrategy::StopAndCopy
            } else {
                strategy
            },
            reason,
            leave_running,
            // Periodic dumps may take their time; a migration must be done within the grace
            // period the owner was promised (at least a minute, for large images).
            deadline_seconds: if leave_running {
                300
            } else {
                job.spec.migration.grace_period_seconds.clamp(60, 3600)
            },
        },
    );
    ck.metadata = meta(
        job,
        checkpoint_name(name, seq),
        BTreeMap::from([(LABEL_JOB.to_string(), name.to_string())]),
    );
    ck.metadata.finalizers = Some(vec![FINALIZER_CHECKPOINT.into()]);
    ck
}

/// Instance `index` of a parallel job: the parent's spec without parallelism, `{}` in the
/// command and args replaced by the index.
pub fn instance(parent: &MigratableJob, index: i32) -> MigratableJob {
    let (name, _) = name_ns(parent);
    let mut spec = parent.spec.clone();
    spec.parallelism = None;
    if let Some(pod) = spec.template.spec.as_mut() {
        for c in &mut pod.containers {
            for list in [c.command.as_mut(), c.args.as_mut()].into_iter().flatten() {
                for arg in list.iter_mut() {
                    *arg = arg.replace("{}", &index.to_string());
                }
            }
        }
    }
    let mut labels = parent.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_PARENT.into(), name.into());
    let mut child = MigratableJob::new(&format!("{name}-{index}"), spec);
    child.metadata = meta(parent, format!("{name}-{index}"), labels);
    child
}

/// Capabilities the shim needs in the workload container (docs/engine.md explains each): CRIU
/// dump/restore of a nested PID + mount namespace (SYS_ADMIN, SYS_PTRACE, CHECKPOINT_RESTORE,
/// SYS_CHROOT to enter the job's mount namespace), restore without `--unprivileged` so the time
/// namespace keeps CLOCK_MONOTONIC continuous (NET_ADMIN, SYS_TIME), and SETUID/SETGID only when
/// the job runs as another user. The shim drops all of them from the job before exec.
pub fn shim_capabilities(switches_user: bool) -> Vec<String> {
    let mut caps = vec![
        "SYS_ADMIN",
        "SYS_PTRACE",
        "CHECKPOINT_RESTORE",
        "NET_ADMIN",
        "SYS_TIME",
        "SYS_CHROOT",
    ];
    if switches_user {
        caps.extend(["SETUID", "SETGID"]);
    }
    caps.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::JobBuilder;
    use std::path::PathBuf;

    fn settings() -> Settings {
        Settings::for_tests(PathBuf::from("/unused"))
    }

    /// The workload pod follows docs/contracts.md: shim-wrapped command, tools init container,
    /// three volumes, bound node, NoExecute toleration for the grace period, the five
    /// capabilities and Unconfined seccomp, labels and controller owner reference. If this
    /// breaks, the node agent cannot reach the shim or CRIU cannot dump the job.
    #[test]
    fn workload_pod_follows_contract() {
        let job = JobBuilder::new("sim").run_as(1000, 100).grace(45).build();
        let restore = RestoreFrom {
            checkpoint: "sim-ckpt-3".into(),
            path: "ns/sim/3".into(),
        };
        let pod = workload_pod(&job, &settings(), 4, "desk7", Some(&restore));
        assert_eq!(pod.metadata.name.as_deref(), Some("sim-4"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_JOB], "sim");
        assert_eq!(labels[LABEL_GENERATION], "4");
        assert_eq!(labels[LABEL_ROLE], ROLE_WORKLOAD);
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[lodger_api::ANNOTATION_RESTORE_FROM],
            "sim-ckpt-3"
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("MigratableJob", Some(true))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("desk7"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        let cmd = c.command.as_ref().unwrap();
        let want: Vec<&str> = vec![
            "/opt/lodger/bin/lodger-shim",
            "--control-dir",
            "/run/lodger",
            "--checkpoint-root",
            "/var/lib/lodger/checkpoints",
            "--criu",
            "/opt/lodger/bin/criu",
            "--job-namespace",
            "ns",
            "--job-name",
            "sim",
            "--job-uid",
            "uid-sim",
            "--uid",
            "1000",
            "--gid",
            "100",
            "--restore",
            "ns/sim/3",
            "--",
            "/bin/sh",
            "-c",
            "work",
        ];
        assert_eq!(cmd, &want);
        assert!(c.args.is_none());
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "Unconfined");
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(
            caps.add.as_ref().unwrap(),
            &[
                "SYS_ADMIN",
                "SYS_PTRACE",
                "CHECKPOINT_RESTORE",
                "NET_ADMIN",
                "SYS_TIME",
                "SYS_CHROOT",
                "SETUID",
                "SETGID"
            ]
        );
        assert!(spec.security_context.unwrap().run_as_user.is_none());
        let mounts: Vec<(&str, &str, Option<bool>)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert!(mounts.contains(&(TOOLS_VOLUME, TOOLS_MOUNT_PATH, Some(true))));
        assert!(mounts.contains(&(CONTROL_VOLUME, CONTROL_MOUNT_PATH, None)));
        assert!(mounts.contains(&(CHECKPOINT_VOLUME, CHECKPOINT_MOUNT_PATH, None)));
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("lodger:test"));
        assert_eq!(init.command.as_ref().unwrap()[0], "cp");
        let vols = spec.volumes.as_ref().unwrap();
        let pvc = vols.iter().find(|v| v.name == CHECKPOINT_VOLUME).unwrap();
        assert_eq!(
            pvc.persistent_volume_claim.as_ref().unwrap().claim_name,
            "ckpt"
        );
        let tol = spec.tolerations.as_ref().unwrap().last().unwrap().clone();
        assert_eq!(tol.effect.as_deref(), Some("NoExecute"));
        assert_eq!(tol.toleration_seconds, Some(45));
    }

    /// The stub is pinned to the home node, or kept off workstations without one, and runs
    /// non-root with every capability dropped. If this breaks, the stub lands on a desktop it
    /// should represent from afar, or runs with privileges it does not need.
    #[test]
    fn stub_is_pinned_home_and_unprivileged() {
        let home = stub_pod(&JobBuilder::new("j").home("h1").build(), &settings());
        let spec = home.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("h1"));
        assert!(spec.affinity.is_none());
        assert_eq!(spec.service_account_name.as_deref(), Some(STUB_ACCOUNT));
        assert_eq!(
            spec.containers[0].command.as_ref().unwrap()[..3],
            ["lodger-stub", "--namespace", "ns"]
        );
        let away = stub_pod(&JobBuilder::new("j").build(), &settings())
            .spec
            .unwrap();
        assert!(away.node_name.is_none());
        let term = &away
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_expressions.as_ref().unwrap()[0].operator,
            "NotIn"
        );
        assert_eq!(spec.security_context.unwrap().run_as_non_root, Some(true));
    }

    /// PostCopy pods get a long termination grace (the deleted source serves pages until the
    /// target has them); other strategies keep the template's. If this breaks, deleting a
    /// PostCopy source kills the page server mid-restore.
    #[test]
    fn post_copy_source_gets_time_to_serve_pages() {
        let mut job = JobBuilder::new("j").build();
        let plain = workload_pod(&job, &settings(), 1, "a", None).spec.unwrap();
        assert_eq!(plain.termination_grace_period_seconds, None);
        job.spec.migration.strategy = MigrationStrategy::PostCopy;
        let post = workload_pod(&job, &settings(), 1, "a", None).spec.unwrap();
        assert_eq!(
            post.termination_grace_period_seconds,
            Some(POST_COPY_GRACE_SECONDS)
        );
        // The target must be able to reach the source's page server: it listens beyond
        // loopback and advertises the pod IP (downward API).
        let c = &post.containers[0];
        let cmd = c.command.as_ref().unwrap();
        let at = cmd
            .iter()
            .position(|a| a == "--page-server-listen")
            .unwrap();
        assert_eq!(cmd[at + 1], "0.0.0.0");
        assert!(at < cmd.iter().position(|a| a == "--").unwrap());
        let env = c.env.as_ref().unwrap();
        let ip = env.iter().find(|e| e.name == "LODGER_POD_IP").unwrap();
        assert_eq!(
            ip.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        assert!(plain.containers[0].env.is_none());
    }

    fn names(secrets: Option<&Vec<LocalObjectReference>>) -> Vec<&str> {
        secrets
            .map(|list| list.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default()
    }

    /// A job whose template names its own pull secrets, `regcred` twice.
    fn job_with_template_secrets(secrets: &[&str]) -> MigratableJob {
        let mut job = JobBuilder::new("j").home("h1").build();
        job.spec.template.spec.as_mut().unwrap().image_pull_secrets = Some(
            secrets
                .iter()
                .map(|name| LocalObjectReference {
                    name: (*name).into(),
                })
                .collect(),
        );
        job
    }

    /// The operator's pull secrets reach both pods it creates from the Lodger image, after the
    /// template's own (kept first, in order), each name once even when the template and the
    /// operator both name it or the template repeats one. If this breaks, job pods in a lab
    /// with a private registry fail with ImagePullBackOff, or the API server gets a list with
    /// a duplicate name.
    #[test]
    fn pull_secrets_reach_workload_and_stub_template_first() {
        let job = job_with_template_secrets(&["team-registry", "regcred", "team-registry"]);
        let mut settings = settings();
        settings.image_pull_secrets = vec!["regcred".into(), "lodger-pull".into()];
        let want = ["team-registry", "regcred", "lodger-pull"];
        let workload = workload_pod(&job, &settings, 1, "a", None).spec.unwrap();
        assert_eq!(names(workload.image_pull_secrets.as_ref()), want);
        let stub = stub_pod(&job, &settings).spec.unwrap();
        assert_eq!(names(stub.image_pull_secrets.as_ref()), want);

        // Without template secrets the operator's alone, on both pods.
        let plain = JobBuilder::new("p").build();
        for spec in [
            workload_pod(&plain, &settings, 1, "a", None).spec.unwrap(),
            stub_pod(&plain, &settings).spec.unwrap(),
        ] {
            assert_eq!(
                names(spec.image_pull_secrets.as_ref()),
                ["regcred", "lodger-pull"]
            );
        }
    }

    /// With no operator pull secrets nothing is added: a job without any has no
    /// `imagePullSecrets` at all, a job with its own keeps exactly those. If this breaks, pods
    /// name Secrets nobody configured (and the kubelet warns about each missing one).
    #[test]
    fn no_pull_secrets_added_when_unset() {
        let plain = JobBuilder::new("p").build();
        assert!(
            workload_pod(&plain, &settings(), 1, "a", None)
                .spec
                .unwrap()
                .image_pull_secrets
                .is_none()
        );
        assert!(
            stub_pod(&plain, &settings())
                .spec
                .unwrap()
                .image_pull_secrets
                .is_none()
        );
        let own = job_with_template_secrets(&["team-registry"]);
        let workload = workload_pod(&own, &settings(), 1, "a", None).spec.unwrap();
        assert_eq!(
            names(workload.image_pull_secrets.as_ref()),
            ["team-registry"]
        );
    }

    /// The Lodger image is pulled per the operator's pull policy in the init container and the
    /// stub, and the job's own container keeps the template's policy. If this breaks, the
    /// chart's `image.pullPolicy` does not reach job pods (a moving tag is never re-pulled, or
    /// an air-gapped lab's `Never` pulls).
    #[test]
    fn lodger_image_follows_operator_pull_policy() {
        let mut job = JobBuilder::new("j").build();
        job.spec.template.spec.as_mut().unwrap().containers[0].image_pull_policy =
            Some("Always".into());
        for (policy, want) in [
            (crate::config::PullPolicy::IfNotPresent, "IfNotPresent"),
            (crate::config::PullPolicy::Never, "Never"),
        ] {
            let mut settings = settings();
            settings.image_pull_policy = policy;
            let spec = workload_pod(&job, &settings, 1, "a", None).spec.unwrap();
            let init = &spec.init_containers.as_ref().unwrap()[0];
            assert_eq!(init.name, INSTALL_CONTAINER);
            assert_eq!(init.image_pull_policy.as_deref(), Some(want));
            assert_eq!(
                spec.containers[0].image_pull_policy.as_deref(),
                Some("Always")
            );
            let stub = stub_pod(&job, &settings).spec.unwrap();
            assert_eq!(stub.containers[0].image_pull_policy.as_deref(), Some(want));
        }
    }

    /// Instances of a parallel job are named `<job>-<index>`, carry the parent label, and get
    /// `{}` replaced; if this breaks, every instance computes the same slice of the work.
    #[test]
    fn instances_substitute_index() {
        let parent = JobBuilder::new("p")
            .command(&["/bin/work", "--part={}"])
            .parallel(3)
            .build();
        let child = instance(&parent, 2);
        assert_eq!(child.metadata.name.as_deref(), Some("p-2"));
        assert_eq!(child.metadata.labels.as_ref().unwrap()[LABEL_PARENT], "p");
        assert!(child.spec.parallelism.is_none());
        let c = &child.spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command.as_ref().unwrap()[1], "--part=2");
    }
}
