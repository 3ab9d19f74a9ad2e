//! `lodger-demo`: migrates a real job between two namespaced "nodes" on this machine through the
//! real lodger-shim and its control socket, once per strategy (`make demo`). Thin: flags, then
//! `lodger_demo::scenario::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use lodger_demo::job::WorkloadSpec;
use lodger_demo::scenario::{self, DemoConfig};
use lodger_shim::control::Strategy;

/// Migrate a real job between two namespaced "nodes" on this machine, once per strategy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Strategies, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "StopAndCopy,LazyRestore,PostCopy,PreCopy"
    )]
    strategies: Vec<String>,
    /// Working directory (volume, node dirs, logs); emptied first; logs are kept afterwards.
    #[arg(long, default_value = "/var/tmp/lodger-demo")]
    dir: PathBuf,
    /// MiB of workload memory.
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    /// Milliseconds per workload tick.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Ticks to run on each node.
    #[arg(long, default_value_t = 20)]
    ticks: u64,
    /// CRIU binary.
    #[arg(long, default_value = lodger_engine::DEFAULT_CRIU_PATH)]
    criu: PathBuf,
    /// lodger-shim binary (default: next to this one).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// lodger-workload binary (default: next to this one).
    #[arg(long)]
    workload: Option<PathBuf>,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        format!("unknown strategy {s:?} (StopAndCopy, LazyRestore, PostCopy, PreCopy)")
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let strategies = match args.strategies.iter().map(|s| parse_strategy(s)).collect() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lodger-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let sibling = |name: &str| WorkloadSpec::sibling_bin().with_file_name(name);
    let cfg = DemoConfig {
        strategies,
        dir: args.dir,
        shim: args.shim.unwrap_or_else(|| sibling("lodger-shim")),
        workload: args.workload.unwrap_or_else(|| sibling("lodger-workload")),
        criu: args.criu,
        mem_mib: args.mem_mib,
        tick_ms: args.tick_ms,
        ticks_per_node: args.ticks,
    };
    let started = Instant::now();
    let (reports, failures) = scenario::run(&cfg);
    println!("{}", scenario::summary_table(&reports));
    println!(
        "{} of {} strategies migrated the job intact in {:.1} s. Logs (and images of failed runs): {}",
        reports.len(),
        cfg.strategies.len(),
        started.elapsed().as_secs_f64(),
        cfg.dir.display()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
