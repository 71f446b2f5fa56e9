//! `/metrics`, `/livez` and `/readyz` for the workers, on `METRICS_ADDR`.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::metrics::Metrics;

/// Answers whether the process can do its work right now; `Err` says why not, and is the
/// body of a failing `/readyz`. Each service supplies its own (the NATS crate supplies the
/// connection check), so this crate knows nothing of NATS.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the probe routes need.
#[derive(Clone)]
pub struct Probe {
    /// The process's metrics.
    pub metrics: Metrics,
    /// Decides readiness.
    pub ready: Readiness,
}

/// The three routes, to serve alone (workers) or merge into the ingress.
pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(probe)
}

async fn metrics(State(p): State<Probe>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        p.metrics.render(),
    )
}

/// Ready when the service's own check says so.
async fn readyz(State(p): State<Probe>) -> impl IntoResponse {
    match (p.ready)() {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves the probe routes on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probe: Probe,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(probe))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
