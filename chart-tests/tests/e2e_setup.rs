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
