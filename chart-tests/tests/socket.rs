//! The node agent's identity (the chart: uid 65532, group 0, no capabilities) can reach a real
//! shim's control socket; another non-root identity cannot. The shim runs for real, as root, as
//! in a workload container.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lodger_chart_tests::{binary, render};

struct Shim(Child);

/// Pids whose parent is `ppid` (from /proc/<pid>/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the last ')': state, ppid, ...
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

impl Drop for Shim {
    fn drop(&mut self) {
        // NB: outside a container, killing the shim would orphan the job's init (PID 1 of the
        // job's PID namespace) instead of ending it. Kill that init first: the kernel then
        // kills everything in its namespace.
        for pid in children_of(self.0.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(socket: &Path, uid: u32, gid: u32) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lodger-connect-probe"))
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("the probe runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A shim started as root makes a socket the chart's agent identity (non-root uid, group 0)
/// can connect to and get a status reply from; a non-root identity without group 0 is refused.
/// If this fails, the node agent cannot reach any shim: no checkpoint and no signal would ever
/// be delivered on a real node.
#[test]
fn agent_identity_reaches_the_shim_socket() {
    let objects = render(&[]);
    let agent = lodger_chart_tests::get(&objects, "DaemonSet", "lodger-node-agent");
    let pod_sc = &agent["spec"]["template"]["spec"]["securityContext"];
    let uid = u32::try_from(pod_sc["runAsUser"].as_u64().unwrap()).unwrap();
    assert_eq!(
        pod_sc["supplementalGroups"][0], 0,
        "the agent traverses the kubelet dirs as group 0"
    );

    let tmp = tempfile::tempdir().unwrap();
    let control = tmp.path().join("control");
    let checkpoints = tmp.path().join("checkpoints");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::create_dir_all(&checkpoints).unwrap();
    let shim = Command::new(binary("lodger-shim", "lodger-shim"))
        .arg("--control-dir")
        .arg(&control)
        .arg("--checkpoint-root")
        .arg(&checkpoints)
        .args(["--criu", "/usr/local/sbin/criu"])
        .args([
            "--job-namespace",
            "ns",
            "--job-name",
            "probe",
            "--job-uid",
            "u-1",
        ])
        .args(["--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("the shim starts");
    let _shim = Shim(shim);
    let socket = control.join("shim.sock");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the shim made no socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // As on a node: the emptyDir is 0777, the kubelet's directories above it root:root 0750.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).unwrap();

    let (code, out) = probe(&socket, uid, 0);
    assert_eq!(
        code, 0,
        "uid {uid} with group 0 could not talk to the shim: {out}"
    );
    let reply: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON reply");
    assert_eq!(reply["version"], 1, "{reply}");

    let (code, out) = probe(&socket, uid, uid);
    assert_eq!(
        code, 3,
        "a non-root identity without group 0 must be refused: {out}"
    );
}
