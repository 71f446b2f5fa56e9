//! The notifier worker: Posts and updates the Slack message of every request.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use clap::Parser;
use tars_common::config::{CommonArgs, WorkerArgs};
use tars_common::metrics::Metrics;
use tars_common::service::{self, ServiceError};
use tars_common::topology::NOTIFIER;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;

/// The environment of the notifier (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-notifier",
    version,
    about = "Posts and updates the Slack message of every request"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Settings of the worker runtime.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Runs the notifier until `shutdown` fires.
pub async fn run(
    args: Args,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let conn = service::connect(&args.common, "tars-notifier", metrics).await?;
    let worker = Worker::new(&conn);
    service::run_worker(NOTIFIER, conn, worker, &args.worker, shutdown).await
}
