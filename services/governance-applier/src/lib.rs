//! The governance-applier: grants approved access in the governance API
//! (minio_manager_service) and records `applied` or `failed`.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use clap::Parser;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_jetstream::topology::GOVERNANCE_APPLIER;
use tars_observability::config::{ConfigError, report};
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;
/// Which membership API the applier speaks (`GOVERNANCE_API`).
pub use tars_governance::Api;
/// The governance API settings (`GOVERNANCE_*`).
pub use tars_governance::config::GovernanceArgs;

/// The environment of the governance-applier (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-governance-applier",
    version,
    about = "Grants approved TARS requests in the governance API"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Settings of the worker runtime.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// The governance API.
    #[command(flatten)]
    pub governance: tars_governance::config::GovernanceArgs,
}

/// Runs the governance-applier until `shutdown` fires.
pub async fn run(args: Args, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let governance = args.governance.client(&metrics, &mut problems);
    if governance.is_none() && problems.is_empty() {
        problems.push(ConfigError::new("GOVERNANCE_API_URL", "required"));
    }
    report(problems).map_err(anyhow::Error::msg)?;
    let Some(governance) = governance else {
        anyhow::bail!("GOVERNANCE_API_URL: required");
    };
    let conn =
        tars_jetstream::service::connect(&args.common, "tars-governance-applier", metrics).await?;
    let worker = Worker::new(&conn, governance);
    tars_jetstream::service::run_worker(GOVERNANCE_APPLIER, conn, worker, &args.worker, shutdown)
        .await?;
    Ok(())
}
