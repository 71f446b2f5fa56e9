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
        },
        Metrics::new(),
        shutdown.clone(),
    ));
    let decision = tokio::spawn(tars_decision::run(
        tars_decision::Args {
            common: common.clone(),
            worker: worker_args(9092),
        },
        Metrics::new(),
        shutdown.clone(),
    ));
    let applier = tokio::spawn(tars_governance_applier::run(
        tars_governance_applier::Args {
            common,
            worker: worker_args(9093),
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
