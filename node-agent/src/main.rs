//! `lodger-node-agent`: parses flags, sets up logging, runs the agent; a fatal error goes to the
//! termination log (shown by `kubectl describe pod`) and the exit code is 1.

use clap::Parser;
use lodger_node_agent::agent;
use lodger_node_agent::config::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

// NB: one thread: the agent only waits on sockets, devices and timers, so a single-threaded
// runtime does the job without cross-thread wake-ups or the worker threads' stacks.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let termination_log = args.termination_log.clone();
    if let Err(e) = agent::run(args).await {
        // NB: every error's message already ends with its cause ("…: Address already in use");
        // printing the source chain as well would say it twice.
        let report = e.to_string();
        tracing::error!(error = %report, "node agent stopped");
        // Best effort: outside Kubernetes the termination log may not be writable.
        let _ = std::fs::write(&termination_log, format!("{report}\n"));
        std::process::exit(1);
    }
    Ok(())
}
