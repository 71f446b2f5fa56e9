//! `tars-ingress`: reads the environment, serves until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tars_ingress::Args::parse();
    args.common.init_logging();
    let shutdown = tars_observability::shutdown::on_signal();
    tars_ingress::run(args, tars_observability::metrics::Metrics::new(), shutdown).await
}
