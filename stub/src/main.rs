//! `lodger-stub`: PID 1 of pod `<job>-home`. See the library docs.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = lodger_stub::Args::parse();
    // NB: block the forwarded signals before the runtime starts any thread (see `signals`).
    let fd = match lodger_stub::signals::block_forwarded() {
        Ok(fd) => fd,
        Err(err) => {
            eprintln!("[lodger-stub] error: {err}");
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("[lodger-stub] error: failed to start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(lodger_stub::run_process(args, fd));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
