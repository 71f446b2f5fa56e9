//! Logging setup: JSON lines for production (`LOG_FORMAT=json`), text for a terminal.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; a second call (tests, `tars-dev`) is a no-op.
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
