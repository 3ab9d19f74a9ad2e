//! The real agent binary, end to end without an API server (`--dry-run`): a FIFO stands in for
//! `/dev/input/event0`, a fixture file for `/proc/loadavg`; the agent's decisions come out as
//! JSON lines on stdout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Kills the agent when the test ends, however it ends.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Value>,
    log: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(root: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lodger-node-agent"))
            .args([
                "--dry-run",
                "--node-name=desk-7",
                "--metrics-addr=127.0.0.1:0",
            ])
            .args(["--idle-after-seconds=1", "--poll-seconds=1", "--logind=off"])
            .arg(format!("--input-dir={}", root.join("input").display()))
            .arg(format!("--sys-input-dir={}", root.join("sys").display()))
            .arg(format!("--dev-dir={}", root.join("dev").display()))
            .arg(format!("--proc-root={}", root.join("proc").display()))
            .arg(format!("--cgroup-root={}", root.join("cgroup").display()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .expect("agent starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            lines: rx,
            log: root.join("agent.log"),
        }
    }

    /// The next decision, within 10 s.
    fn next_state(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "the agent reported no new state within 10 s; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            })
    }
}

fn input_record(kind: u16, code: u16, value: i32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[16..18].copy_from_slice(&kind.to_ne_bytes());
    b[18..20].copy_from_slice(&code.to_ne_bytes());
    b[20..24].copy_from_slice(&value.to_ne_bytes());
    b
}

/// Opens the FIFO's write end once the agent has opened its read end.
fn open_writer(fifo: &Path) -> std::fs::File {
    let started = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_o_nonblock())
            .open(fifo)
        {
            Ok(f) => return f,
            // ENXIO: no reader yet.
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the agent never opened {}: {e}", fifo.display()),
        }
    }
}

fn libc_o_nonblock() -> i32 {
    nix::libc::O_NONBLOCK
}

/// If this fails, the real agent loop does not go from a quiet machine to idle, from a key press
/// (a real evdev record through a FIFO) to owner-active at once, and from a load spike above the
/// busy threshold to active: the decisions the Node would get (label, annotation, taint).
#[test]
fn dry_run_agent_goes_idle_then_active_on_input_and_on_load() {
    let root = tempfile::tempdir().unwrap();
    for d in ["input", "dev", "proc", "cgroup"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    let fifo = root.path().join("input/event0");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let loadavg = root.path().join("proc/loadavg");
    std::fs::write(&loadavg, "0.05 0.04 0.01 1/100 42\n").unwrap();

    let agent = Agent::start(root.path());
    let mut writer = open_writer(&fifo);

    let first = agent.next_state();
    assert_eq!(first["state"], "idle", "{first}");
    let patch = &first["wouldApply"];
    assert_eq!(patch["metadata"]["labels"]["lodger.dev/idle"], "true");
    assert!(patch["metadata"]["annotations"]["lodger.dev/idle-since"].is_string());
    assert_eq!(patch["spec"]["taints"], serde_json::json!([]));

    // A key press: EV_MSC scan code, EV_KEY press, EV_SYN.
    for r in [
        input_record(4, 4, 30),
        input_record(1, 30, 1),
        input_record(0, 0, 0),
    ] {
        writer.write_all(&r).unwrap();
    }
    let active = agent.next_state();
    assert_eq!(active["state"], "active-input", "{active}");
    assert_eq!(
        active["wouldApply"]["metadata"]["labels"]["lodger.dev/idle"],
        "false"
    );
    assert_eq!(
        active["wouldApply"]["spec"]["taints"][0]["key"],
        "lodger.dev/owner-active"
    );

    let idle_again = agent.next_state();
    assert_eq!(idle_again["state"], "idle", "{idle_again}");

    std::fs::write(&loadavg, "0.90 0.30 0.10 3/100 42\n").unwrap();
    let busy = agent.next_state();
    assert_eq!(busy["state"], "active-load", "{busy}");
    drop(writer);
}
