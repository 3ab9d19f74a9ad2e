//! Fatal errors end the real binary with exit code 1 and a message in the termination log (what
//! `kubectl describe pod` shows as the container's last state).

use std::process::Command;

/// If this fails, an agent started without its node name (a DaemonSet missing the downward API
/// env) would run on without one, or die without telling the admin why.
#[test]
fn missing_node_name_is_fatal_and_explained_in_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let out = Command::new(env!("CARGO_BIN_EXE_lodger-node-agent"))
        .arg(format!("--termination-log={}", log.display()))
        .arg("--metrics-addr=127.0.0.1:0")
        .env_remove("NODE_NAME")
        .env("RUST_LOG", "off")
        .output()
        .expect("the agent runs");
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).expect("termination log written");
    assert!(text.contains("NODE_NAME"), "{text}");
    assert!(text.contains("downward API"), "{text}");
}
