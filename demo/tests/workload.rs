//! The real `lodger-workload` binary: its output parses, passes the continuity checker, and
//! reflects signals, the tick file, the echo child and the exit code it was asked for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use lodger_demo::continuity::Continuity;
use lodger_demo::record::Record;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_lodger-workload");

/// Signals are recorded (stdout and signals file) in order, SIGUSR2 forces a verification,
/// SIGTERM exits with --sigterm-code, the tick file's size equals the reported offset, and the
/// echo child answers every tick. If this fails, the demo and the engine's migration tests
/// cannot trust what the workload says.
#[test]
fn workload_records_signals_file_and_child() {
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks");
    let sigs = dir.path().join("signals");
    let mut child = Command::new(BIN)
        .args([
            "--mem-mib",
            "8",
            "--tick-ms",
            "20",
            "--verify-every",
            "0",
            "--child",
        ])
        .args(["--sigterm-code", "42", "--file"])
        .arg(&ticks)
        .arg("--signals-file")
        .arg(&sigs)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut checker = Continuity::new();
    let mut sent_usr = false;
    let mut sent_term = false;
    let mut verified_after_usr2 = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let record: Record = line.parse().unwrap();
        checker
            .observe(&record)
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        match &record {
            Record::Tick(t) if t.tick == 3 && !sent_usr => {
                kill(pid, Signal::SIGUSR1).unwrap();
                kill(pid, Signal::SIGUSR2).unwrap();
                sent_usr = true;
            }
            Record::Tick(t) if sent_usr && t.sum.is_some() && !sent_term => {
                verified_after_usr2 = true;
                kill(pid, Signal::SIGTERM).unwrap();
                sent_term = true;
            }
            Record::Exit(_) => break,
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    assert!(
        verified_after_usr2,
        "SIGUSR2 did not trigger a verification"
    );
    let summary = checker.summary();
    assert_eq!(summary.signals, ["SIGUSR1", "SIGUSR2", "SIGTERM"]);
    assert_eq!(summary.exit, Some(42));
    assert!(summary.last_tick.unwrap() >= 4);
    let size = std::fs::metadata(&ticks).unwrap().len();
    assert_eq!(Some(size), summary.file_off);
    let recorded = std::fs::read_to_string(&sigs).unwrap();
    let names: Vec<_> = recorded
        .lines()
        .map(|l| match l.parse::<Record>().unwrap() {
            Record::Signal(s) => s.name,
            other => panic!("not a signal record: {other:?}"),
        })
        .collect();
    assert_eq!(names, ["SIGUSR1", "SIGUSR2", "SIGTERM"]);
}

/// --exit-at-tick exits on exactly that tick with --exit-code, after a verified checksum equal
/// to the start checksum (the job's own exit status is what Lodger reports home).
#[test]
fn workload_exits_on_tick_with_code() {
    let out = Command::new(BIN)
        .args(["--mem-mib", "4", "--tick-ms", "1", "--verify-every", "5"])
        .args(["--exit-at-tick", "10", "--exit-code", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let text = String::from_utf8(out.stdout).unwrap();
    let summary = lodger_demo::continuity::check_text(&text).unwrap();
    assert_eq!(summary.first_tick, Some(1));
    assert_eq!(summary.last_tick, Some(10));
    assert_eq!(summary.verified_ticks, 2);
    assert_eq!(summary.exit, Some(7));
    assert!(text.contains("exit=7 reason=tick tick=10 "));
}
