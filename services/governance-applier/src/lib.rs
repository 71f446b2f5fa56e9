//! The governance-applier worker: Grants approved access in the governance API.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use clap::Parser;
use tars_common::config::{CommonArgs, WorkerArgs};
use tars_common::metrics::Metrics;
use tars_common::service::{self, ServiceError};
use tars_common::topology::GOVERNANCE_APPLIER;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;

/// The environment of the governance-applier (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-governance-applier",
    version,
    about = "Grants approved access in the governance API"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Settings of the worker runtime.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Runs the governance-applier until `shutdown` fires.
pub async fn run(
    args: Args,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let conn = service::connect(&args.common, "tars-governance-applier", metrics).await?;
    let worker = Worker::new(&conn);
    service::run_worker(GOVERNANCE_APPLIER, conn, worker, &args.worker, shutdown).await
}
