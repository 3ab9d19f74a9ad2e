//! The e2e entry points work without a cluster: `scripts/e2e.sh` skips cleanly, and the kind
//! files it documents fit the chart (the suite itself is compiled by `make test`).

use std::collections::BTreeSet;
use std::process::Command;

use lodger_chart_tests::{get, render_with_file, workspace_root};
use serde_json::Value;

/// Without KUBECONFIG (or LODGER_IMAGE) `scripts/e2e.sh` exits 0 and says "skipped".
/// If this fails, `make e2e` would break machines without a cluster (or run against one by
/// accident).
#[test]
fn e2e_script_skips_without_a_cluster() {
    for (kubeconfig, image) in [
        (None, None),
        (Some("/nonexistent/kubeconfig"), None),
        (None, Some("lodger:e2e")),
    ] {
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("scripts/e2e.sh"))
            .env_remove("KUBECONFIG")
            .env_remove("LODGER_IMAGE");
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        if let Some(i) = image {
            cmd.env("LODGER_IMAGE", i);
        }
        let out = cmd.output().expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "e2e.sh failed without a cluster: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("skipped"),
            "e2e.sh must say it skipped: {stdout}"
        );
    }
}

/// Every shell script this crate's owner ships parses (`bash -n`).
/// If this fails, a script has a syntax error that only shows on the machine that runs it.
#[test]
fn scripts_parse() {
    for script in ["scripts/e2e.sh", "scripts/make-bundle.sh"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(workspace_root().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The kind setup is consistent: the chart rendered with e2e/kind/values.yaml makes the shared
/// claim on the directory every kind worker mounts (the same directory, for the PV the suite
/// clones per scenario namespace), idle detection is off, and the kind config has the node
/// shape the scenarios need (>= 3 workstations, a plain worker).
/// If this fails, `make e2e` on kind would hang on an unbound claim or find too few nodes.
#[test]
fn kind_files_fit_the_chart() {
    let dir = workspace_root().join("e2e/kind");
    let objects = render_with_file(&dir.join("values.yaml"));
    let pv = get(
        &objects,
        "PersistentVolume",
        "lodger-checkpoints-lodger-system",
    );
    let pvc = get(&objects, "PersistentVolumeClaim", "lodger-checkpoints");
    assert_eq!(pvc["metadata"]["namespace"], lodger_chart_tests::NAMESPACE);
    assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
    assert_eq!(pv["spec"]["claimRef"]["name"], "lodger-checkpoints");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    let host_path = pv["spec"]["hostPath"]["path"]
        .as_str()
        .expect("a hostPath PV");

    let agent = get(&objects, "DaemonSet", "lodger-node-agent");
    let volumes = agent["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let used = volumes
        .iter()
        .find(|v| v["name"] == "lodger-checkpoints")
        .unwrap();
    assert_eq!(
        used["persistentVolumeClaim"]["claimName"],
        "lodger-checkpoints"
    );
    let args = &agent["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--no-detection")
    );

    let kind: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kind-config.yaml")).unwrap())
            .unwrap();
    let nodes = kind["nodes"].as_array().unwrap();
    let workers: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "worker").collect();
    let workstations = workers
        .iter()
        .filter(|n| n["labels"]["lodger.dev/workstation"] == "true")
        .count();
    assert!(workstations >= 3, "the scenarios need three workstations");
    assert!(
        workers.len() > workstations,
        "the scenarios need a non-workstation worker"
    );
    for w in &workers {
        let mounts: BTreeSet<&str> = w["extraMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["containerPath"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            mounts.contains(host_path),
            "a worker does not mount the shared {host_path}"
        );
    }
}

/// Fake `kubectl`, `helm` and `cargo` for driving scripts/e2e.sh without a cluster: each logs
/// its arguments to `$FAKE_LOG`; kubectl reports leftovers when `$FAKE_LEFTOVER` is set and
/// changes a node's state when `$FAKE_NODE_DRIFT` is set; cargo exits `$FAKE_TEST_RC`.
const FAKE_KUBECTL: &str = r#"#!/bin/bash
echo "kubectl $*" >>"$FAKE_LOG"
case "$*" in
  "get nodes -o jsonpath="*)
    if [ -n "${FAKE_NODE_DRIFT:-}" ] && grep -q '^cargo ' "$FAKE_LOG"; then
      printf 'desk-1 idle=true unschedulable= taints=lodger.dev/owner-active\n'
    else
      printf 'desk-1 idle=false unschedulable= taints=\n'
    fi ;;
  "get namespace lodger-system") exit 1 ;;
  "get clusterrole,"*) [ -n "${FAKE_LEFTOVER:-}" ] && echo "clusterrole.rbac.authorization.k8s.io/lodger-stub" ;;
  *) ;;
esac
exit 0
"#;

const FAKE_HELM: &str = r#"#!/bin/bash
echo "helm $*" >>"$FAKE_LOG"
case "$1" in
  status) exit 1 ;;
esac
exit 0
"#;

const FAKE_CARGO: &str = r#"#!/bin/bash
echo "cargo $*" >>"$FAKE_LOG"
exit "${FAKE_TEST_RC:-0}"
"#;

struct Run {
    rc: i32,
    log: String,
    stderr: String,
}

fn run_e2e(image: &str, env: &[(&str, &str)]) -> Run {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, body) in [
        ("kubectl", FAKE_KUBECTL),
        ("helm", FAKE_HELM),
        ("cargo", FAKE_CARGO),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        paths.push(p);
    }
    let log = tmp.path().join("log");
    std::fs::write(&log, "").unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("scripts/e2e.sh"))
        .env("KUBECONFIG", tmp.path().join("kubeconfig"))
        .env("LODGER_IMAGE", image)
        .env("KUBECTL", &paths[0])
        .env("LODGER_HELM", &paths[1])
        .env("CARGO", &paths[2])
        .env("FAKE_LOG", &log)
        .env_remove("LODGER_E2E_VALUES")
        .env_remove("LODGER_E2E_SETUP")
        .env_remove("LODGER_E2E_NAMESPACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash runs");
    Run {
        rc: out.status.code().unwrap_or(-1),
        log: std::fs::read_to_string(&log).unwrap(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// With a cluster, e2e.sh installs the chart with the image split into repository and tag (a
/// registry port is not a tag), idle detection off and the extra values file, waits for both
/// workloads, runs the scenarios single-threaded, then uninstalls, deletes the CRDs and the
/// namespace it created, and checks nothing is left.
/// If this fails, `make e2e` would test the wrong image, race scenarios or leave the cluster
/// dirty.
#[test]
fn e2e_script_installs_runs_and_cleans_up() {
    let values = workspace_root().join("e2e/kind/values.yaml");
    let run = run_e2e(
        "registry.lab:5000/lodger:e2e-1",
        &[("LODGER_E2E_VALUES", values.to_str().unwrap())],
    );
    assert_eq!(run.rc, 0, "e2e.sh failed:\n{}\n{}", run.log, run.stderr);
    let lines: Vec<&str> = run.log.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("e2e.sh never ran {needle:?}:\n{}", run.log))
    };
    let install = lines[pos("helm upgrade --install lodger")];
    for arg in [
        "--set image.repository=registry.lab:5000/lodger",
        "--set image.tag=e2e-1",
        "--set agent.detection.enabled=false",
        "--namespace lodger-system",
        "--wait",
    ] {
        assert!(install.contains(arg), "install lacks {arg}: {install}");
    }
    assert!(
        install.contains(&format!("--values {}", values.display())),
        "{install}"
    );
    assert!(pos("kubectl create namespace lodger-system") < pos("helm upgrade --install"));
    assert!(
        pos("label namespace lodger-system pod-security.kubernetes.io/enforce=privileged")
            < pos("helm upgrade --install")
    );
    assert!(pos("rollout status deployment/lodger-operator") > pos("helm upgrade --install"));
    assert!(pos("rollout status daemonset/lodger-node-agent") > pos("helm upgrade --install"));
    let test = pos("cargo test --locked -p lodger-e2e -- --test-threads=1");
    assert!(test > pos("rollout status daemonset/lodger-node-agent"));
    assert!(pos("helm uninstall lodger --namespace lodger-system") > test);
    for crd in ["migratablejobs", "checkpoints", "jobsignals"] {
        assert!(
            pos(&format!("crds/{crd}.lodger.dev.yaml")) > test,
            "CRD {crd} not deleted"
        );
    }
    assert!(pos("kubectl delete namespace lodger-system") > test);
    assert!(run.stderr.contains("nothing left behind"), "{}", run.stderr);
}

/// A failing scenario run makes e2e.sh fail (after cleaning up); leftovers or nodes not put
/// back make it fail even when the scenarios passed.
/// If this fails, `make e2e` could report success over a failed run or a dirty cluster.
#[test]
fn e2e_script_fails_on_test_failure_or_leftovers() {
    let run = run_e2e("lodger:e2e", &[("FAKE_TEST_RC", "101")]);
    assert_eq!(
        run.rc, 101,
        "the scenarios' status must be e2e.sh's: {}",
        run.stderr
    );
    assert!(
        run.log.contains("helm uninstall"),
        "cleanup must run after a failure"
    );

    let run = run_e2e("lodger:e2e", &[("FAKE_LEFTOVER", "1")]);
    assert_ne!(run.rc, 0, "leftovers must fail the run");
    assert!(
        run.stderr.contains("LEFT BEHIND") && run.stderr.contains("lodger-stub"),
        "{}",
        run.stderr
    );

    let run = run_e2e("lodger:e2e", &[("FAKE_NODE_DRIFT", "1")]);
    assert_ne!(run.rc, 0, "a node left tainted must fail the run");
    assert!(run.stderr.contains("node-state"), "{}", run.stderr);

    // An image without a tag is :latest.
    let run = run_e2e("lodger", &[]);
    assert_eq!(run.rc, 0, "{}", run.stderr);
    assert!(
        run.log
            .contains("--set image.repository=lodger --set image.tag=latest"),
        "{}",
        run.log
    );
}
