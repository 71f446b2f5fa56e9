//! `tars-decision`: reads the environment, runs until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tars_decision::Args::parse();
    // Logs, and OTLP span export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = tars_observability::telemetry::init_with_service(
        "tars-decision",
        &args.common.log_level,
        &args.common.log_format,
    );
    // Crash tests only (a no-op in builds without fail points).
    tars_jetstream::service::die_at_fail_points();
    let shutdown = tars_observability::shutdown::on_signal();
    let result =
        tars_decision::run(args, tars_observability::metrics::Metrics::new(), shutdown).await;
    // After SIGTERM: the last spans go out before the process does.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
