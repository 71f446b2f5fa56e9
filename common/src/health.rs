//! `/metrics`, `/livez` and `/readyz` for the workers, on `METRICS_ADDR`.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the probe routes need.
#[derive(Clone)]
pub struct Probe {
    /// The process's metrics.
    pub metrics: Metrics,
    /// The NATS connection whose state decides readiness.
    pub client: async_nats::Client,
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

/// Ready when connected to NATS; the topology was declared before the server started.
async fn readyz(State(p): State<Probe>) -> impl IntoResponse {
    if crate::nats::is_connected(&p.client) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS disconnected")
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
