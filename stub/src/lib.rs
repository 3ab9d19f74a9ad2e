//! Lodger's home stub: represents a job on its home node (signals, output, exit status).
//!
//! The stub is the process of pod `<job>-home`. It catches the signals users send it and turns
//! each into a `JobSignal` ([`forward`]), writes the job's output stitched across its pods'
//! generations to its own stdout ([`output`]), and exits with the job's exit code ([`stub`]).
//! `kubectl lodger` reuses [`forward`] (its `signal` command) and [`output`] (its `logs`).

pub mod forward;
pub mod output;
pub mod signals;
pub mod stub;

use std::time::Duration;

use clap::Parser;

/// Command line of `lodger-stub`.
#[derive(Debug, Parser)]
#[command(
    name = "lodger-stub",
    version,
    about = "Home stub of a Lodger MigratableJob: forwards signals, streams output, exits with the job's code"
)]
pub struct Args {
    /// Namespace of the MigratableJob.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the MigratableJob.
    #[arg(long)]
    pub job: String,
    /// Milliseconds between looks while waiting for the job's pods, containers or end.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,
}

impl Args {
    /// The poll interval as a duration.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// A sender id unique to this process: pod name (HOSTNAME), PID and start time.
pub fn process_sender_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "stub".to_string());
    let nanos = jiff::Timestamp::now().as_nanosecond();
    format!("{host}-{}-{nanos}", std::process::id())
}

/// Runs the stub process with signals already blocked into `fd`; returns the exit code.
pub async fn run_process(args: Args, fd: nix::sys::signalfd::SignalFd) -> i32 {
    let (sig_tx, sig_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Err(err) = signals::spawn_reader(fd, sig_tx) {
        eprintln!("[lodger-stub] error: {err}");
        return 1;
    }
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(err) => {
            eprintln!(
                "[lodger-stub] error: failed to configure the Kubernetes client: {err} (in a pod the ServiceAccount token is used; outside set KUBECONFIG)"
            );
            return 1;
        }
    };
    let config = stub::StubConfig {
        namespace: args.namespace.clone(),
        job: args.job.clone(),
        sender_id: process_sender_id(),
        poll: args.poll(),
    };
    let mut stdout = tokio::io::stdout();
    let ended = stub::run(client, &config, sig_rx, &mut stdout).await;
    match ended {
        Ok(ended) => {
            if ended == output::Ended::Deleted {
                eprintln!(
                    "[lodger-stub] MigratableJob {} was deleted: the job is cancelled",
                    args.job
                );
            }
            output::exit_code_of(&ended)
        }
        Err(err) => {
            eprintln!("[lodger-stub] error: {err}");
            1
        }
    }
}
