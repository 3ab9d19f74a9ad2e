//! `helm lint` and `helm template` of charts/lodger with several value sets, and the invariants
//! of what they render: RBAC stays within its allow-list, security contexts stay hardened,
//! selectors select, CRDs are the generated ones, bad values are refused.

use std::collections::BTreeSet;

use lodger_chart_tests::{
    NAMESPACE, chart_dir, container, flags, get, lint, of_kind, render, selects, template_raw,
    workloads, workspace_root,
};
use serde_json::Value;

/// The value sets every structural invariant is checked against.
const VALUE_SETS: &[&[(&str, &str)]] = &[
    &[],
    &[("checkpoints.existingClaim", "shared-checkpoints")],
    &[("agent.detection.enabled", "false")],
    &[("metrics.serviceMonitor.enabled", "true")],
    &[
        ("agent.detection.inputAccess", "devicePlugin"),
        ("agent.detection.devicePluginResource", "squat.ai/input"),
    ],
    &[
        ("agent.detection.inputAccess", "privileged"),
        ("agent.detection.logind", "false"),
    ],
    &[
        ("checkpoints.ownerUid", "65534"),
        ("checkpoints.ownerGid", "65534"),
        ("operator.replicas", "2"),
        ("networkPolicy.apiServerCIDRs[0]", "10.96.0.1/32"),
        ("logging.format", "json"),
    ],
    &[("networkPolicy.enabled", "false")],
];

const OPERATOR: &str = "lodger-operator";
const AGENT: &str = "lodger-node-agent";

/// One permission: (apiGroup, resource, verb, resourceName or "").
type Grant = (String, String, String, String);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("roles have rules") {
        let strs = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().expect("strings").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let names = strs("resourceNames");
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in strs("apiGroups") {
            for resource in strs("resources") {
                for verb in strs("verbs") {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn allow(list: &[(&str, &str, &[&str], &str)]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resource, verbs, name) in list {
        for verb in *verbs {
            out.insert((
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                name.to_string(),
            ));
        }
    }
    out
}

/// The allow-list of every role the chart renders, keyed by `Kind/name`. Widening a role (or
/// adding one) fails `rbac_rules_are_exactly_the_allow_list` until this list is changed too,
/// on purpose and in review.
fn allow_lists() -> Vec<(&'static str, BTreeSet<Grant>)> {
    const R: &[&str] = &["get", "list", "watch"];
    vec![
        (
            "ClusterRole/lodger-operator",
            allow(&[
                (
                    "lodger.dev",
                    "migratablejobs",
                    &["list", "watch", "create", "patch"],
                    "",
                ),
                ("lodger.dev", "migratablejobs/status", &["patch"], ""),
                ("lodger.dev", "migratablejobs/finalizers", &["update"], ""),
                (
                    "lodger.dev",
                    "checkpoints",
                    &["list", "watch", "create", "patch", "delete"],
                    "",
                ),
                (
                    "",
                    "pods",
                    &["list", "watch", "create", "patch", "delete"],
                    "",
                ),
                ("", "nodes", &["list", "watch"], ""),
                ("", "serviceaccounts", &["create", "patch"], ""),
                (
                    "rbac.authorization.k8s.io",
                    "rolebindings",
                    &["create", "patch"],
                    "",
                ),
                (
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    &["bind"],
                    "lodger-stub",
                ),
                ("events.k8s.io", "events", &["create", "patch"], ""),
            ]),
        ),
        (
            "Role/lodger-operator-leader-election",
            allow(&[(
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update"],
                "",
            )]),
        ),
        (
            "ClusterRole/lodger-node-agent",
            allow(&[
                ("", "nodes", &["get", "patch"], ""),
                ("", "pods", R, ""),
                ("lodger.dev", "checkpoints", &["list", "watch"], ""),
                ("lodger.dev", "checkpoints/status", &["patch"], ""),
                ("lodger.dev", "jobsignals", &["list", "watch"], ""),
                ("lodger.dev", "jobsignals/status", &["patch"], ""),
                ("lodger.dev", "migratablejobs", &["get"], ""),
                ("events.k8s.io", "events", &["create", "patch"], ""),
            ]),
        ),
        (
            "ClusterRole/lodger-stub",
            allow(&[
                ("lodger.dev", "jobsignals", &["create", "list"], ""),
                ("lodger.dev", "migratablejobs", &["get"], ""),
                ("", "pods", &["get", "list"], ""),
                ("", "pods/log", &["get"], ""),
            ]),
        ),
    ]
}

fn roles(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .collect()
}

fn role_key(role: &Value) -> String {
    format!(
        "{}/{}",
        role["kind"].as_str().unwrap(),
        role["metadata"]["name"].as_str().unwrap()
    )
}

/// `helm lint --strict` is clean (no warning, no error) with every value set.
/// If this fails, the chart has a structural or schema problem helm itself reports.
#[test]
fn helm_lint_is_clean() {
    for set in VALUE_SETS {
        let out = lint(set);
        assert!(
            out.success,
            "helm lint failed with {set:?}:\n{}{}",
            out.stdout, out.stderr
        );
        assert!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint reported problems with {set:?}:\n{}",
            out.stdout
        );
    }
}

/// Every rendered document parses, and the default render has each piece the chart promises.
/// If this fails, a template stopped rendering an object (or renders invalid YAML).
#[test]
fn default_render_has_every_component() {
    let objects = render(&[]);
    for (kind, name) in [
        ("Deployment", OPERATOR),
        ("DaemonSet", AGENT),
        ("ServiceAccount", OPERATOR),
        ("ServiceAccount", AGENT),
        ("ClusterRole", OPERATOR),
        ("ClusterRole", AGENT),
        ("ClusterRole", "lodger-stub"),
        ("ClusterRoleBinding", OPERATOR),
        ("ClusterRoleBinding", AGENT),
        ("Role", "lodger-operator-leader-election"),
        ("RoleBinding", "lodger-operator-leader-election"),
        ("ValidatingAdmissionPolicy", "lodger-node-agent-own-node"),
        (
            "ValidatingAdmissionPolicyBinding",
            "lodger-node-agent-own-node",
        ),
        ("PersistentVolumeClaim", "lodger-checkpoints"),
        ("NetworkPolicy", "lodger-operator"),
        ("NetworkPolicy", "lodger-node-agent"),
        ("Service", "lodger-operator-metrics"),
        ("Service", "lodger-node-agent-metrics"),
        ("CustomResourceDefinition", "migratablejobs.lodger.dev"),
        ("CustomResourceDefinition", "checkpoints.lodger.dev"),
        ("CustomResourceDefinition", "jobsignals.lodger.dev"),
    ] {
        get(&objects, kind, name);
    }
    assert!(
        of_kind(&objects, "ServiceMonitor").is_empty(),
        "ServiceMonitor is opt-in"
    );
    for o in &objects {
        let namespaced = !matches!(
            o["kind"].as_str().unwrap(),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
                | "PersistentVolume"
        );
        if namespaced {
            assert_eq!(
                o["metadata"]["namespace"], NAMESPACE,
                "{} has no namespace",
                o["metadata"]["name"]
            );
        }
    }
}

/// RBAC: every role's rules expand to exactly its allow-list; no role exists without one.
/// If this fails, someone widened (or narrowed) RBAC without updating the reviewed allow-list.
#[test]
fn rbac_rules_are_exactly_the_allow_list() {
    let lists = allow_lists();
    for set in VALUE_SETS {
        let objects = render(set);
        for role in roles(&objects) {
            let key = role_key(role);
            let (_, allowed) = lists
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key} has no allow-list in chart-tests"));
            let have = grants(role);
            let extra: Vec<_> = have.difference(allowed).collect();
            let missing: Vec<_> = allowed.difference(&have).collect();
            assert!(
                extra.is_empty(),
                "{key} grants more than its allow-list: {extra:?}"
            );
            assert!(
                missing.is_empty(),
                "{key} lost grants of its allow-list: {missing:?}"
            );
        }
    }
}

/// No rule anywhere uses a wildcard group, resource or verb, and `bind`/`escalate`/
/// `impersonate` appear only restricted by resourceNames.
/// If this fails, a role grants open-ended power.
#[test]
fn rbac_has_no_wildcards_and_restricted_bind() {
    let objects = render(&[]);
    for role in roles(&objects) {
        for rule in role["rules"].as_array().unwrap() {
            for key in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                if let Some(items) = rule[key].as_array() {
                    assert!(
                        items.iter().all(|v| v != "*"),
                        "{} has a wildcard in {key}: {rule}",
                        role_key(role)
                    );
                }
            }
            let verbs = rule["verbs"].as_array().unwrap();
            for dangerous in ["bind", "escalate", "impersonate"] {
                if verbs.iter().any(|v| v == dangerous) {
                    assert!(
                        rule["resourceNames"]
                            .as_array()
                            .is_some_and(|n| !n.is_empty()),
                        "{} grants {dangerous} without resourceNames",
                        role_key(role)
                    );
                }
            }
        }
    }
    let operator = get(&objects, "ClusterRole", OPERATOR);
    assert!(
        grants(operator).contains(&(
            "rbac.authorization.k8s.io".into(),
            "clusterroles".into(),
            "bind".into(),
            "lodger-stub".into()
        )),
        "the operator must be able to bind exactly ClusterRole lodger-stub"
    );
}

/// Every ServiceAccount a pod runs as exists and is bound to a role the chart defines; every
/// binding's roleRef points at a rendered role.
/// If this fails, a component would start without the permissions it needs.
#[test]
fn every_pod_service_account_is_bound() {
    for set in VALUE_SETS {
        let objects = render(set);
        let role_keys: BTreeSet<String> = roles(&objects).into_iter().map(role_key).collect();
        let bindings: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
            .collect();
        for b in &bindings {
            let key = format!(
                "{}/{}",
                b["roleRef"]["kind"].as_str().unwrap(),
                b["roleRef"]["name"].as_str().unwrap()
            );
            assert!(
                role_keys.contains(&key),
                "binding {} refers to missing {key}",
                b["metadata"]["name"]
            );
        }
        for w in workloads(&objects) {
            let sa = w["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .expect("every pod names its ServiceAccount");
            get(&objects, "ServiceAccount", sa);
            let bound = bindings.iter().any(|b| {
                b["subjects"].as_array().unwrap().iter().any(|s| {
                    s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NAMESPACE
                })
            });
            assert!(
                bound,
                "ServiceAccount {sa} of {} is bound to no role",
                w["metadata"]["name"]
            );
        }
        let sas: BTreeSet<&str> = workloads(&objects)
            .iter()
            .map(|w| {
                w["spec"]["template"]["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            sas.len(),
            2,
            "operator and node agent must use separate ServiceAccounts"
        );
    }
}

fn assert_hardened(sc: &Value, who: &str, allow_privileged: bool) {
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{who}: root FS must be read-only"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{who}: must drop ALL"
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{who}: must add no capability"
    );
    assert_eq!(
        sc["seccompProfile"]["type"], "RuntimeDefault",
        "{who}: seccomp RuntimeDefault"
    );
    if sc["privileged"] == true {
        assert!(allow_privileged, "{who}: privileged is not allowed here");
    } else {
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{who}: no privilege escalation"
        );
    }
}

/// Operator and agent run hardened: read-only root FS, drop ALL and add nothing, RuntimeDefault
/// seccomp, no privilege escalation, no host namespaces; the agent as a non-root user always,
/// the operator as the checkpoint files' owner (non-root unless that owner is root) and then
/// with no capability at all. The agent is privileged only for /dev/input in the default
/// detection mode.
/// If this fails, a pod gained privileges the docs say it does not have.
#[test]
fn security_contexts_are_hardened() {
    for set in VALUE_SETS {
        let objects = render(set);
        let get_set = |key: &str| set.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let detection = get_set("agent.detection.enabled") != Some("false");
        let privileged_input =
            detection && get_set("agent.detection.inputAccess").unwrap_or("none") == "privileged";

        let operator = get(&objects, "Deployment", OPERATOR);
        let pod = &operator["spec"]["template"]["spec"];
        let owner: i64 = get_set("checkpoints.ownerUid")
            .unwrap_or("0")
            .parse()
            .unwrap();
        assert_eq!(pod["securityContext"]["runAsUser"], owner);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], owner != 0);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_hardened(
            &container(operator, "operator")["securityContext"],
            "operator",
            false,
        );

        let agent = get(&objects, "DaemonSet", AGENT);
        let pod = &agent["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "agent must be non-root"
        );
        assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
        let sc = &container(agent, "node-agent")["securityContext"];
        assert_hardened(sc, "node-agent", privileged_input);
        assert_eq!(
            sc["privileged"] == true,
            privileged_input,
            "privileged iff /dev/input needs it"
        );

        for w in workloads(&objects) {
            let pod = &w["spec"]["template"]["spec"];
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(pod[host] != true, "{} uses {host}", w["metadata"]["name"]);
            }
            for c in pod["containers"].as_array().unwrap() {
                assert!(
                    c["resources"]["requests"].is_object(),
                    "{} has no requests",
                    c["name"]
                );
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{} no memory limit",
                    c["name"]
                );
            }
        }
    }
}

/// The agent's mounts are read-only where the contract allows (kubelet pods dir, /proc,
/// cgroups, /dev/input, the checkpoint volume) and it gets NODE_NAME from the downward API,
/// runs only on workstations and tolerates the owner-active taint.
/// If this fails, the agent could write to the host or would not run where (and when) it must.
#[test]
fn node_agent_mounts_and_placement() {
    let objects = render(&[]);
    let agent = get(&objects, "DaemonSet", AGENT);
    let pod = &agent["spec"]["template"]["spec"];
    let c = container(agent, "node-agent");
    for m in c["volumeMounts"].as_array().unwrap() {
        if m["name"] != "tmp" {
            assert_eq!(
                m["readOnly"], true,
                "agent mount {} must be read-only",
                m["name"]
            );
        }
    }
    let mounts: BTreeSet<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in [
        "/var/lib/kubelet/pods",
        "/host/proc",
        "/host/sys/fs/cgroup",
        "/host/dev",
        "/host/run/dbus",
        "/var/lib/lodger/checkpoints",
    ] {
        assert!(mounts.contains(path), "agent does not mount {path}");
    }
    assert!(
        !mounts.contains("/dev/input"),
        "input devices are opt-in (agent.detection.inputAccess)"
    );
    assert!(
        c["securityContext"]["privileged"].is_null(),
        "the default agent is not privileged"
    );
    let args = flags(c);
    for flag in [
        "--dev-dir",
        "--logind",
        "--idle-after-seconds",
        "--idle-load",
        "--max-load",
    ] {
        assert!(args.contains(&flag.to_string()), "agent lacks {flag}");
    }
    let env = c["env"].as_array().unwrap();
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME is set");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(pod["nodeSelector"]["lodger.dev/workstation"], "true");
    assert!(
        pod["tolerations"].as_array().unwrap().iter().any(|t| {
            t["key"] == "lodger.dev/owner-active"
                && t["operator"] == "Exists"
                && t["effect"] == "NoSchedule"
        }),
        "agent must tolerate lodger.dev/owner-active"
    );

    // k3s: the kubelet root is configurable and the mount follows it.
    let objects = render(&[("kubeletRootDir", "/var/lib/rancher/k3s/agent/kubelet")]);
    let agent = get(&objects, "DaemonSet", AGENT);
    let vol = agent["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kubelet-pods")
        .unwrap();
    assert_eq!(
        vol["hostPath"]["path"],
        "/var/lib/rancher/k3s/agent/kubelet/pods"
    );
    assert!(flags(container(agent, "node-agent")).contains(&"--kubelet-root".to_string()));
}

/// With detection off the agent neither mounts /dev/input nor runs privileged, and is told not
/// to detect; with the device-plugin mode it requests the plugin's resource instead.
/// If this fails, `agent.detection.*` values no longer do what values.yaml says.
#[test]
fn detection_values_shape_the_agent() {
    let objects = render(&[("agent.detection.enabled", "false")]);
    let agent = get(&objects, "DaemonSet", AGENT);
    let c = container(agent, "node-agent");
    assert!(c["volumeMounts"].as_array().unwrap().iter().all(|m| {
        !["/dev/input", "/host/dev", "/host/run/dbus"].contains(&m["mountPath"].as_str().unwrap())
    }));
    assert!(c["securityContext"]["privileged"].is_null());
    assert!(flags(c).contains(&"--no-detection".to_string()));
    assert!(!flags(c).contains(&"--idle-after-seconds".to_string()));

    let objects = render(&[
        ("agent.detection.inputAccess", "devicePlugin"),
        ("agent.detection.devicePluginResource", "squat.ai/input"),
    ]);
    let agent = get(&objects, "DaemonSet", AGENT);
    let c = container(agent, "node-agent");
    assert_eq!(c["resources"]["limits"]["squat.ai/input"], "1");
    assert!(c["securityContext"]["privileged"].is_null());

    let objects = render(&[("agent.detection.inputAccess", "privileged")]);
    let agent = get(&objects, "DaemonSet", AGENT);
    let c = container(agent, "node-agent");
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/dev/input")
    );
    assert!(flags(c).contains(&"--input-dir".to_string()));
    let groups = &agent["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"];
    assert_eq!(
        groups,
        &serde_json::json!([0, 101]),
        "the input group is added for evdev only"
    );

    let out = template_raw(&[("agent.detection.inputAccess", "devicePlugin")]);
    assert!(
        !out.success,
        "devicePlugin without a resource name must be refused"
    );
    assert!(
        out.stderr.contains("devicePluginResource"),
        "{}",
        out.stderr
    );

    let objects = render(&[("agent.idleAfterSeconds", "42")]);
    let c = container(get(&objects, "DaemonSet", AGENT), "node-agent");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--idle-after-seconds=42")
    );
}

/// Deployment/DaemonSet selectors match their pod labels; each Service and NetworkPolicy
/// selects the pods of exactly one workload; ServiceMonitors select a Service.
/// If this fails, a Service, policy or rollout would target no pod (or the wrong one).
#[test]
fn selectors_match_pod_labels() {
    for set in VALUE_SETS {
        let objects = render(set);
        let pods: Vec<&Value> = workloads(&objects)
            .into_iter()
            .map(|w| {
                assert!(
                    selects(
                        &w["spec"]["selector"]["matchLabels"],
                        &w["spec"]["template"]["metadata"]["labels"]
                    ),
                    "{} selector does not match its pod labels",
                    w["metadata"]["name"]
                );
                &w["spec"]["template"]["metadata"]["labels"]
            })
            .collect();
        for svc in of_kind(&objects, "Service") {
            let n = pods
                .iter()
                .filter(|l| selects(&svc["spec"]["selector"], l))
                .count();
            assert_eq!(
                n, 1,
                "Service {} selects {n} workloads",
                svc["metadata"]["name"]
            );
        }
        for np in of_kind(&objects, "NetworkPolicy") {
            let n = pods
                .iter()
                .filter(|l| selects(&np["spec"]["podSelector"]["matchLabels"], l))
                .count();
            assert_eq!(
                n, 1,
                "NetworkPolicy {} selects {n} workloads",
                np["metadata"]["name"]
            );
        }
        for sm in of_kind(&objects, "ServiceMonitor") {
            let n = of_kind(&objects, "Service")
                .iter()
                .filter(|s| {
                    selects(
                        &sm["spec"]["selector"]["matchLabels"],
                        &s["metadata"]["labels"],
                    )
                })
                .count();
            assert_eq!(
                n, 1,
                "ServiceMonitor {} selects {n} Services",
                sm["metadata"]["name"]
            );
        }
    }
}

/// NetworkPolicies: ingress only to the metrics port; egress only to the API server ports
/// (and the configured CIDRs) and DNS.
/// If this fails, the operator or agent may talk to more than the API server and DNS.
#[test]
fn network_policies_are_tight() {
    let objects = render(&[("networkPolicy.apiServerCIDRs[0]", "10.96.0.1/32")]);
    for (name, port) in [(OPERATOR, 8080), (AGENT, 8081)] {
        let np = get(&objects, "NetworkPolicy", name);
        assert_eq!(
            np["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        let ingress = np["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0]["ports"],
            serde_json::json!([{"port": port, "protocol": "TCP"}])
        );
        let egress = np["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "egress: API server and DNS only");
        assert_eq!(
            egress[0]["to"],
            serde_json::json!([{"ipBlock": {"cidr": "10.96.0.1/32"}}])
        );
        let ports: Vec<i64> = egress[0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, vec![443, 6443]);
        assert!(
            egress[1]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["port"] == 53)
        );
    }
    let objects = render(&[("networkPolicy.enabled", "false")]);
    assert!(of_kind(&objects, "NetworkPolicy").is_empty());
}

/// existingClaim: no PVC is rendered and every pod mounts the named claim; otherwise the
/// chart's PVC is ReadWriteMany with the configured class and size.
/// If this fails, pods would mount a claim that does not exist or is not shared.
#[test]
fn checkpoint_claim_values() {
    let claim_of = |objects: &[Value], w: &str, kind: &str| -> String {
        get(objects, kind, w)["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "lodger-checkpoints")
            .unwrap()["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let objects = render(&[("checkpoints.existingClaim", "shared-checkpoints")]);
    assert!(of_kind(&objects, "PersistentVolumeClaim").is_empty());
    assert_eq!(
        claim_of(&objects, OPERATOR, "Deployment"),
        "shared-checkpoints"
    );
    assert_eq!(claim_of(&objects, AGENT, "DaemonSet"), "shared-checkpoints");
    let operator = container(get(&objects, "Deployment", OPERATOR), "operator");
    assert!(
        operator["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--checkpoint-claim=shared-checkpoints")
    );

    let objects = render(&[
        ("checkpoints.storageClassName", "nfs"),
        ("checkpoints.size", "200Gi"),
    ]);
    let pvc = get(&objects, "PersistentVolumeClaim", "lodger-checkpoints");
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
    assert_eq!(pvc["spec"]["storageClassName"], "nfs");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "200Gi");
    assert_eq!(
        claim_of(&objects, OPERATOR, "Deployment"),
        "lodger-checkpoints"
    );
}

/// With sharedSource, the release namespace and every job namespace get a claim of the one
/// name the operator puts in workload pods, each pre-bound to its own static PV on the same
/// shared source, never deleted with the PV (Retain).
/// If this fails, workload pods in a job namespace would mount no claim, or different storage.
#[test]
fn shared_source_makes_a_claim_per_namespace() {
    let objects = render(&[
        ("checkpoints.sharedSource.nfs.server", "nas.lab"),
        ("checkpoints.sharedSource.nfs.path", "/export/lodger"),
        ("checkpoints.jobNamespaces[0]", "batch"),
        ("checkpoints.jobNamespaces[1]", NAMESPACE),
    ]);
    let pvcs = of_kind(&objects, "PersistentVolumeClaim");
    let pvs = of_kind(&objects, "PersistentVolume");
    let namespaces: BTreeSet<&str> = pvcs
        .iter()
        .map(|p| p["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from([NAMESPACE, "batch"]),
        "one claim per namespace, no duplicates"
    );
    assert_eq!(pvs.len(), 2);
    for pvc in pvcs {
        assert_eq!(pvc["metadata"]["name"], "lodger-checkpoints");
        assert_eq!(
            pvc["spec"]["storageClassName"], "",
            "no dynamic provisioning of a private volume"
        );
        let pv = get(
            &objects,
            "PersistentVolume",
            pvc["spec"]["volumeName"].as_str().unwrap(),
        );
        assert_eq!(
            pv["spec"]["claimRef"]["namespace"],
            pvc["metadata"]["namespace"]
        );
        assert_eq!(pv["spec"]["claimRef"]["name"], "lodger-checkpoints");
        assert_eq!(
            pv["spec"]["accessModes"],
            serde_json::json!(["ReadWriteMany"])
        );
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(
            pv["spec"]["nfs"],
            serde_json::json!({"server": "nas.lab", "path": "/export/lodger"})
        );
    }
    let operator = container(get(&objects, "Deployment", OPERATOR), "operator");
    let env = operator["env"].as_array().into_iter().flatten();
    let args = operator["args"].as_array().into_iter().flatten();
    assert!(
        env.chain(args)
            .any(|v| v == "--checkpoint-claim=lodger-checkpoints"
                || (v["name"] == "LODGER_CHECKPOINT_CLAIM" && v["value"] == "lodger-checkpoints")),
        "the operator must be told the claim name"
    );
}

/// The operator has liveness /healthz and readiness /readyz on its metrics port, leader
/// election through a Lease in the release namespace, and replicas from values.
/// If this fails, the kubelet could not tell a wedged operator, or two replicas would both act.
#[test]
fn operator_probes_and_leader_election() {
    let objects = render(&[("operator.replicas", "3")]);
    let d = get(&objects, "Deployment", OPERATOR);
    assert_eq!(d["spec"]["replicas"], 3);
    let c = container(d, "operator");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--lease-name=lodger-operator"));
    assert!(args.contains(&"--lease-namespace=lodger-system"));
    let identity = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("the replica's identity comes from the downward API");
    assert_eq!(
        identity["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let role = get(&objects, "Role", "lodger-operator-leader-election");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
}

/// metrics.serviceMonitor.enabled renders one ServiceMonitor per component, scraping /metrics
/// on the named port.
/// If this fails, Prometheus-operator users get no scrape config.
#[test]
fn service_monitors_when_enabled() {
    let objects = render(&[
        ("metrics.serviceMonitor.enabled", "true"),
        ("metrics.serviceMonitor.labels.release", "prom"),
    ]);
    let sms = of_kind(&objects, "ServiceMonitor");
    assert_eq!(sms.len(), 2);
    for sm in sms {
        assert_eq!(sm["metadata"]["labels"]["release"], "prom");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    }
}

/// values.schema.json refuses bad values at `helm template` and `helm lint`.
/// If this fails, a typo or nonsense value would install silently.
#[test]
fn schema_refuses_bad_values() {
    for (key, value, needle) in [
        ("agent.idleAfterSeconds", "-1", "idleAfterSeconds"),
        ("logging.format", "xml", "logging.format"),
        ("logging.level", "loud", "logging.level"),
        ("image.pullPolicy", "Sometimes", "pullPolicy"),
        ("checkpoints.size", "lots", "size"),
        ("agent.load.maxLoad", "-0.5", "maxLoad"),
        ("operator.replicas", "0", "replicas"),
        ("agent.detection.inputAccess", "root", "inputAccess"),
        ("kubeletRootDir", "relative/path", "kubeletRootDir"),
        ("agent.idleAfterSecs", "30", "idleAfterSecs"),
        (
            "checkpoints.jobNamespaces[0]",
            "Not_A_Namespace",
            "jobNamespaces",
        ),
    ] {
        let out = template_raw(&[(key, value)]);
        assert!(!out.success, "helm template accepted {key}={value}");
        assert!(
            out.stderr.contains(needle),
            "error for {key}={value} does not name it:\n{}",
            out.stderr
        );
        let out = lint(&[(key, value)]);
        assert!(!out.success, "helm lint accepted {key}={value}");
    }
}

/// Every value in values.yaml is typed in values.schema.json (and every object closed with
/// additionalProperties: false), so no value escapes validation.
/// If this fails, a value was added to values.yaml without a schema entry.
#[test]
fn every_value_is_typed() {
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    fn walk(path: &str, value: &Value, schema: &Value) {
        assert!(
            schema.get("type").is_some() || schema.get("oneOf").is_some(),
            "{path} has no type"
        );
        if let (Some(map), Some(props)) = (value.as_object(), schema.get("properties")) {
            assert_eq!(
                schema["additionalProperties"], false,
                "{path} is not closed"
            );
            for (k, v) in map {
                let sub = props
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is not in the schema"));
                walk(&format!("{path}.{k}"), v, sub);
            }
        }
    }
    walk("", &values, &schema);
}

/// The chart's crds/ equals the repository's crds/ byte for byte (same files, same bytes).
/// If this fails, run `make crds`: the chart would install stale CRDs.
#[test]
fn chart_crds_equal_generated_crds() {
    let list = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let repo = workspace_root().join("crds");
    let chart = chart_dir().join("crds");
    let files = list(&repo);
    assert!(!files.is_empty(), "crds/ is empty");
    assert_eq!(
        files,
        list(&chart),
        "crds/ and charts/lodger/crds/ hold different files"
    );
    for f in &files {
        let a = std::fs::read(repo.join(f)).unwrap();
        let b = std::fs::read(chart.join(f)).unwrap();
        assert!(
            a == b,
            "charts/lodger/crds/{f} differs from crds/{f}: run `make crds`"
        );
    }
}

/// The VAP binding enforces (Deny) the policy, and the policy's match condition names the
/// ServiceAccount the DaemonSet actually runs as.
/// If this fails, the per-node restriction would silently apply to nobody.
#[test]
fn vap_targets_the_agent_service_account() {
    for set in VALUE_SETS {
        let objects = render(set);
        let vap = get(
            &objects,
            "ValidatingAdmissionPolicy",
            "lodger-node-agent-own-node",
        );
        let binding = get(
            &objects,
            "ValidatingAdmissionPolicyBinding",
            "lodger-node-agent-own-node",
        );
        assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
        assert_eq!(vap["spec"]["failurePolicy"], "Fail");
        let sa =
            get(&objects, "DaemonSet", AGENT)["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap();
        let cond = vap["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap();
        assert!(
            cond.contains(&format!("'system:serviceaccount:{NAMESPACE}:{sa}'")),
            "VAP match condition {cond} does not name the agent's ServiceAccount {sa}"
        );
    }
}

/// NOTES.txt tells how to label workstations, how to run a job, and states that job namespaces
/// need the `privileged` Pod Security level; it says where the checkpoint claim must exist.
/// If this fails, a user installing the chart is not told the steps it cannot work without.
#[test]
fn notes_explain_labels_jobs_and_pod_security() {
    let tmp = tempfile::tempdir().unwrap();
    let notes = lodger_chart_tests::render_notes(tmp.path(), &[]);
    for needle in [
        "lodger.dev/workstation=true",
        "pod-security.kubernetes.io/enforce=privileged",
        "SYS_ADMIN",
        "SYS_CHROOT",
        "Unconfined",
        "kind: MigratableJob",
        "kubectl logs",
        "create it yourself in each job namespace",
    ] {
        assert!(notes.contains(needle), "NOTES lack {needle:?}:\n{notes}");
    }
    let notes = lodger_chart_tests::render_notes(
        tmp.path(),
        &[
            ("agent.detection.enabled", "false"),
            ("checkpoints.sharedSource.nfs.server", "nas"),
            ("checkpoints.sharedSource.nfs.path", "/x"),
            ("checkpoints.jobNamespaces[0]", "batch"),
        ],
    );
    assert!(notes.contains("Idle detection is OFF"), "{notes}");
    assert!(notes.contains("lodger-system, batch"), "{notes}");
}
