//! Who can remove checkpoint images: the chart runs the operator as `checkpoints.ownerUid`
//! (default 0) with every capability dropped. Images are written as the contract says
//! (docs/contracts.md): `<ns>/<job>/<seq>/`, directories 0700, files 0600, owned by the shim's
//! uid 0. Removal is run for real with `setpriv` (capability sets emptied) and `rm -rf`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use lodger_chart_tests::{container, get, render};

fn write_image(root: &Path) -> std::path::PathBuf {
    let seq = root.join("batch/render/3");
    std::fs::create_dir_all(&seq).unwrap();
    for f in ["pages-1.img", "core-1.img", "manifest.json"] {
        let p = seq.join(f);
        std::fs::write(&p, b"image bytes").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for d in [root.join("batch"), root.join("batch/render"), seq.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    seq
}

fn remove_as(uid: i64, gid: i64, dir: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ])
        .args([
            "--bounding-set",
            "-all",
            "--inh-caps",
            "-all",
            "--no-new-privs",
        ])
        .arg("rm")
        .arg("-rf")
        .arg(dir)
        .status()
        .expect("setpriv runs")
        .success()
        && !dir.exists()
}

/// With the default values the operator's uid (0, no capabilities) can delete a root-owned
/// 0700/0600 image, and a non-root uid cannot; so the default is the one that lets the
/// Checkpoint finalizer finish on storage without root squashing.
/// If this fails, Checkpoints would hang on their finalizer and namespaces would never delete.
#[test]
fn operator_identity_can_delete_images() {
    let objects = render(&[]);
    let d = get(&objects, "Deployment", "lodger-operator");
    let pod_sc = &d["spec"]["template"]["spec"]["securityContext"];
    let uid = pod_sc["runAsUser"].as_i64().unwrap();
    let gid = pod_sc["runAsGroup"].as_i64().unwrap();
    let caps = &container(d, "operator")["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert!(caps["add"].is_null());

    let tmp = tempfile::tempdir().unwrap();
    let seq = write_image(tmp.path());
    assert!(
        !remove_as(65532, 65532, &seq),
        "a non-root uid removed root's 0700 image"
    );
    assert!(seq.exists());
    assert!(
        remove_as(uid, gid, &seq),
        "the operator's identity ({uid}:{gid}, no capabilities) could not remove the image"
    );
}
