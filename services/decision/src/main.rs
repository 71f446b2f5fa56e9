//! `tars-decision`: reads the environment, runs until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tars_decision::Args::parse();
    args.common.init_logging();
    let shutdown = tars_observability::shutdown::on_signal();
    tars_decision::run(args, tars_observability::metrics::Metrics::new(), shutdown).await?;
    Ok(())
}
