//! The command line of `kubectl lodger`: global kubectl-style flags and one subcommand each for
//! run, ps, nodes, migrate, signal, logs, history and completion.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lodger_api::MigrationStrategy;

/// Image used by `run` when `--image` is not given.
pub const DEFAULT_IMAGE: &str = "docker.io/library/debian:bookworm-slim";

const EXAMPLES: &str = "\
Examples:
  # Run a command on an idle workstation, stream its output, exit with its code
  kubectl lodger run --wait -- python3 simulate.py --steps 100000

  # Fan out: 8 instances, {} becomes the instance index 0..7
  kubectl lodger run --parallel 8 --name render -- render --frame {}

  # What runs where, and the workstations
  kubectl lodger ps
  kubectl lodger nodes

  # Talk to a job wherever it runs
  kubectl lodger signal simulate-x7k2p USR1
  kubectl lodger signal simulate-x7k2p SIGRTMIN+3
  kubectl lodger logs -f simulate-x7k2p

  # Move it now, and see its moves
  kubectl lodger migrate simulate-x7k2p --to ws-12
  kubectl lodger history simulate-x7k2p

Exit codes: 0 success; 1 an API or configuration error (the message says what to do);
2 invalid arguments; `run --wait` exits with the job's own exit code.";

/// kubectl plugin for Lodger: run batch jobs on idle desktops and follow them as they migrate.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-lodger",
    bin_name = "kubectl lodger",
    version,
    about = "Run batch jobs on idle workstations and follow them as they migrate (Lodger)",
    long_about = "Run batch jobs on idle workstations and follow them as they migrate.\n\n\
        Lodger places a MigratableJob on an idle desktop; when the desktop's owner returns the job \
        is checkpointed with CRIU and resumes on another idle desktop (or at home, or Parked). \
        Its home stub keeps representing it: signals, output and exit status.",
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// Kubectl-style flags shared by every command.
    #[command(flatten, next_help_heading = "Global options")]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, as kubectl spells them.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Namespace to use (default: the kubeconfig context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to a kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format: json, yaml, or wide (a table with more columns).
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// JSON, like `kubectl get -o json`.
    Json,
    /// YAML, like `kubectl get -o yaml`.
    Yaml,
    /// A table with more columns.
    Wide,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a MigratableJob running COMMAND (like Sprite's `mig`).
    #[command(
        after_help = "Example:\n  kubectl lodger run --wait --strategy LazyRestore -- ./train --epochs 40"
    )]
    Run(RunArgs),
    /// List MigratableJobs: phase, node, home, migrations, age.
    Ps(PsArgs),
    /// List workstations: idle state, idle since, owner and the lodgers running on them.
    Nodes,
    /// Ask Lodger to move a job now (sets the lodger.dev/migrate-to annotation).
    Migrate(MigrateArgs),
    /// Send a signal to a job wherever it runs (creates a JobSignal).
    Signal(SignalArgs),
    /// Print a job's output, stitched across its migrations.
    Logs(LogsArgs),
    /// Show each move of a job: when, from, to, why, strategy, freeze and downtime.
    History(HistoryArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  kubectl lodger completion bash > /etc/bash_completion.d/kubectl-lodger"
    )]
    Completion(CompletionArgs),
}

/// `run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Container image to run the command in (it must contain the command).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Home node: the job's stub runs there and the job returns there when no idle node is left.
    #[arg(long, value_name = "NODE")]
    pub home: Option<String>,
    /// Migration strategy: StopAndCopy, LazyRestore, PostCopy or PreCopy.
    #[arg(long, value_name = "S", value_parser = parse_strategy)]
    pub strategy: Option<MigrationStrategy>,
    /// Name of the MigratableJob (default: the command's name plus a random suffix).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Stream the job's output until it ends, then exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    /// Run N independent instances on N idle nodes; `{}` in the command becomes the index.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub parallel: Option<i32>,
    /// CPU request, e.g. 500m or 2.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory request, e.g. 512Mi or 4Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Print the MigratableJob that would be created (YAML unless -o json) and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `ps`.
#[derive(Debug, Args, Clone, Default)]
pub struct PsArgs {
    /// List jobs in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// `migrate`.
#[derive(Debug, Args, Clone)]
pub struct MigrateArgs {
    /// The MigratableJob.
    pub job: String,
    /// Target node (default: any idle workstation Lodger picks).
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
}

/// `signal`.
#[derive(Debug, Args, Clone)]
pub struct SignalArgs {
    /// The MigratableJob.
    pub job: String,
    /// Signal name or number: TERM, SIGUSR1, usr2, 10, ...; real-time signals as SIGRTMIN+3
    /// (= 37), RTMAX-1 (= 63) or a number 34..64 (Linux numbering: SIGRTMIN = 34, SIGRTMAX = 64)
    pub signal: String,
}

/// `logs`.
#[derive(Debug, Args, Clone)]
pub struct LogsArgs {
    /// The MigratableJob.
    pub job: String,
    /// Keep following the output (across migrations) until the job ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `history`.
#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    /// The MigratableJob.
    pub job: String,
}

/// `completion`.
#[derive(Debug, Args, Clone)]
pub struct CompletionArgs {
    /// Shell to generate for.
    pub shell: clap_complete::Shell,
}

fn parse_strategy(s: &str) -> Result<MigrationStrategy, String> {
    s.parse()
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}
