//! `lodger-operator`: parses flags, sets up tracing, runs the operator until SIGTERM/SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = lodger_operator::Config::parse();
    lodger_operator::telemetry::init(config.log_format).map_err(|e| anyhow::anyhow!(e))?;
    lodger_operator::run(config).await?;
    Ok(())
}
