//! The governance-applier: grants approved access in the governance API
//! (minio_manager_service) and records `applied` or `failed`.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use std::time::Duration;

use clap::Parser;
use tars_governance::GovernanceClient;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_jetstream::topology::GOVERNANCE_APPLIER;
use tars_observability::config::{ConfigError, report, secret};
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;
/// Which membership API the applier speaks (`GOVERNANCE_API`).
pub use tars_governance::Api;

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
    /// Base URL of the governance API (minio_manager_service).
    #[arg(long, env = "GOVERNANCE_API_URL")]
    pub governance_api_url: Option<String>,
    /// Bearer token for the governance API (or GOVERNANCE_TOKEN_FILE).
    #[arg(long, env = "GOVERNANCE_TOKEN", hide_env_values = true)]
    pub governance_token: Option<String>,
    /// File holding the governance token.
    #[arg(long, env = "GOVERNANCE_TOKEN_FILE")]
    pub governance_token_file: Option<std::path::PathBuf>,
    /// Which membership API to speak: `tenants` (readable, unambiguous) or `groups` (the
    /// older API).
    #[arg(long, env = "GOVERNANCE_API", default_value = "tenants")]
    pub governance_api: Api,
}

/// Runs the governance-applier until `shutdown` fires.
pub async fn run(args: Args, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let token = secret(
        "GOVERNANCE_TOKEN",
        args.governance_token.as_deref(),
        args.governance_token_file.as_deref(),
    )
    .unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    if token.is_none() {
        problems.push(ConfigError::new(
            "GOVERNANCE_TOKEN",
            "required (or GOVERNANCE_TOKEN_FILE)",
        ));
    }
    if args.governance_api_url.is_none() {
        problems.push(ConfigError::new("GOVERNANCE_API_URL", "required"));
    }
    report(problems).map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()?;
    let governance = GovernanceClient::new(
        http,
        args.governance_api_url.as_deref().unwrap_or_default(),
        token.as_deref().unwrap_or_default(),
        args.governance_api,
        metrics.clone(),
    );
    let conn =
        tars_jetstream::service::connect(&args.common, "tars-governance-applier", metrics).await?;
    let worker = Worker::new(&conn, governance);
    tars_jetstream::service::run_worker(GOVERNANCE_APPLIER, conn, worker, &args.worker, shutdown)
        .await?;
    Ok(())
}
