//! The decision worker: applies approve/deny decisions to the request state machine with
//! compare-and-set, and expires pending requests older than `REQUEST_TTL`.
//!
//! A library with [`run`] so tests and `tars-dev` run it in-process; `main.rs` only
//! parses the environment and waits for SIGTERM.

mod handler;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tars_domain::duration::parse_duration;
use tars_domain::machine::Policy;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_jetstream::service::{self, ServiceError};
use tars_jetstream::topology::DECISION;
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

pub use handler::Worker;

/// The environment of the decision worker (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-decision",
    version,
    about = "Applies decisions to the TARS request state machine"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Settings of the worker runtime.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Pending requests older than this expire.
    #[arg(long, env = "REQUEST_TTL", default_value = "7d", value_parser = parse_duration)]
    pub request_ttl: Duration,
    /// How often the expiry sweep runs (at most 30 s apart).
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// Finished requests (denied, cancelled, expired, revoked) are removed from the
    /// bucket this long after they finished; their events stay in `TARS_EVENTS`.
    #[arg(long, env = "REQUEST_RETENTION", default_value = "400d", value_parser = parse_duration)]
    pub request_retention: Duration,
    /// A pending request gets a reminder in its Slack thread once per this.
    #[arg(long, env = "REMINDER_INTERVAL", default_value = "24h", value_parser = parse_duration)]
    pub reminder_interval: Duration,
    /// The requester is told this long before time-bound access ends (no warning for
    /// grants shorter than twice this).
    #[arg(long, env = "ACCESS_EXPIRY_WARNING", default_value = "24h", value_parser = parse_duration)]
    pub access_expiry_warning: Duration,
}

impl Args {
    /// The defaults `--help` shows, around the given connection and runtime settings: for
    /// `tars-dev`, the benchmarks and the tests, which then change only what they need.
    pub fn new(common: CommonArgs, worker: WorkerArgs) -> Self {
        const DAY: u64 = 86_400;
        Self {
            common,
            worker,
            request_ttl: Duration::from_secs(7 * DAY),
            sweep_interval: Duration::from_secs(30),
            request_retention: Duration::from_secs(400 * DAY),
            reminder_interval: Duration::from_secs(DAY),
            access_expiry_warning: Duration::from_secs(DAY),
        }
    }
}

/// Runs the decision worker and its expiry sweep until `shutdown` fires.
pub async fn run(
    args: Args,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let conn = service::connect(&args.common, "tars-decision", metrics).await?;
    let policy = Policy {
        request_ttl: args.request_ttl,
        reminder_interval: args.reminder_interval,
        access_expiry_warning: args.access_expiry_warning,
    };
    let sweeper = Arc::new(Worker::new(&conn, policy.clone()));
    let every = args.sweep_interval.min(Duration::from_secs(30));
    let retention = args.request_retention;
    let sweep = tokio::spawn({
        let (s, stop) = (sweeper.clone(), shutdown.clone());
        async move { s.sweep_forever(every, retention, stop).await }
    });
    let worker = Worker::new(&conn, policy);
    let result = service::run_worker(DECISION, conn, worker, &args.worker, shutdown).await;
    let _ = sweep.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_has_the_defaults_the_command_line_has() {
        let parsed = Args::try_parse_from(["tars-decision"]).unwrap();
        let built = Args::new(parsed.common.clone(), parsed.worker.clone());
        assert_eq!(
            (
                built.request_ttl,
                built.sweep_interval,
                built.request_retention,
                built.reminder_interval,
                built.access_expiry_warning
            ),
            (
                parsed.request_ttl,
                parsed.sweep_interval,
                parsed.request_retention,
                parsed.reminder_interval,
                parsed.access_expiry_warning
            )
        );
    }
}
