//! The start-up and shutdown sequence every worker process shares.
//!
//! connect → declare topology → serve probes and run the relay → run the worker runtime →
//! on shutdown, wait for in-flight messages and the relay's last pull, then drain the
//! connection so queued acks reach the server.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::config::{CommonArgs, WorkerArgs};
use crate::topology::{self, Topology, WorkerKind};
use crate::worker::{self, Handler, PullHealth, WorkerConfig};
use tars_observability::health::{self, Probe};
use tars_observability::metrics::Metrics;

/// Why a worker process could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    /// The topology could not be declared.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// The probe server could not bind.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker runtime failed.
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

/// A connected process: client, topology and metrics, ready to build a handler from.
pub struct Connected {
    /// The NATS connection (drained on shutdown).
    pub client: async_nats::Client,
    /// The declared topology.
    pub topology: Topology,
    /// This process's metrics.
    pub metrics: Metrics,
}

/// Connects and declares the topology.
pub async fn connect(
    common: &CommonArgs,
    name: &str,
    metrics: Metrics,
) -> Result<Connected, ServiceError> {
    let client = crate::nats::connect(&common.nats_url, common.creds(), name).await?;
    let topology = topology::declare(&client, &common.topology(), common.startup_deadline).await?;
    Ok(Connected {
        client,
        topology,
        metrics,
    })
}

/// Test builds only: makes each fail point named in `TARS_DIE_AT` (comma-separated) end
/// the process on the spot, as a crash or a SIGKILL would (`abort`: no drain, no ack,
/// nothing after it runs), so crash tests kill a real process at an exact write boundary
/// and start a fresh one that must finish the step. Fail points exist only in builds
/// with the `fail/failpoints` feature (`make test`'s; not the image's), so elsewhere the
/// variable does nothing but say so.
pub fn die_at_fail_points() {
    let Ok(names) = std::env::var("TARS_DIE_AT") else {
        return;
    };
    if !fail::has_failpoints() {
        tracing::warn!(%names, "TARS_DIE_AT is set, but this build has no fail points: ignored");
        return;
    }
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let _ = fail::cfg_callback(name, || std::process::abort());
    }
}

/// How long a process's relay may be without its consumer (at start, or pulls failing)
/// before `/readyz` says so: longer than a leader election, short enough that a process
/// whose relay cannot work leaves service instead of accepting what it cannot announce.
pub const RELAY_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves probes on `addr` and runs `handler` until `shutdown`, then drains NATS.
pub async fn run_worker<H: Handler>(
    kind: WorkerKind,
    conn: Connected,
    handler: H,
    worker_args: &WorkerArgs,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let cfg: WorkerConfig = worker_args.worker_config();
    let addr = worker_args.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })?;
    // Ready while connected and able to pull: pulls failing for longer than this (a
    // deleted consumer, JetStream refusing) take the replica out of service.
    let connected = crate::nats::readiness(&conn.client);
    let health = cfg.health.clone();
    let relay_health = PullHealth::default();
    let relay_ready = relay_health.clone();
    let ready: tars_observability::health::Readiness = std::sync::Arc::new(move || {
        connected()?;
        health.check(std::time::Duration::from_secs(5))?;
        relay_ready
            .check(RELAY_TOLERANCE)
            .map_err(|e| format!("relay: {e}"))
    });
    let probe = Probe {
        metrics: conn.metrics.clone(),
        ready,
    };
    let probes = tokio::spawn(health::serve(listener, probe, shutdown.clone()));
    let relay = tokio::spawn(crate::relay::run(
        conn.topology.clone(),
        crate::publish::EventPublisher::new(conn.topology.js.clone(), conn.metrics.clone()),
        conn.metrics.clone(),
        relay_health,
        shutdown.clone(),
    ));
    let result = worker::run(
        kind,
        conn.topology,
        handler,
        cfg,
        conn.metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = probes.await;
    let _ = relay.await;
    if let Err(e) = conn.client.drain().await {
        tracing::warn!(error = %e, "NATS drain failed");
    }
    Ok(result?)
}
