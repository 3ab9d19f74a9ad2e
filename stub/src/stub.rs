//! The stub process: forwards caught signals as JobSignals while writing the job's stitched
//! output to stdout, and ends with the job's exit code.
//!
//! Inputs: caught signals (from [`crate::signals::spawn_reader`] in the binary, sent by hand
//! in tests) and the API server (the job, its pods and their logs). Outputs: JobSignal objects,
//! the job's output on stdout, `[lodger-stub]` notes on stderr, the exit code.
//!
//! Cancellation: SIGTERM to the stub (what the kubelet sends when `<job>-home` is deleted) is
//! forwarded like any other signal, so the job gets SIGTERM wherever it runs; the stub keeps
//! following until the job ends or its grace period runs out. Deleting the MigratableJob ends the
//! stub with 143 (128 + SIGTERM) as soon as it sees the job gone; the operator (owner references)
//! removes the job's pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use lodger_api::{JobPhase, MANAGER_STUB};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};

use crate::forward::{RetryPolicy, SignalSender};
use crate::output::{Ended, FollowOptions, OutputError, Stitcher};
use crate::signals::{Caught, signal_name};

/// What the stub represents and how.
#[derive(Clone, Debug)]
pub struct StubConfig {
    /// Namespace of the job.
    pub namespace: String,
    /// Name of the MigratableJob.
    pub job: String,
    /// Unique id of this stub process (pod name, PID, start time), prefix of each signal's id.
    pub sender_id: String,
    /// How often to look again while waiting for pods, containers and the job's end.
    pub poll: Duration,
}

/// A note for people about a signal forwarded while the job is not running anywhere.
pub fn queued_note(phase: Option<JobPhase>) -> Option<String> {
    match phase {
        Some(p @ (JobPhase::Checkpointing | JobPhase::Restoring | JobPhase::Parked)) => Some(
            format!("queued: the job is {p}; it is delivered once the job runs again"),
        ),
        Some(p @ (JobPhase::Pending | JobPhase::Placing)) => Some(format!(
            "queued: the job is {p}; it is delivered once it starts"
        )),
        None => Some("queued: the job has not started; it is delivered once it starts".into()),
        Some(JobPhase::Running) => None,
        Some(p @ (JobPhase::Succeeded | JobPhase::Failed)) => Some(format!(
            "the job has ended ({p}); the signal will not be delivered"
        )),
    }
}

async fn forward_signals(
    mut sender: SignalSender,
    mut signals: mpsc::UnboundedReceiver<Caught>,
    phase_rx: watch::Receiver<Option<JobPhase>>,
) {
    while let Some(caught) = signals.recv().await {
        let name = signal_name(caught.signo);
        let phase = *phase_rx.borrow();
        match sender.send(caught.signo).await {
            Ok(sent) => {
                let note = queued_note(phase)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                eprintln!(
                    "[lodger-stub] {name} from pid {} forwarded as JobSignal {} (seq {}){note}",
                    caught.sender_pid, sent.name, sent.seq
                );
            }
            Err(err) => eprintln!("[lodger-stub] failed to forward {name}: {err}"),
        }
    }
}

/// Runs the stub until the job ends (or is deleted); returns how it ended.
pub async fn run<W: AsyncWrite + Unpin>(
    client: Client,
    config: &StubConfig,
    signals: mpsc::UnboundedReceiver<Caught>,
    out: &mut W,
) -> Result<Ended, OutputError> {
    let (phase_tx, phase_rx) = watch::channel(None);
    let sender = SignalSender::new(
        client.clone(),
        &config.namespace,
        &config.job,
        &config.sender_id,
        MANAGER_STUB,
        RetryPolicy::stub(),
    );
    let forwarder = tokio::spawn(forward_signals(sender, signals, phase_rx));
    let stitcher = Stitcher::new(
        Api::namespaced(client.clone(), &config.namespace),
        Api::<Pod>::namespaced(client, &config.namespace),
        &config.job,
        FollowOptions {
            follow: true,
            poll: config.poll,
        },
    )
    .with_phase_updates(phase_tx);
    let ended = stitcher.run(out).await;
    forwarder.abort();
    ended
}
