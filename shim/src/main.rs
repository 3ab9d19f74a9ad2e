//! `lodger-shim`: parses flags, sets up logging, runs the shim, exits with the job's code.

use clap::Parser;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(lodger_shim::job::INIT_ARG) {
        // Re-executed by the shim as PID 1 of the job's namespace.
        std::process::exit(lodger_shim::job::init_main(&argv[2..]));
    }
    let args = lodger_shim::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LODGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Pod logs are not terminals: no colour codes in them.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match lodger_shim::run(args) {
        Ok(code) => code,
        Err(e) => {
            let message = format!("lodger-shim: {e}");
            eprintln!("{message}");
            let _ = std::fs::write("/dev/termination-log", &message);
            lodger_shim::EXIT_SHIM_FAILED
        }
    };
    std::process::exit(code);
}
