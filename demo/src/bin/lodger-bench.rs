//! `lodger-bench`: the engine benchmark (`make bench`). Thin: parses flags, runs
//! `lodger_demo::bench`, prints Markdown. See docs/benchmarks.md for how to read it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lodger_demo::bench::{self, BenchConfig, SizeResults};
use lodger_demo::job::{WorkloadSpec, become_subreaper};
use lodger_engine::{Engine, Strategy};

/// Engine vs raw CRIU vs dd, for several RSS sizes and every strategy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Only 64 and 256 MiB, one run each (for iteration).
    #[arg(long)]
    quick: bool,
    /// RSS sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,2048")]
    sizes: Vec<u64>,
    /// Runs per size and strategy (fallback strategies run once).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Strategies to request, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "StopAndCopy,LazyRestore,PostCopy,PreCopy"
    )]
    strategies: Vec<String>,
    /// Skip the raw CRIU and dd baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Staging directory (stands in for the checkpoint volume); emptied as it goes.
    #[arg(long, default_value = "/var/tmp/lodger-bench")]
    dir: PathBuf,
    /// CRIU binary.
    #[arg(long, default_value = lodger_engine::DEFAULT_CRIU_PATH)]
    criu: PathBuf,
    /// Keep each sample's directory (images and CRIU logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// The lodger-workload binary (default: next to this one).
    #[arg(long)]
    workload: Option<PathBuf>,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    match s {
        "StopAndCopy" => Ok(Strategy::StopAndCopy),
        "LazyRestore" => Ok(Strategy::LazyRestore),
        "PostCopy" => Ok(Strategy::PostCopy),
        "PreCopy" => Ok(Strategy::PreCopy),
        other => Err(format!("unknown strategy {other:?}")),
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    become_subreaper()?;
    let strategies = args
        .strategies
        .iter()
        .map(|s| parse_strategy(s))
        .collect::<Result<Vec<_>, _>>()?;
    let (sizes, runs) = if args.quick {
        (vec![64, 256], 1)
    } else {
        (args.sizes, args.runs)
    };
    let cfg = BenchConfig {
        sizes_mib: sizes,
        runs,
        strategies,
        dir: args.dir,
        criu: args.criu,
        workload: args.workload.unwrap_or_else(WorkloadSpec::sibling_bin),
        keep: args.keep,
    };
    std::fs::create_dir_all(&cfg.dir)?;
    let probe = Engine::new(&cfg.criu, &cfg.dir)?;
    let machine = bench::machine_description(&cfg, probe.criu().version());
    println!("## Machine\n\n{machine}");
    let mut results: Vec<SizeResults> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &mib in &cfg.sizes_mib {
        let mut size = SizeResults {
            mib,
            ..SizeResults::default()
        };
        for &strategy in &cfg.strategies {
            let (used, _) = probe.plan(strategy, false);
            let runs = if used == strategy { cfg.runs } else { 1 };
            for run in 0..runs {
                eprintln!("bench: {mib} MiB {strategy} run {}/{runs}", run + 1);
                match bench::measure_engine(&cfg, mib, strategy, run) {
                    Ok(s) => size.engine.push(s),
                    Err(e) => failures.push(format!("{mib} MiB {strategy} run {run}: {e}")),
                }
            }
        }
        if !args.no_baselines {
            for &strategy in &cfg.strategies {
                if strategy == Strategy::PreCopy {
                    continue;
                }
                for run in 0..cfg.runs {
                    eprintln!(
                        "bench: {mib} MiB raw criu {strategy} run {}/{}",
                        run + 1,
                        cfg.runs
                    );
                    match bench::measure_raw(&cfg, mib, strategy, run) {
                        Ok(s) => size.raw.push(s),
                        Err(e) => {
                            failures.push(format!("{mib} MiB raw criu {strategy} run {run}: {e}"))
                        }
                    }
                }
            }
            for _ in 0..cfg.runs {
                match bench::measure_dd(&cfg, mib) {
                    Ok(s) => size.dd.push(s),
                    Err(e) => failures.push(format!("{mib} MiB dd: {e}")),
                }
            }
        }
        results.push(size);
    }
    // Removes the staging directory if every sample cleaned up after itself.
    let _ = std::fs::remove_dir(&cfg.dir);
    println!("## Engine\n\n{}", bench::engine_table(&results));
    if !args.no_baselines {
        println!("## Engine vs raw CRIU\n\n{}", bench::raw_table(&results));
        println!("## Dump throughput vs dd\n\n{}", bench::dd_table(&results));
    }
    for f in bench::fallbacks(&results) {
        println!("- fallback: {f}");
    }
    if failures.is_empty() {
        println!(
            "\nEvery migrated job verified its memory checksum and printed continuous output."
        );
        Ok(())
    } else {
        for f in &failures {
            println!("- FAILED: {f}");
        }
        Err(format!("{} sample(s) failed", failures.len()).into())
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lodger-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
