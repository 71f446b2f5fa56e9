//! The notifier: posts one Slack message per request and updates it as the request moves.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use std::time::Duration;

use clap::Parser;
use tars_domain::duration::parse_duration;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_jetstream::topology::NOTIFIER;
use tars_observability::config::{ConfigError, report};
use tars_observability::metrics::Metrics;
use tars_slack::SlackClient;
use tars_slack::config::SlackBotArgs;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;

/// The environment of the notifier (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-notifier",
    version,
    about = "Posts and updates the Slack message of every TARS request"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Settings of the worker runtime.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// The Slack bot that posts.
    #[command(flatten)]
    pub slack_bot: SlackBotArgs,
    /// The channel approvers watch.
    #[arg(long, env = "SLACK_CHANNEL_ID")]
    pub slack_channel_id: Option<String>,
    /// Optional pacing of new messages per channel (Slack allows about 1/s with short
    /// bursts); unset: post at once and let the shared 429 gate slow down.
    #[arg(long, env = "SLACK_MAX_POSTS_PER_SECOND")]
    pub slack_max_posts_per_second: Option<f64>,
    /// How long one Slack call may take; a posting lease lasts three times this.
    #[arg(long, env = "SLACK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub slack_timeout: Duration,
}

/// Runs the notifier until `shutdown` fires.
pub async fn run(args: Args, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let token = args.slack_bot.token().unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    if token.is_none() {
        problems.push(ConfigError::new(
            "SLACK_BOT_TOKEN",
            "required (or SLACK_BOT_TOKEN_FILE)",
        ));
    }
    if args.slack_channel_id.is_none() {
        problems.push(ConfigError::new("SLACK_CHANNEL_ID", "required"));
    }
    report(problems).map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder()
        .timeout(args.slack_timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()?;
    let slack = SlackClient::new(
        http,
        &args.slack_bot.slack_api_url,
        token.as_deref().unwrap_or_default(),
        metrics.clone(),
    )
    .with_pacing(args.slack_max_posts_per_second);
    let conn = tars_jetstream::service::connect(&args.common, "tars-notifier", metrics).await?;
    let worker = Worker::new(
        &conn,
        slack,
        args.slack_channel_id.unwrap_or_default(),
        args.slack_timeout * 3,
    );
    tars_jetstream::service::run_worker(NOTIFIER, conn, worker, &args.worker, shutdown).await?;
    Ok(())
}
