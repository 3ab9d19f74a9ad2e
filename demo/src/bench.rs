//! The engine benchmark (`make bench`, never part of `make test`): for each RSS and strategy it
//! migrates a real `lodger-workload` with the lodger-engine library (checkpoint → verify →
//! restore on the same machine, through a staging directory standing in for the volume), then
//! does the same with the raw `criu dump` / `criu restore` CLI and writes the same byte count
//! with `dd`, and prints medians as Markdown tables with the ratios the targets are stated in.
//!
//! Every sample also checks that the job survived: after the restore the workload is asked to
//! verify its memory checksum (SIGUSR2) and its whole output must pass the continuity checker.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lodger_engine::{
    CheckpointSpec, Engine, EngineError, JobId, RestoreSpec, Strategy, TravelState,
};

use crate::continuity;
use crate::job::{JobError, Workload, WorkloadSpec, complete_lines};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The workload failed.
    #[error("workload: {0}")]
    Job(#[from] JobError),
    /// A command or file operation failed.
    #[error("failed to {action}: {detail}")]
    Step {
        /// What was being done.
        action: String,
        /// What went wrong.
        detail: String,
    },
}

fn step(action: &str, detail: impl std::fmt::Display) -> BenchError {
    BenchError::Step {
        action: action.into(),
        detail: detail.to_string(),
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Workload RSS sizes in MiB.
    pub sizes_mib: Vec<u64>,
    /// Runs per (size, strategy).
    pub runs: u32,
    /// Strategies to request.
    pub strategies: Vec<Strategy>,
    /// Staging directory (the "volume"); everything below it is removed after each sample.
    pub dir: PathBuf,
    /// CRIU binary.
    pub criu: PathBuf,
    /// `lodger-workload` binary.
    pub workload: PathBuf,
    /// Keep each sample's directory (images, CRIU logs) instead of removing it.
    pub keep: bool,
}

/// One engine migration.
#[derive(Debug, Clone)]
pub struct EngineSample {
    /// Strategy requested.
    pub requested: Strategy,
    /// Strategy used.
    pub used: Strategy,
    /// Why it fell back, if it did.
    pub fallback: Option<String>,
    /// Freeze time CRIU reports.
    pub freeze_ms: u64,
    /// Wall time of `Engine::checkpoint` (dump + stats + chunked BLAKE3 and fsync of every image
    /// file, then the manifest).
    pub dump_ms: u64,
    /// Wall time of `Engine::verify_metadata` + `Engine::restore` (which checks the page images
    /// while CRIU restores, eager strategies): from the dump's end until the job runs.
    pub resume_ms: u64,
    /// Downtime the engine reports (job stopped on the source → running on the target).
    pub downtime_ms: u64,
    /// From the dump's end until every page is back and verified (lazy strategies: the
    /// background page check included) or the restore (eager).
    pub complete_ms: u64,
    /// Bytes of image files.
    pub image_bytes: u64,
    /// Bytes moved to the target: the image, or for PostCopy (whose image holds no memory) the
    /// image plus the workload's memory, which the page server sends.
    pub moved_bytes: u64,
}

/// One raw CRIU migration: `criu dump` (with `--lazy-pages` for PostCopy), then `criu restore`
/// (with a `criu lazy-pages` daemon for LazyRestore and PostCopy).
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    /// The strategy reproduced by hand.
    pub strategy: Strategy,
    /// Freeze time CRIU reports (PostCopy: until the page server was ready).
    pub freeze_ms: u64,
    /// Wall time of `criu dump` (PostCopy: until the page server was ready).
    pub dump_ms: u64,
    /// From the dump's end until `criu restore` returned (lazy-pages daemon start included).
    pub resume_ms: u64,
    /// From the dump's end until every page was back.
    pub complete_ms: u64,
    /// After the dump (not in `dump_ms`): fsync of every image file and the image directory,
    /// the durability raw CRIU skips and the engine pays before its manifest.
    pub sync_ms: u64,
    /// Bytes of image files.
    pub image_bytes: u64,
}

/// One `dd` of the workload's byte count into the staging directory.
#[derive(Debug, Clone, Copy)]
pub struct DdSample {
    /// Bytes written.
    pub bytes: u64,
    /// Wall time with `conv=fsync` (data on disk when dd exits).
    pub fsync_ms: u64,
    /// Wall time without it (data in the page cache, as CRIU leaves its images).
    pub cache_ms: u64,
}

/// Every sample for one RSS.
#[derive(Debug, Clone, Default)]
pub struct SizeResults {
    /// RSS in MiB.
    pub mib: u64,
    /// Engine samples, all strategies.
    pub engine: Vec<EngineSample>,
    /// Raw CRIU samples.
    pub raw: Vec<RawSample>,
    /// dd samples.
    pub dd: Vec<DdSample>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn workload_spec(cfg: &BenchConfig, mib: u64, dir: &Path) -> WorkloadSpec {
    WorkloadSpec {
        bin: cfg.workload.clone(),
        mem_mib: mib,
        tick_ms: 100,
        verify_every: 0,
        child: true,
        dir: dir.join("job"),
    }
}

fn start_timeout(mib: u64) -> Duration {
    Duration::from_secs(30 + mib / 64)
}

/// After a restore: the job must verify its memory, stop on SIGTERM and have printed a
/// continuous output.
fn check_survived(mut wl: Workload, pid: i32, mib: u64) -> Result<(), BenchError> {
    wl.adopt(pid);
    let last = wl.last_tick()?;
    let sum = wl.verify(last, start_timeout(mib))?;
    let out = wl.out_path().to_path_buf();
    let code = wl.stop(Duration::from_secs(10))?;
    let text = std::fs::read_to_string(&out).map_err(|e| step("read the job's output", e))?;
    let complete: String = complete_lines(&text).flat_map(|l| [l, "\n"]).collect();
    let summary = continuity::check_text(&complete)
        .map_err(|e| step("keep the job's output continuous", e))?;
    if summary.sum.as_deref() != Some(sum.as_str()) || summary.exit != Some(143) || code != 143 {
        return Err(step(
            "find the job intact",
            format!("checksum {sum} vs {:?}, exit {code}", summary.sum),
        ));
    }
    Ok(())
}

/// Migrates a fresh workload once with the engine.
pub fn measure_engine(
    cfg: &BenchConfig,
    mib: u64,
    strategy: Strategy,
    run: u32,
) -> Result<EngineSample, BenchError> {
    let dir = cfg.dir.join(format!("engine-{mib}-{strategy}-{run}"));
    let result = measure_engine_in(cfg, mib, strategy, &dir);
    if !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure_engine_in(
    cfg: &BenchConfig,
    mib: u64,
    strategy: Strategy,
    dir: &Path,
) -> Result<EngineSample, BenchError> {
    let engine = Engine::new(&cfg.criu, &dir.join("volume"))?;
    let wl = Workload::start(&workload_spec(cfg, mib, dir), start_timeout(mib))?;
    let job = JobId {
        namespace: "bench".into(),
        name: format!("w{mib}"),
        uid: "bench".into(),
    };
    let mut spec = CheckpointSpec::new(wl.pid, job.clone(), 1, strategy, dir.join("work-dump"));
    // NB: CRIU refuses `--port 0`, so the page server gets a port that was free a moment ago.
    spec.page_server_listen = free_loopback_port()?;
    nix::unistd::sync();
    let t0 = Instant::now();
    let ck = engine.checkpoint(&spec, &mut TravelState::default)?;
    let dump_ms = ms(t0.elapsed());
    let t1 = Instant::now();
    // As the shim does: metadata first, the page images while (or, lazy, after) CRIU restores.
    let verified = engine.verify_metadata(&ck.path, &job)?;
    let restored = engine.restore(&verified, &RestoreSpec::new(dir.join("work-restore")))?;
    let resume_ms = ms(t1.elapsed());
    if let Some(daemon) = restored.lazy_pages {
        daemon.wait().map_err(EngineError::from)?;
    }
    if let Some(server) = ck.page_server {
        server.wait().map_err(EngineError::from)?;
    }
    if let Some(check) = restored.page_check {
        check.wait().map_err(EngineError::from)?;
    }
    let complete_ms = ms(t1.elapsed());
    check_survived(wl, restored.pid, mib)?;
    Ok(EngineSample {
        requested: strategy,
        used: ck.strategy,
        fallback: ck.fallback_reason,
        freeze_ms: ck.freeze_ms,
        dump_ms,
        resume_ms,
        downtime_ms: restored.downtime_ms.unwrap_or(0),
        complete_ms,
        image_bytes: ck.manifest.image_bytes,
        moved_bytes: match ck.strategy {
            Strategy::PostCopy => ck.manifest.image_bytes + mib * 1024 * 1024,
            _ => ck.manifest.image_bytes,
        },
    })
}

/// A loopback address whose port was free when asked (the OS picked it).
pub fn free_loopback_port() -> Result<std::net::SocketAddr, BenchError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| step("find a free loopback port", e))
}

fn run_criu(cfg: &BenchConfig, args: &[String], what: &str) -> Result<u64, BenchError> {
    let t = Instant::now();
    let status = Command::new(&cfg.criu)
        .args(args)
        .status()
        .map_err(|e| step(what, e))?;
    let elapsed = ms(t.elapsed());
    if !status.success() {
        return Err(step(what, format!("criu {args:?} exited with {status}")));
    }
    Ok(elapsed)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Migrates a fresh workload once with the raw CRIU CLI (what a person would type), the way
/// `strategy` does it.
pub fn measure_raw(
    cfg: &BenchConfig,
    mib: u64,
    strategy: Strategy,
    run: u32,
) -> Result<RawSample, BenchError> {
    let dir = cfg.dir.join(format!("raw-{mib}-{strategy}-{run}"));
    let result = measure_raw_in(cfg, mib, strategy, &dir);
    if !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Spawns CRIU with `--status-fd` and waits until it reports readiness (lazy-pages daemon,
/// lazy dump's page server).
fn spawn_criu_ready(
    cfg: &BenchConfig,
    args: &[String],
    what: &str,
) -> Result<std::process::Child, BenchError> {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::{AsFd, AsRawFd};
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| step(what, e))?;
    fcntl(&tx, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| step(what, e))?;
    let mut child = Command::new(&cfg.criu)
        .args(args)
        .arg("--status-fd")
        .arg(tx.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| step(what, e))?;
    drop(tx);
    let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(60_000u16))
        .ok()
        .filter(|n| *n > 0)
        .and_then(|_| {
            let mut byte = [0u8; 1];
            nix::unistd::read(&rx, &mut byte).ok()
        })
        == Some(1);
    if !ready {
        let _ = child.kill();
        let status = child.wait();
        return Err(step(what, format!("CRIU never became ready ({status:?})")));
    }
    Ok(child)
}

fn wait_criu(mut child: std::process::Child, what: &str) -> Result<(), BenchError> {
    let status = child.wait().map_err(|e| step(what, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(step(what, format!("criu exited with {status}")))
    }
}

fn measure_raw_in(
    cfg: &BenchConfig,
    mib: u64,
    strategy: Strategy,
    dir: &Path,
) -> Result<RawSample, BenchError> {
    let mut wl = Workload::start(&workload_spec(cfg, mib, dir), start_timeout(mib))?;
    let img = dir.join("img");
    let dump_work = dir.join("work-dump");
    let restore_work = dir.join("work-restore");
    for d in [&img, &dump_work, &restore_work] {
        std::fs::create_dir_all(d).map_err(|e| step("create the raw dirs", e))?;
    }
    let s = |p: &Path| p.display().to_string();
    let pidfile = s(&dir.join("restore.pid"));
    let port = free_loopback_port()?.port().to_string();
    let mut dump: Vec<String> = ["dump", "-t", &wl.pid.to_string(), "-D", &s(&img)]
        .into_iter()
        .map(String::from)
        .collect();
    dump.extend(
        [
            "-W",
            &s(&dump_work),
            "-o",
            "dump.log",
            "--manage-cgroups=ignore",
        ]
        .map(String::from),
    );
    let mut restore: Vec<String> = ["restore", "-D", &s(&img), "-W", &s(&restore_work)]
        .into_iter()
        .map(String::from)
        .collect();
    restore.extend(
        [
            "-o",
            "restore.log",
            "--manage-cgroups=ignore",
            "--restore-detached",
            "--pidfile",
            &pidfile,
        ]
        .map(String::from),
    );
    let mut lazy: Vec<String> = ["lazy-pages", "-D", &s(&img), "-W", &s(&restore_work)]
        .into_iter()
        .map(String::from)
        .collect();
    lazy.extend(["-o", "lazy-pages.log"].map(String::from));
    nix::unistd::sync();
    let t0 = Instant::now();
    let mut page_server = None;
    match strategy {
        Strategy::PostCopy => {
            let _ = lodger_engine::checkpoint::raise_pipe_max_size();
            dump.extend(
                ["--lazy-pages", "--address", "127.0.0.1", "--port", &port].map(String::from),
            );
            page_server = Some(spawn_criu_ready(cfg, &dump, "criu dump --lazy-pages")?);
        }
        _ => {
            run_criu(cfg, &dump, "criu dump")?;
        }
    }
    let dump_ms = ms(t0.elapsed());
    let freeze_ms = match strategy {
        Strategy::PostCopy => dump_ms,
        _ => lodger_engine::stats::read_dump_stats(&dump_work)
            .map_err(EngineError::from)?
            .freeze_ms(),
    };
    let image_bytes = dir_bytes(&img);
    let ts = Instant::now();
    fsync_tree(&img)?;
    let sync_ms = ms(ts.elapsed());
    let t1 = Instant::now();
    let mut daemon = None;
    match strategy {
        Strategy::LazyRestore => {
            daemon = Some(spawn_criu_ready(cfg, &lazy, "criu lazy-pages")?);
            restore.push("--lazy-pages".into());
        }
        Strategy::PostCopy => {
            lazy.extend(
                ["--page-server", "--address", "127.0.0.1", "--port", &port].map(String::from),
            );
            daemon = Some(spawn_criu_ready(
                cfg,
                &lazy,
                "criu lazy-pages --page-server",
            )?);
            restore.push("--lazy-pages".into());
        }
        _ => {}
    }
    run_criu(cfg, &restore, "criu restore")?;
    let resume_ms = ms(t1.elapsed());
    if let Some(d) = daemon {
        wait_criu(d, "criu lazy-pages")?;
    }
    if let Some(p) = page_server {
        wait_criu(p, "criu dump --lazy-pages (page server)")?;
    }
    let complete_ms = ms(t1.elapsed());
    wl.reap_launcher();
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| step("read criu's pid file", &pidfile))?;
    check_survived(wl, restored, mib)?;
    Ok(RawSample {
        strategy,
        freeze_ms,
        dump_ms,
        resume_ms,
        complete_ms,
        sync_ms,
        image_bytes,
    })
}

/// fsyncs every regular file below `dir`, then `dir` itself.
fn fsync_tree(dir: &Path) -> Result<(), BenchError> {
    let what = "fsync the raw images";
    for entry in std::fs::read_dir(dir).map_err(|e| step(what, e))? {
        let path = entry.map_err(|e| step(what, e))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| step(what, e))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| step(what, e))
}

/// Writes `mib` MiB of zeros into the staging directory with `dd`, with and without fsync.
pub fn measure_dd(cfg: &BenchConfig, mib: u64) -> Result<DdSample, BenchError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| step("create the staging dir", e))?;
    let file = cfg.dir.join("dd.bin");
    let of = format!("of={}", file.display());
    let count = format!("count={mib}");
    let time_dd = |extra: &[&str]| -> Result<u64, BenchError> {
        nix::unistd::sync();
        let t = Instant::now();
        let status = Command::new("dd")
            .args(["if=/dev/zero", &of, "bs=1M", &count, "status=none"])
            .args(extra)
            .status()
            .map_err(|e| step("run dd", e))?;
        let elapsed = ms(t.elapsed());
        let _ = std::fs::remove_file(&file);
        if !status.success() {
            return Err(step("run dd", status));
        }
        Ok(elapsed)
    };
    let fsync_ms = time_dd(&["conv=fsync"])?;
    let cache_ms = time_dd(&[])?;
    Ok(DdSample {
        bytes: mib * 1024 * 1024,
        fsync_ms,
        cache_ms,
    })
}

/// Median of `values` (the lower middle for an even count); 0 when empty.
pub fn median(values: impl IntoIterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.into_iter().collect();
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

/// Throughput in MB/s (10^6 bytes per second); 0 when the time is 0.
pub fn mb_per_s(bytes: u64, ms: u64) -> f64 {
    if ms == 0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / (ms as f64 / 1e3)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// The engine table: one row per (RSS, requested strategy), medians over runs.
pub fn engine_table(results: &[SizeResults]) -> String {
    let mut t = String::from(
        "| RSS | strategy | runs | freeze ms | downtime ms | resumed after dump ms | all pages back ms | image MiB | dump MB/s | restore MB/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for size in results {
        let mut requested: Vec<Strategy> = Vec::new();
        for s in &size.engine {
            if !requested.contains(&s.requested) {
                requested.push(s.requested);
            }
        }
        for r in requested {
            let samples: Vec<&EngineSample> =
                size.engine.iter().filter(|s| s.requested == r).collect();
            let used = samples[0].used;
            let name = if used == r {
                r.to_string()
            } else {
                format!("{r} → {used}")
            };
            let bytes = median(samples.iter().map(|s| s.image_bytes));
            let moved = median(samples.iter().map(|s| s.moved_bytes));
            let dump = median(samples.iter().map(|s| s.dump_ms));
            let complete = median(samples.iter().map(|s| s.complete_ms));
            let _ = writeln!(
                t,
                "| {} MiB | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                size.mib,
                name,
                samples.len(),
                median(samples.iter().map(|s| s.freeze_ms)),
                median(samples.iter().map(|s| s.downtime_ms)),
                median(samples.iter().map(|s| s.resume_ms)),
                complete,
                bytes as f64 / 1048576.0,
                mb_per_s(bytes, dump),
                mb_per_s(moved, complete),
            );
        }
    }
    t
}

/// Engine vs raw CRIU, one row per (RSS, strategy) measured both ways, medians over runs.
pub fn raw_table(results: &[SizeResults]) -> String {
    let mut t = String::from(
        "| RSS | strategy | engine freeze ms | raw freeze ms | engine dump ms | raw dump ms | engine resumed ms | raw resumed ms | engine all back ms | raw all back ms | engine/raw (dump → all back) | raw fsync ms | engine/(raw + fsync) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for size in results {
        let mut strategies: Vec<Strategy> = Vec::new();
        for r in &size.raw {
            if !strategies.contains(&r.strategy) {
                strategies.push(r.strategy);
            }
        }
        for strategy in strategies {
            let eng: Vec<&EngineSample> = size
                .engine
                .iter()
                .filter(|s| s.requested == strategy && s.used == strategy)
                .collect();
            let raw: Vec<&RawSample> = size.raw.iter().filter(|s| s.strategy == strategy).collect();
            let e_freeze = median(eng.iter().map(|s| s.freeze_ms));
            let r_freeze = median(raw.iter().map(|s| s.freeze_ms));
            let e_dump = median(eng.iter().map(|s| s.dump_ms));
            let e_resume = median(eng.iter().map(|s| s.resume_ms));
            let e_all = median(eng.iter().map(|s| s.complete_ms));
            let r_dump = median(raw.iter().map(|s| s.dump_ms));
            let r_resume = median(raw.iter().map(|s| s.resume_ms));
            let r_all = median(raw.iter().map(|s| s.complete_ms));
            let r_sync = median(raw.iter().map(|s| s.sync_ms));
            let vs = |extra: u64| {
                if eng.is_empty() {
                    "-".to_string()
                } else {
                    ratio((e_dump + e_all) as f64, (r_dump + extra + r_all) as f64)
                }
            };
            let _ = writeln!(
                t,
                "| {} MiB | {strategy} | {e_freeze} | {r_freeze} | {e_dump} | {r_dump} | {e_resume} | {r_resume} | {e_all} | {r_all} | {} | {r_sync} | {} |",
                size.mib,
                vs(0),
                vs(r_sync),
            );
        }
    }
    t
}

/// Dump throughput (StopAndCopy) of the engine and raw CRIU vs `dd`, medians over runs.
pub fn dd_table(results: &[SizeResults]) -> String {
    let mut t = String::from(
        "| RSS | engine dump MB/s | raw CRIU dump MB/s | dd conv=fsync MB/s | dd (page cache) MB/s | engine/dd fsync | engine/dd cache | raw/dd fsync |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for size in results {
        if size.dd.is_empty() {
            continue;
        }
        let sac = |s: &&EngineSample| s.requested == Strategy::StopAndCopy;
        let e_bytes = median(size.engine.iter().filter(sac).map(|s| s.image_bytes));
        let e_dump = median(size.engine.iter().filter(sac).map(|s| s.dump_ms));
        let raw_sac = |s: &&RawSample| s.strategy == Strategy::StopAndCopy;
        let r_bytes = median(size.raw.iter().filter(raw_sac).map(|s| s.image_bytes));
        let r_dump = median(size.raw.iter().filter(raw_sac).map(|s| s.dump_ms));
        let dd_bytes = size.dd[0].bytes;
        let dd_fsync = mb_per_s(dd_bytes, median(size.dd.iter().map(|d| d.fsync_ms)));
        let dd_cache = mb_per_s(dd_bytes, median(size.dd.iter().map(|d| d.cache_ms)));
        let e_tput = mb_per_s(e_bytes, e_dump);
        let r_tput = mb_per_s(r_bytes, r_dump);
        let _ = writeln!(
            t,
            "| {} MiB | {e_tput:.0} | {r_tput:.0} | {dd_fsync:.0} | {dd_cache:.0} | {} | {} | {} |",
            size.mib,
            ratio(e_tput, dd_fsync),
            ratio(e_tput, dd_cache),
            ratio(r_tput, dd_fsync),
        );
    }
    t
}

/// Fallback reasons seen, one line each.
pub fn fallbacks(results: &[SizeResults]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in results.iter().flat_map(|r| &r.engine) {
        if let Some(why) = &s.fallback {
            let line = format!("{}: {why}", s.requested);
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// A description of the machine and the staging directory, for the record.
pub fn machine_description(cfg: &BenchConfig, criu_version: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let fs = Command::new("findmnt")
        .args(["-no", "FSTYPE,SOURCE", "-T"])
        .arg(&cfg.dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "- CPU: {cpu}, {cores} cores; memory {:.1} GiB\n- kernel {}; CRIU {criu_version}\n- staging dir {} on {fs}\n",
        mem_kib as f64 / 1048576.0,
        lodger_engine::kernel_release(),
        cfg.dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requested: Strategy, used: Strategy, dump_ms: u64) -> EngineSample {
        EngineSample {
            requested,
            used,
            fallback: (requested != used).then(|| "no soft-dirty".to_string()),
            freeze_ms: 10,
            dump_ms,
            resume_ms: 100,
            downtime_ms: 120,
            complete_ms: 100,
            image_bytes: 64 * 1024 * 1024,
            moved_bytes: 64 * 1024 * 1024,
        }
    }

    /// Medians are what the tables print; a wrong median misreports every figure.
    #[test]
    fn median_picks_the_middle() {
        assert_eq!(median([]), 0);
        assert_eq!(median([5]), 5);
        assert_eq!(median([9, 1, 5]), 5);
        assert_eq!(median([4, 1, 3, 2]), 2);
        assert!((mb_per_s(1_000_000, 1000) - 1.0).abs() < 1e-9);
        assert_eq!(mb_per_s(1, 0), 0.0);
    }

    /// The tables carry one row per size and requested strategy, name fallbacks with an arrow,
    /// and compute the engine/raw and engine/dd ratios from medians.
    #[test]
    fn tables_show_fallbacks_and_ratios() {
        let results = vec![SizeResults {
            mib: 64,
            engine: vec![
                sample(Strategy::StopAndCopy, Strategy::StopAndCopy, 200),
                sample(Strategy::StopAndCopy, Strategy::StopAndCopy, 220),
                sample(Strategy::PreCopy, Strategy::StopAndCopy, 210),
            ],
            raw: vec![RawSample {
                strategy: Strategy::StopAndCopy,
                freeze_ms: 10,
                dump_ms: 100,
                resume_ms: 100,
                complete_ms: 100,
                sync_ms: 50,
                image_bytes: 64 * 1024 * 1024,
            }],
            dd: vec![DdSample {
                bytes: 64 * 1024 * 1024,
                fsync_ms: 400,
                cache_ms: 100,
            }],
        }];
        let engine = engine_table(&results);
        assert_eq!(engine.lines().count(), 4, "{engine}");
        assert!(engine.contains("| 64 MiB | StopAndCopy | 2 |"), "{engine}");
        assert!(engine.contains("PreCopy → StopAndCopy | 1 |"), "{engine}");
        let raw = raw_table(&results);
        // engine (median dump 200 + all back 100) / raw (100 + 100) = 1.50x.
        assert!(
            raw.contains("| 64 MiB | StopAndCopy | 10 | 10 | 200 | 100 |"),
            "{raw}"
        );
        // With raw CRIU's images fsynced too (50 ms): 300 / (100 + 50 + 100) = 1.20x.
        assert!(raw.contains("| 1.50x | 50 | 1.20x |"), "{raw}");
        let dd = dd_table(&results);
        // engine dumps 64 MiB in 200 ms, dd in 400 ms (fsync) and 100 ms (cache); raw in 100 ms.
        assert!(dd.contains("| 2.00x | 0.50x | 4.00x |"), "{dd}");
        assert_eq!(fallbacks(&results), ["PreCopy: no soft-dirty"]);
    }
}
