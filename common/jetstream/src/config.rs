//! The environment settings every TARS process (`CommonArgs`) and every worker
//! (`WorkerArgs`) shares: NATS, topology, logging, the worker runtime.
//!
//! Each service's `Args` flattens [`CommonArgs`] (and workers [`WorkerArgs`]) into one
//! `clap` parser, so `--help` lists every variable with its default, and a bad value is
//! refused at start with a message that names the variable.

use std::path::PathBuf;
use std::time::Duration;

use tars_domain::duration::parse_duration;

use crate::topology::TopologyConfig;
use crate::worker::WorkerConfig;

/// Settings every TARS process has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file (also NATS_CREDS_FILE).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS credentials file, the Kubernetes-secret spelling of NATS_CREDS.
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// Replicas of streams and the KV bucket: 1 for one server, 3 on a cluster.
    #[arg(long, env = "TARS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// How long TARS_EVENTS keeps the audit trail.
    #[arg(long, env = "TARS_EVENTS_MAX_AGE", default_value = "90d", value_parser = parse_duration)]
    pub events_max_age: Duration,
    /// How long a delivered message may go unacknowledged before it is redelivered
    /// (long handlers extend it with in-progress acks). Every service declares the
    /// consumers, so set it alike everywhere.
    #[arg(long, env = "TARS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// How long start-up may keep trying to declare the topology (a cluster still
    /// electing leaders answers late) before the process gives up.
    #[arg(long, env = "TARS_STARTUP_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub startup_deadline: Duration,
    /// Log filter (`info`, `debug`, `tars_jetstream=debug,info`, ...).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

impl CommonArgs {
    /// The defaults for a process configured from code rather than the environment
    /// (`tars-dev`, tests, benchmarks).
    pub fn for_url(url: &str) -> Self {
        Self {
            nats_url: url.to_owned(),
            nats_creds: None,
            nats_creds_file: None,
            replicas: 1,
            events_max_age: Duration::from_secs(90 * 86_400),
            ack_wait: Duration::from_secs(30),
            startup_deadline: Duration::from_secs(60),
            log_level: "info".into(),
            log_format: "text".into(),
        }
    }

    /// The topology these settings ask for.
    pub fn topology(&self) -> TopologyConfig {
        TopologyConfig {
            replicas: usize::from(self.replicas),
            events_max_age: self.events_max_age,
            ack_wait: self.ack_wait,
        }
    }

    /// The credentials file, from either spelling.
    pub fn creds(&self) -> Option<&std::path::Path> {
        self.nats_creds
            .as_deref()
            .or(self.nats_creds_file.as_deref())
    }

    /// Installs logging as configured.
    pub fn init_logging(&self) {
        tars_observability::telemetry::init(&self.log_level, &self.log_format);
    }
}

impl WorkerArgs {
    /// Production defaults with the probes on `metrics_addr`.
    pub fn on(metrics_addr: std::net::SocketAddr) -> Self {
        Self {
            metrics_addr,
            concurrency: 32,
            max_deliver: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            wait_base: Duration::from_secs(1),
            wait_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

/// Settings of the three workers.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: std::net::SocketAddr,
    /// Messages handled at once by this process. 32 from the curve `tars-bench worker`
    /// prints: the runtime passes a raw pull + ack loop from 8 on and flattens past 64,
    /// while each real handler's calls to Slack or the governance API in flight grow
    /// with it (README, Benchmarks).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Deliveries before a failing message is dead-lettered.
    #[arg(long, env = "WORKER_MAX_DELIVER", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_deliver: u16,
    /// Delay before the first retry; each further retry doubles it.
    #[arg(long, env = "WORKER_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// The longest delay between retries.
    #[arg(long, env = "WORKER_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// How long a message waiting out an outage of Slack or the governance API waits
    /// before the first probe; each failed probe doubles it. Waiting spends no delivery.
    #[arg(long, env = "WORKER_WAIT_BASE", default_value = "1s", value_parser = parse_duration)]
    pub wait_base: Duration,
    /// The longest wait between two probes of a dependency that does not answer.
    #[arg(long, env = "WORKER_WAIT_MAX", default_value = "1m", value_parser = parse_duration)]
    pub wait_max: Duration,
    /// How long a stopping worker lets running handlers finish before it gives their
    /// messages back: longer than the slowest external call (Slack and governance calls
    /// time out after 10 s), so a post in flight ends before the process does.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl WorkerArgs {
    /// The runtime configuration these settings ask for.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            concurrency: usize::from(self.concurrency),
            max_deliver: u64::from(self.max_deliver),
            retry: crate::worker::RetryPolicy {
                base: self.retry_base,
                cap: self.retry_max.max(self.retry_base),
            },
            wait: crate::wait::WaitPolicy {
                base: self.wait_base,
                cap: self.wait_max.max(self.wait_base),
            },
            shutdown_grace: self.shutdown_grace,
            ..WorkerConfig::default()
        }
    }
}
