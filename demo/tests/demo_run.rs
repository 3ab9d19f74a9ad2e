//! One real run of the demo's StopAndCopy migration: two real `lodger-shim`s in two namespaced
//! "nodes", real CRIU, the real workload (needs root, CRIU 4.x and the lodger-shim binary next to
//! this crate's binaries, which `make test` builds first).

use std::path::{Path, PathBuf};

use lodger_demo::scenario::{DemoConfig, migrate_once};
use lodger_shim::control::Strategy;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_lodger-workload"))
        .parent()
        .expect("binaries live in a directory")
        .to_path_buf()
}

/// The demo's promise for StopAndCopy: node-b's first tick is node-a's last plus one, the PID
/// inside the job and the memory checksum are unchanged, the file offset continues, every signal
/// (one sent mid-checkpoint) arrives exactly once, and node-b's shim exits with the job's code.
/// If this fails, `make demo` would show a broken migration.
#[test]
fn stop_and_copy_migrates_the_job_intact() {
    let shim = bin_dir().join("lodger-shim");
    assert!(
        shim.exists(),
        "{} is missing: build it first (`cargo build -p lodger-shim`; `make test` does)",
        shim.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("lodger-demo-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cfg = DemoConfig {
        strategies: vec![Strategy::StopAndCopy],
        dir: dir.path().to_path_buf(),
        shim,
        workload: PathBuf::from(env!("CARGO_BIN_EXE_lodger-workload")),
        criu: PathBuf::from(lodger_engine::DEFAULT_CRIU_PATH),
        mem_mib: 32,
        tick_ms: 20,
        ticks_per_node: 10,
    };
    let mut seq = 0;
    let r = migrate_once(&cfg, &mut seq, Strategy::StopAndCopy).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.outcome.strategy, Strategy::StopAndCopy);
    assert_eq!(r.first_tick_b, r.last_tick_a + 1);
    assert_eq!(r.pids.0, r.pids.1);
    assert!(r.offsets.1 > r.offsets.0);
    assert!(
        r.summary.verified_ticks >= 1,
        "no checksum verified after restore"
    );
    assert_eq!(
        r.summary.signals,
        ["SIGUSR1", "SIGUSR2", "SIGHUP", "SIGTERM"],
        "each signal exactly once"
    );
    assert_eq!(r.summary.exit, Some(143));
    assert_eq!(r.exit_code, Some(143));
    assert!(r.outcome.image_bytes > 32 * 1024 * 1024);
}
