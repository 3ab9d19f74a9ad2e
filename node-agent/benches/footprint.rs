//! Footprint of the node agent: resident memory and CPU of the real agent loop (`--dry-run`, no
//! API server) while it watches this machine's terminals, load and cgroups, for a fixed time.
//!
//! Two scenarios, each `LODGER_FOOTPRINT_SECONDS` long (default 60):
//! - `quiet`: the machine as it is (this one has no /dev/input: terminals, logind, load only);
//! - `mouse`: plus a FIFO standing in for `/dev/input/event0` fed with mouse motion at 125 Hz
//!   (a common USB mouse report rate: the evdev path's worst steady case).
//!
//! RSS is read from `/proc/<pid>/status` (VmRSS every second, VmHWM at the end); CPU from the
//! scheduler's per-thread run time (`/proc/<pid>/task/*/schedstat`, nanoseconds) and, for
//! comparison, `/proc/<pid>/stat` (utime + stime, in clock ticks) at start and end. Goals: <= 15 MiB RSS,
//! <= 0.2 % of one core. Run with `cargo bench -p lodger-node-agent --bench footprint`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Nanoseconds on CPU of every thread of `pid` (scheduler statistics: exact, unlike the
/// 10 ms clock ticks of `/proc/<pid>/stat`).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

struct Measured {
    name: &'static str,
    seconds: f64,
    rss_avg_kib: f64,
    rss_max_kib: u64,
    hwm_kib: u64,
    cpu_percent: f64,
    cpu_percent_ticks: f64,
    events: u64,
}

fn spawn_agent(input_dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lodger-node-agent"))
        .args([
            "--dry-run",
            "--node-name=bench",
            "--metrics-addr=127.0.0.1:0",
        ])
        .arg(format!("--input-dir={}", input_dir.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts")
}

fn measure(
    name: &'static str,
    seconds: u64,
    input_dir: PathBuf,
    mouse: Option<PathBuf>,
) -> Measured {
    let mut child = spawn_agent(&input_dir);
    let pid = child.id();
    // Let it start up (runtime, first scans) before measuring the steady state.
    std::thread::sleep(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = mouse.map(|fifo| {
        let (stop, events) = (stop.clone(), events.clone());
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&fifo)
                .expect("the agent has the FIFO open");
            let record = |kind: u16, code: u16, value: i32| {
                let mut b = [0u8; 24];
                b[16..18].copy_from_slice(&kind.to_ne_bytes());
                b[18..20].copy_from_slice(&code.to_ne_bytes());
                b[20..24].copy_from_slice(&value.to_ne_bytes());
                b
            };
            let mut packet = Vec::new();
            packet.extend_from_slice(&record(2, 0, 3));
            packet.extend_from_slice(&record(2, 1, -2));
            packet.extend_from_slice(&record(0, 0, 0));
            let period = Duration::from_millis(8);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if w.write_all(&packet).is_ok() {
                    events.fetch_add(3, Ordering::Relaxed);
                }
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    });
    let start_ticks = cpu_ticks(pid).expect("agent alive");
    let start_ns = cpu_ns(pid).expect("agent alive");
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(kib) = status_kib(pid, "VmRSS:") {
            samples.push(kib);
        }
    }
    let end_ticks = cpu_ticks(pid).expect("agent alive");
    let end_ns = cpu_ns(pid).expect("agent alive");
    let elapsed = started.elapsed().as_secs_f64();
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    let cpu = (end_ticks - start_ticks) as f64 / ticks_per_second();
    Measured {
        name,
        seconds: elapsed,
        rss_avg_kib: samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64,
        rss_max_kib: samples.iter().copied().max().unwrap_or(0),
        hwm_kib: hwm,
        cpu_percent: 100.0 * (end_ns - start_ns) as f64 / 1e9 / elapsed,
        cpu_percent_ticks: 100.0 * cpu / elapsed,
        events: events.load(Ordering::Relaxed),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument other than ours means "not us".
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && a != "footprint")
    {
        return;
    }
    let seconds: u64 = std::env::var("LODGER_FOOTPRINT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let scratch = tempfile::tempdir().expect("temp dir");
    let mouse_dir = scratch.path().join("input");
    std::fs::create_dir_all(&mouse_dir).unwrap();
    let fifo = mouse_dir.join("event0");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let results = [
        measure("quiet", seconds, PathBuf::from("/dev/input"), None),
        measure("mouse", seconds, mouse_dir, Some(fifo)),
    ];
    println!(
        "| scenario | seconds | RSS avg (MiB) | RSS max (MiB) | VmHWM (MiB) | CPU % of a core (schedstat) | CPU % of a core (clock ticks) | input records |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {} |",
            r.name,
            r.seconds,
            r.rss_avg_kib / 1024.0,
            r.rss_max_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
            r.cpu_percent,
            r.cpu_percent_ticks,
            r.events
        );
    }
    let _ = std::io::stdout().flush();
}
