//! Private registries: the chart's `imagePullSecrets` reach the operator (which adds them to the
//! workload pods and home stubs it creates in job namespaces, `operator/src/desired.rs`), the
//! chart's `image.pullPolicy` reaches it too, bad names are refused at render time, and no role
//! the chart renders may touch Secrets (the operator never reads or copies pull secrets; an
//! admin creates them in each job namespace, docs/lab-cluster.md "Private registry").

use std::process::Command;

use lodger_chart_tests::{binary, container, get, of_kind, render, template_raw};
use serde_json::Value;

const OPERATOR: &str = "lodger-operator";

/// The operator container's args, as strings.
fn operator_args(objects: &[Value]) -> Vec<String> {
    container(get(objects, "Deployment", OPERATOR), "operator")["args"]
        .as_array()
        .expect("the operator has args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

/// The values of every `--image-pull-secret=` arg, in order.
fn pull_secret_args(args: &[String]) -> Vec<&str> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--image-pull-secret="))
        .collect()
}

/// The operator's environment variable names.
fn operator_env_names(objects: &[Value]) -> Vec<String> {
    container(get(objects, "Deployment", OPERATOR), "operator")["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// With `imagePullSecrets` set, the operator gets one `--image-pull-secret` per name, in the
/// values' order, and its own pod (like the agent's) pulls with them too; the binary accepts the
/// rendered args. If this fails, job pods in a lab with a private registry cannot pull the
/// Lodger image (ImagePullBackOff on `lodger-install` and on the stub).
#[test]
fn pull_secrets_reach_the_operator() {
    let objects = render(&[
        ("imagePullSecrets[0]", "regcred"),
        ("imagePullSecrets[1]", "mirror.lab"),
    ]);
    let args = operator_args(&objects);
    assert_eq!(pull_secret_args(&args), ["regcred", "mirror.lab"]);
    for (kind, name) in [("Deployment", OPERATOR), ("DaemonSet", "lodger-node-agent")] {
        let pod = &get(&objects, kind, name)["spec"]["template"]["spec"];
        let names: Vec<&str> = pod["imagePullSecrets"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no imagePullSecrets"))
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(names, ["regcred", "mirror.lab"], "{name}");
    }
    // The binary parses the names (it refuses invalid ones at start-up; `--version` exits after
    // parsing, without an API server).
    let out = Command::new(binary(OPERATOR, OPERATOR))
        .args(&args)
        .arg("--version")
        .output()
        .expect("the operator binary runs");
    assert!(
        out.status.success(),
        "the operator refused {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The check above can fail: the binary refuses a name that is not a Secret name.
/// If this fails, the binary's acceptance of the chart's names proves nothing.
#[test]
fn operator_binary_refuses_a_bad_secret_name() {
    let out = Command::new(binary(OPERATOR, OPERATOR))
        .args(["--image=x", "--image-pull-secret=Reg_Cred", "--version"])
        .output()
        .expect("the operator binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Reg_Cred"));
}

/// Without `imagePullSecrets` the operator gets no pull-secret flag and no pull-secret env, and
/// no pod of the chart names a pull secret. If this fails, pods name Secrets nobody created.
#[test]
fn no_pull_secrets_by_default() {
    let objects = render(&[]);
    assert!(pull_secret_args(&operator_args(&objects)).is_empty());
    assert!(
        !operator_env_names(&objects)
            .iter()
            .any(|n| n == "LODGER_IMAGE_PULL_SECRETS")
    );
    for kind in ["Deployment", "DaemonSet"] {
        for w in of_kind(&objects, kind) {
            assert!(
                w["spec"]["template"]["spec"]
                    .get("imagePullSecrets")
                    .is_none(),
                "{} names pull secrets",
                w["metadata"]["name"]
            );
        }
    }
}

/// `image.pullPolicy` reaches the operator, which applies it to the Lodger image in the pods it
/// creates. If this fails, an air-gapped lab's `Never` (or a moving tag's `Always`) stops at
/// the chart's own pods.
#[test]
fn pull_policy_reaches_the_operator() {
    for policy in ["IfNotPresent", "Always", "Never"] {
        let objects = render(&[("image.pullPolicy", policy)]);
        let args = operator_args(&objects);
        let want = format!("--image-pull-policy={policy}");
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("--image-pull-policy="))
                .count(),
            1
        );
        assert!(args.contains(&want), "{args:?} lacks {want}");
        let c = container(get(&objects, "Deployment", OPERATOR), "operator");
        assert_eq!(c["imagePullPolicy"], policy);
    }
}

/// The schema refuses pull-secret names Kubernetes would refuse (and duplicates), so a typo
/// fails `helm install` instead of crash-looping the operator. If this fails, the schema and
/// the operator's name check disagree.
#[test]
fn schema_refuses_bad_pull_secret_names() {
    for bad in ["Regcred", "reg_cred", "-regcred", "regcred.", "a..b"] {
        let out = template_raw(&[("imagePullSecrets[0]", bad)]);
        assert!(!out.success, "{bad:?} was accepted");
        assert!(out.stderr.contains("imagePullSecrets"), "{}", out.stderr);
    }
    let dup = template_raw(&[
        ("imagePullSecrets[0]", "regcred"),
        ("imagePullSecrets[1]", "regcred"),
    ]);
    assert!(!dup.success, "a duplicate name was accepted");
    for good in ["regcred", "a-b.c1", "1password"] {
        let out = template_raw(&[("imagePullSecrets[0]", good)]);
        assert!(out.success, "{good:?} was refused: {}", out.stderr);
    }
}

/// No Role or ClusterRole the chart renders grants anything on Secrets, with or without pull
/// secrets: the operator references pull secrets by name and never reads or copies them. If this
/// fails, a component can read every Secret it is granted, cluster-wide for a ClusterRole.
#[test]
fn no_role_touches_secrets() {
    for set in [&[][..], &[("imagePullSecrets[0]", "regcred")][..]] {
        let objects = render(set);
        let roles: Vec<&Value> = ["Role", "ClusterRole"]
            .iter()
            .flat_map(|k| of_kind(&objects, k))
            .collect();
        assert!(!roles.is_empty());
        for role in roles {
            for rule in role["rules"].as_array().expect("roles have rules") {
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert!(
                    !resources.iter().any(|r| *r == "secrets" || *r == "*"),
                    "{} {} grants {:?} on {resources:?}",
                    role["kind"],
                    role["metadata"]["name"],
                    rule["verbs"]
                );
            }
        }
    }
}

/// NOTES.txt tells an installer with pull secrets to create them in job namespaces too, and says
/// nothing about pull secrets without them. If this fails, a lab with a private registry learns
/// about the namespaced Secrets only from ImagePullBackOff.
#[test]
fn notes_say_to_create_pull_secrets_in_job_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let notes = lodger_chart_tests::render_notes(
        tmp.path(),
        &[
            ("imagePullSecrets[0]", "regcred"),
            ("imagePullSecrets[1]", "mirror"),
        ],
    );
    for needle in [
        "pull Secret(s) regcred, mirror",
        "create each in every job namespace",
        "kubectl create secret docker-registry regcred -n batch",
    ] {
        assert!(notes.contains(needle), "NOTES lack {needle:?}:\n{notes}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = lodger_chart_tests::render_notes(tmp.path(), &[]);
    assert!(!plain.contains("pull Secret"), "{plain}");
}
