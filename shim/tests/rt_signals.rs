//! Real-time signals (SIGRTMIN..=SIGRTMAX, Linux 34..=64) through a real shim: control socket →
//! shim → the job's init (PID 1 of the job's PID namespace, blocking every signal and taking
//! them with sigwaitinfo) → the job. Real processes, real namespaces, real signals; one test
//! also checkpoints and restores with real CRIU. Run as root.

mod common;

use common::*;
use lodger_shim::control::{ErrorKind, JobState, Op, Reply, SignalDisposition, Strategy};

const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;
const SIGRTMIN: i32 = lodger_shim::control::SIGRTMIN;
const SIGRTMAX: i32 = lodger_shim::control::SIGRTMAX;

fn disposition(reply: Reply) -> SignalDisposition {
    match reply {
        Reply::Signal(s) => s.disposition,
        other => panic!("signal failed: {other:?}"),
    }
}

/// The job's `rt ...` lines, in the order it printed them.
fn rt_lines(node: &Node) -> Vec<String> {
    node.stdout
        .snapshot()
        .into_iter()
        .filter(|l| l.starts_with("rt "))
        .collect()
}

/// If this fails, a real-time signal a user sends (`kubectl lodger signal JOB SIGRTMIN+3`) does
/// not reach the job, reaches it as another number, more than once per seq, or out of order
/// with standard signals; or the shim takes numbers it must refuse (0, glibc's 32 and 33, > 64),
/// or a refused request uses up its seq.
#[test]
fn real_time_signals_reach_the_job_once_each_in_order() {
    let lab = Lab::new();
    let node = Node::start(
        &lab,
        NodeSpec::new(&lab, "rt").testjob(&["--interval-ms", "20"]),
    );
    wait_tick(&node, 2);
    for bad in [0, -1, 32, 33, 65] {
        match node.signal(bad, 1) {
            Reply::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}: {e:?}"),
            other => panic!("signal {bad} must be refused, got {other:?}"),
        }
    }
    let sent = [
        (SIGRTMIN + 3, 1),
        (SIGUSR1, 2),
        (SIGRTMAX, 3),
        (SIGRTMIN, 4),
        (SIGRTMIN + 3, 5),
    ];
    let mut expected = Vec::new();
    for (i, (signo, seq)) in sent.into_iter().enumerate() {
        assert_eq!(
            disposition(node.signal(signo, seq)),
            SignalDisposition::Delivered,
            "seq {seq}"
        );
        // Each seq is handed over again: the shim must not send it twice.
        assert_eq!(
            disposition(node.signal(signo, seq)),
            SignalDisposition::Duplicate
        );
        let line = if signo == SIGUSR1 {
            "usr1 count=1 mem_ok=true".to_owned()
        } else {
            let count = sent[..=i].iter().filter(|(s, _)| *s == signo).count();
            format!("rt signo={signo} count={count} mem_ok=true")
        };
        node.stdout.wait_for(&line, |l| l == line);
        if signo != SIGUSR1 {
            expected.push(line);
        }
    }
    assert_eq!(
        disposition(node.signal(SIGTERM, 6)),
        SignalDisposition::Delivered
    );
    let mut node = node;
    assert_eq!(node.wait(), 42);
    assert_eq!(rt_lines(&node), expected, "each once, in order");
}

/// If this fails, a job killed by a real-time signal (their default action terminates) is not
/// reported as 128 + the signal's number, or the job's init hangs or dies instead of reporting
/// it (nix's waitpid cannot represent such a child).
#[test]
fn a_job_killed_by_a_real_time_signal_exits_128_plus_its_number() {
    let lab = Lab::new();
    let mut spec = NodeSpec::new(&lab, "rt-kill");
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        "echo ready; exec sleep 600".into(),
    ];
    let mut node = Node::start(&lab, spec);
    // Once the job prints, its init blocks every signal and has started it.
    node.stdout.wait_for("ready", |l| l == "ready");
    assert_eq!(
        disposition(node.signal(SIGRTMIN + 3, 1)),
        SignalDisposition::Delivered
    );
    assert_eq!(node.wait(), 128 + SIGRTMIN + 3);
}

/// If this fails, a real-time signal that arrives while the job is being checkpointed is lost
/// or delivered twice across the migration (it travels in the image and is delivered once
/// after the restore, like a standard one), or the restored init no longer forwards real-time
/// signals.
#[test]
fn a_real_time_signal_queued_during_a_checkpoint_arrives_once_after_restore() {
    let lab = Lab::new();
    let mut source = Node::start(
        &lab,
        NodeSpec::new(&lab, "a").testjob(&["--mem-mib", "8", "--interval-ms", "20"]),
    );
    wait_tick(&source, 3);
    let queued = std::thread::scope(|s| {
        let node = &source;
        let dump =
            s.spawn(move || node.checkpoint("lab/render/1", 1, Strategy::StopAndCopy, false));
        let mut queued = None;
        let deadline = std::time::Instant::now() + PATIENCE;
        while queued.is_none() && std::time::Instant::now() < deadline {
            if let Reply::Status(st) = node.call(Op::Status)
                && st.job == JobState::Checkpointing
            {
                queued = Some(disposition(node.signal(SIGRTMIN + 5, 1)));
            }
        }
        match dump.join().unwrap() {
            Reply::Checkpointed(_) => {}
            other => panic!("checkpoint failed: {other:?}"),
        }
        queued
    });
    assert_eq!(queued, Some(SignalDisposition::Queued));
    assert_eq!(source.wait(), 0, "a migrated-away shim exits 0");
    assert!(rt_lines(&source).is_empty(), "not delivered on the source");
    let manifest = lodger_engine::Manifest::read(&lab.staging().join("lab/render/1")).unwrap();
    assert_eq!(
        manifest.travel.queued_signals,
        [lodger_engine::QueuedSignal {
            seq: 1,
            signo: SIGRTMIN + 5
        }]
    );

    let mut target = Node::start(&lab, NodeSpec::new(&lab, "b").restore("lab/render/1"));
    let line = format!("rt signo={} count=1 mem_ok=true", SIGRTMIN + 5);
    target.stdout.wait_for(&line, |l| l == line);
    assert_eq!(
        disposition(target.signal(SIGRTMIN + 5, 1)),
        SignalDisposition::Duplicate
    );
    // The restored init still forwards real-time signals.
    assert_eq!(
        disposition(target.signal(SIGRTMAX - 1, 2)),
        SignalDisposition::Delivered
    );
    let line2 = format!("rt signo={} count=1 mem_ok=true", SIGRTMAX - 1);
    target.stdout.wait_for(&line2, |l| l == line2);
    assert_eq!(
        disposition(target.signal(SIGTERM, 3)),
        SignalDisposition::Delivered
    );
    assert_eq!(target.wait(), 42);
    assert_eq!(rt_lines(&target), [line, line2]);
}
