//! `kubectl-lodger`: the kubectl plugin binary (`kubectl lodger ...`). See the library docs.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kubectl_lodger::args::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: failed to start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(kubectl_lodger::main_with(cli));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
