//! `tars-dev`: the whole of TARS on one machine, for trying it out.
//!
//! Starts a nats-server (data in the git-ignored `.data/` folder), then every service
//! in this one process, each with its own metrics port, and stops them all on Ctrl-C.

use std::path::PathBuf;

use clap::Parser;
use tars_common::config::{CommonArgs, WorkerArgs};
use tars_common::metrics::Metrics;

/// Where the local stack keeps its data and which ports it uses.
#[derive(Debug, Parser)]
#[command(name = "tars-dev", about = "Run all of TARS locally")]
struct Args {
    /// Folder for nats-server's store (git-ignored).
    #[arg(long, env = "TARS_DEV_DATA", default_value = ".data")]
    data: PathBuf,
    /// Port of the local nats-server.
    #[arg(long, env = "TARS_DEV_NATS_PORT", default_value_t = 4222)]
    nats_port: u16,
}

fn worker_args(port: u16) -> WorkerArgs {
    WorkerArgs {
        metrics_addr: ([127, 0, 0, 1], port).into(),
        concurrency: 16,
        max_deliver: 10,
    }
}

async fn async_run_decision(
    args: tars_decision::Args,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    Ok(tars_decision::run(args, metrics, shutdown).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tars_common::telemetry::init("info", "text");
    let server =
        tars_testkit::NatsServer::start_persistent(args.data.join("nats"), args.nats_port)?;
    let common = CommonArgs {
        nats_url: server.url(),
        nats_creds: None,
        nats_creds_file: None,
        replicas: 1,
        events_max_age: std::time::Duration::from_secs(90 * 86_400),
        log_level: "info".into(),
        log_format: "text".into(),
    };
    let shutdown = tars_common::shutdown::on_signal();
    let notifier = tokio::spawn(tars_notifier::run(
        tars_notifier::Args {
            common: common.clone(),
            worker: worker_args(9091),
            slack_bot_token: Some("xoxb-dev".into()),
            slack_bot_token_file: None,
            slack_channel_id: Some("C_DEV".into()),
            slack_api_url: "http://127.0.0.1:9/api".into(),
        },
        Metrics::new(),
        shutdown.clone(),
    ));
    let decision = tokio::spawn(async_run_decision(
        tars_decision::Args {
            common: common.clone(),
            worker: worker_args(9092),
            request_ttl: std::time::Duration::from_secs(7 * 86_400),
            sweep_interval: std::time::Duration::from_secs(30),
        },
        Metrics::new(),
        shutdown.clone(),
    ));
    let applier = tokio::spawn(tars_governance_applier::run(
        tars_governance_applier::Args {
            common,
            worker: worker_args(9093),
            governance_api_url: Some("http://127.0.0.1:9".into()),
            governance_token: Some("dev".into()),
            governance_token_file: None,
        },
        Metrics::new(),
        shutdown.clone(),
    ));
    println!("TARS is running. NATS: {}", server.url());
    println!(
        "Metrics: http://127.0.0.1:9091/metrics (notifier), :9092 (decision), :9093 (governance-applier)"
    );
    println!("Press Ctrl-C to stop.");
    for (name, task) in [
        ("notifier", notifier),
        ("decision", decision),
        ("governance-applier", applier),
    ] {
        match task.await {
            Ok(Ok(())) => tracing::info!("{name} stopped"),
            Ok(Err(e)) => {
                shutdown.cancel();
                tracing::error!("{name} failed: {e}");
            }
            Err(e) => tracing::error!("{name} panicked: {e}"),
        }
    }
    drop(server);
    Ok(())
}
