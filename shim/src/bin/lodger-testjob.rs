//! `lodger-testjob`: a small, deterministic job for the shim's migration tests.
//!
//! Every `--interval-ms` it prints one numbered line
//! `tick=N pid=P child=C relay=R off=O` to stdout, where `relay` is the answer of its child
//! process (a second process of the job, connected by two pipes) to the number N, and `off` is
//! the offset of `--file` after appending `line N`. It holds `--mem-mib` MiB of pseudo-random
//! memory. Signals: SIGUSR1 prints `usr1 count=K mem_ok=B`, re-checking the memory against the
//! checksum taken at start; SIGTERM prints `term` and exits with code 42; a real-time signal
//! (SIGRTMIN..=SIGRTMAX, 34..=64) prints `rt signo=S count=K`, K counting that number's
//! deliveries, with `mem_ok=B` as for SIGUSR1. At start it prints its
//! capability sets (`caps ...`) from /proc/self/status.
//!
//! Used through the shim only; it is a test helper, not part of the product.

use std::io::{BufRead, BufReader, Seek, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

fn fill(mem: &mut [u64]) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut sum = 0u64;
    for slot in mem.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *slot = x;
        sum = sum.rotate_left(5) ^ x;
    }
    sum
}

fn checksum(mem: &[u64]) -> u64 {
    mem.iter().fold(0u64, |sum, x| sum.rotate_left(5) ^ x)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn relay() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let n: u64 = line.trim().parse().unwrap_or(0);
        if writeln!(out, "{}", n * 2)
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--relay") {
        relay();
        return;
    }
    let interval = Duration::from_millis(
        arg(&args, "--interval-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let mem_mib: usize = arg(&args, "--mem-mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let file_path = arg(&args, "--file");

    // Signals are taken by a dedicated thread with sigwait: block them before any thread starts.
    let mut handled = SigSet::empty();
    handled.add(Signal::SIGUSR1);
    handled.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled), None).expect("block signals");
    // Real-time signals have no nix `Signal`: a raw set and a raw sigwaitinfo (the shim's sys).
    let real_time = lodger_shim::sys::signal_set(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .expect("real-time signal set");
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&real_time), None)
        .expect("block real-time signals");

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        .collect();
    println!(
        "caps {} uid={}",
        caps.join(" ").replace(":\t", "="),
        nix::unistd::getuid()
    );

    let mut mem = vec![0u64; mem_mib * 1024 * 1024 / 8];
    let expected = fill(&mut mem);
    let mem = Arc::new(Mutex::new(mem));

    // NB: never waited for: the relay lives as long as the job, which only ends by exit().
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--relay")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn relay child");
    let child_pid = child.id();
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("piped stdout"));

    let usr1 = Arc::new(AtomicU64::new(0));
    {
        let mem = Arc::clone(&mem);
        let usr1 = Arc::clone(&usr1);
        std::thread::spawn(move || {
            loop {
                match handled.wait() {
                    Ok(Signal::SIGUSR1) => {
                        let count = usr1.fetch_add(1, Ordering::SeqCst) + 1;
                        let ok = checksum(&mem.lock().expect("mem lock")) == expected;
                        println!("usr1 count={count} mem_ok={ok}");
                    }
                    Ok(Signal::SIGTERM) => {
                        println!("term");
                        std::process::exit(42);
                    }
                    _ => {}
                }
            }
        });
    }

    {
        let mem = Arc::clone(&mem);
        std::thread::spawn(move || {
            let mut counts = [0u64; 65];
            loop {
                let Ok(signo) = lodger_shim::sys::wait_signal(&real_time) else {
                    continue;
                };
                let Some(count) = usize::try_from(signo).ok().and_then(|i| counts.get_mut(i))
                else {
                    continue;
                };
                *count += 1;
                let ok = checksum(&mem.lock().expect("mem lock")) == expected;
                println!("rt signo={signo} count={count} mem_ok={ok}");
            }
        });
    }

    let mut file = file_path.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p)
            .expect("open --file")
    });
    let pid = std::process::id();
    let mut tick = 0u64;
    loop {
        tick += 1;
        writeln!(to_child, "{tick}").expect("write to relay child");
        to_child.flush().expect("flush relay pipe");
        let mut answer = String::new();
        from_child.read_line(&mut answer).expect("read relay child");
        let off = match file.as_mut() {
            Some(f) => {
                // One write(2) per line, so an exit between ticks never leaves half a line.
                f.write_all(format!("line {tick}\n").as_bytes())
                    .expect("append to --file");
                f.stream_position().expect("file offset")
            }
            None => 0,
        };
        println!(
            "tick={tick} pid={pid} child={child_pid} relay={} off={off}",
            answer.trim()
        );
        std::thread::sleep(interval);
    }
}
