//! kubectl plugin for Lodger: run, ps, nodes, migrate, signal, logs, history, completion.
//!
//! `kubectl lodger ...` runs this binary (`kubectl-lodger` on PATH). It talks to the API server
//! only: it creates MigratableJobs and JobSignals, annotates jobs for manual migration, and reads
//! jobs, nodes, pods and pod logs. Signal sending and output stitching are the home stub's code
//! (`lodger_stub::forward`, `lodger_stub::output`), so the plugin and the stub agree on seqs,
//! names and where the output lives.

pub mod args;
pub mod commands;
pub mod error;
pub mod jobspec;
pub mod render;

use std::time::Duration;

use clap::CommandFactory;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::args::{Cli, Command, GlobalArgs, OutputFormat};
use crate::commands::Io;
use crate::error::CliError;

/// How often `--wait`, `logs -f` and `run --parallel --wait` look again.
pub const POLL: Duration = Duration::from_secs(1);

/// Loads the client configuration as kubectl does: `--kubeconfig`, else `$KUBECONFIG`, else
/// `~/.kube/config`, else the in-cluster ServiceAccount; `--context` picks the context.
pub async fn load_config(global: &GlobalArgs) -> Result<Config, CliError> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        cluster: None,
        user: None,
    };
    match (&global.kubeconfig, &global.context) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| CliError::Kubeconfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| CliError::Kubeconfig(e.to_string()))
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::Kubeconfig(e.to_string())),
        (None, None) => Config::infer()
            .await
            .map_err(|e| CliError::NoConfig(e.to_string())),
    }
}

/// A client and the namespace to use (`-n`, else the context's, else "default").
pub async fn connect(global: &GlobalArgs) -> Result<(Client, String), CliError> {
    let config = load_config(global).await?;
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig(e.to_string()))?;
    Ok((client, namespace))
}

/// Runs a parsed command line; returns the process exit code. Errors are printed to stderr.
pub async fn main_with(cli: Cli) -> i32 {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut io = Io {
        out: &mut stdout,
        err: &mut stderr,
    };
    match execute(cli, &mut io).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

/// Runs a parsed command line against the configured cluster.
pub async fn execute<O, E>(cli: Cli, io: &mut Io<'_, O, E>) -> Result<i32, CliError>
where
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    let global = cli.global;
    let output = global.output;
    match cli.command {
        Command::Completion(c) => {
            let mut buf = Vec::new();
            clap_complete::generate(c.shell, &mut Cli::command(), "kubectl-lodger", &mut buf);
            tokio::io::AsyncWriteExt::write_all(io.out, &buf).await?;
            Ok(0)
        }
        Command::Run(args) if args.dry_run => {
            let ns = match &global.namespace {
                Some(ns) => ns.clone(),
                None => load_config(&global)
                    .await
                    .map(|c| c.default_namespace)
                    .unwrap_or_else(|_| "default".into()),
            };
            let job = jobspec::build_job(&args, &ns)?;
            let format = if output == Some(OutputFormat::Json) {
                OutputFormat::Json
            } else {
                OutputFormat::Yaml
            };
            let text = commands::structured(&job, format)?;
            tokio::io::AsyncWriteExt::write_all(io.out, text.as_bytes()).await?;
            Ok(0)
        }
        command => {
            // Argument checks that need no cluster come first, so mistakes are reported fast.
            if let Command::Run(args) = &command {
                jobspec::build_job(args, "default")?;
            }
            if let Command::Signal(args) = &command {
                lodger_stub::signals::parse_signal(&args.signal)
                    .map_err(|e| CliError::Invalid(e.to_string()))?;
            }
            let (client, ns) = connect(&global).await?;
            let now = jiff::Timestamp::now();
            match command {
                Command::Run(args) => commands::run(client, &ns, &args, output, POLL, io).await,
                Command::Ps(args) => commands::ps(client, &ns, &args, output, now, io).await,
                Command::Nodes => commands::nodes(client, &ns, output, now, io).await,
                Command::Migrate(args) => commands::migrate(client, &ns, &args, io).await,
                Command::Signal(args) => {
                    commands::signal(
                        client,
                        &ns,
                        &args,
                        lodger_stub::forward::RetryPolicy::cli(),
                        io,
                    )
                    .await
                }
                Command::Logs(args) => commands::logs(client, &ns, &args, POLL, io).await,
                Command::History(args) => {
                    commands::history(client, &ns, &args, output, now, io).await
                }
                Command::Completion(_) => unreachable!("handled above without a cluster"),
            }
        }
    }
}
