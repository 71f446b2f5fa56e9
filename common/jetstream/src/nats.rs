//! Connecting to NATS the same way in every service.

use std::time::Duration;

/// Why the connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("NATS_CREDS: {0}")]
    Creds(std::io::Error),
    /// The server could not be reached.
    #[error("connect to {url}: {message}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
}

/// Connects to `url` with reconnects forever, so a NATS restart or rolling upgrade needs no
/// operator action; waits for the first connection rather than failing at once, because in
/// Kubernetes NATS and TARS start in any order.
pub async fn connect(
    url: &str,
    creds: Option<&std::path::Path>,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // Bounds how long a caller rides out a NATS outage before it gives up (the
        // ingress then answers 503 with Retry-After; a worker naks and retries).
        .request_timeout(Some(Duration::from_secs(5)))
        .retry_on_initial_connect()
        .event_callback({
            let name = name.to_owned();
            move |event| {
                let name = name.clone();
                async move { log_event(&name, &event) }
            }
        });
    if let Some(path) = creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(ConnectError::Creds)?;
    }
    // `NATS_URL` may list every node of a cluster, comma-separated.
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    opts.connect(servers)
        .await
        .map_err(|e| ConnectError::Connect {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// One log line per connection event worth knowing, named by the connection (async-nats's
/// own lines are filtered to warnings by [`tars_observability::telemetry`]): connects at
/// info, losses at warn, the client errors of each reconnect attempt at debug.
fn log_event(connection: &str, event: &async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!(connection, "NATS connected"),
        Event::Disconnected => tracing::warn!(connection, "NATS disconnected; reconnecting"),
        Event::LameDuckMode | Event::SlowConsumer(_) | Event::ServerError(_) => {
            tracing::warn!(connection, %event, "NATS")
        }
        Event::ClientError(_) | Event::Draining | Event::Closed => {
            tracing::debug!(connection, %event, "NATS")
        }
    }
}

/// Whether the client is connected right now.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The `/readyz` check of a process whose work needs this connection; the topology was
/// declared before the probes are served.
pub fn readiness(client: &async_nats::Client) -> tars_observability::health::Readiness {
    let client = client.clone();
    std::sync::Arc::new(move || {
        if is_connected(&client) {
            Ok(())
        } else {
            Err("NATS disconnected".to_owned())
        }
    })
}
