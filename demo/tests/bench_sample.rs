//! One real sample of each benchmark path at a small RSS (root, CRIU 4.x): the job runner, the
//! engine path and the raw CRIU path really migrate the workload and find it intact, so
//! `make bench` measures working migrations, not failures.

use std::path::PathBuf;

use lodger_demo::bench::{self, BenchConfig};
use lodger_demo::job::become_subreaper;
use lodger_engine::Strategy;

fn config(dir: &std::path::Path) -> BenchConfig {
    BenchConfig {
        sizes_mib: vec![16],
        runs: 1,
        strategies: vec![Strategy::StopAndCopy],
        dir: dir.to_path_buf(),
        criu: PathBuf::from(lodger_engine::DEFAULT_CRIU_PATH),
        workload: PathBuf::from(env!("CARGO_BIN_EXE_lodger-workload")),
        keep: false,
    }
}

/// The engine path migrates a 16 MiB workload with StopAndCopy and the job verifies its memory
/// afterwards; the sample's figures are consistent (image ≥ RSS, all pages back = resumed for an
/// eager restore) and its directory is removed.
#[test]
fn engine_sample_migrates_intact() {
    become_subreaper().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("lodger-bench-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cfg = config(dir.path());
    let s = bench::measure_engine(&cfg, 16, Strategy::StopAndCopy, 0).unwrap();
    assert_eq!(s.used, Strategy::StopAndCopy);
    assert!(s.image_bytes >= 16 * 1024 * 1024, "{s:?}");
    assert_eq!(s.complete_ms, s.resume_ms);
    assert!(s.dump_ms > 0);
    assert!(!dir.path().join("engine-16-StopAndCopy-0").exists());
}

/// The raw CRIU path (LazyRestore by hand: dump, lazy-pages daemon, restore --lazy-pages)
/// migrates the workload intact and waits for every page.
#[test]
fn raw_lazy_sample_migrates_intact() {
    become_subreaper().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("lodger-bench-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cfg = config(dir.path());
    let s = bench::measure_raw(&cfg, 16, Strategy::LazyRestore, 0).unwrap();
    assert!(s.image_bytes >= 16 * 1024 * 1024, "{s:?}");
    assert!(s.complete_ms >= s.resume_ms);
    assert!(!dir.path().join("raw-16-LazyRestore-0").exists());
}
