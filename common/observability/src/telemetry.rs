//! Logging setup: JSON lines for production (`LOG_FORMAT=json`), text for a terminal.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; a second call (tests, `tars-dev`) is a no-op.
///
/// async-nats logs every connection event itself, and TARS logs the ones worth knowing once
/// with the connection's name, so its own lines are kept to warnings unless `level` names
/// `async_nats` explicitly.
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_new(filter_directives(level))
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
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

/// `level` with async-nats kept to warnings, unless `level` says otherwise.
fn filter_directives(level: &str) -> String {
    if level.contains("async_nats") {
        level.to_owned()
    } else {
        format!("{level},async_nats=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_nats_is_quiet_unless_asked_for() {
        assert_eq!(filter_directives("info"), "info,async_nats=warn");
        assert_eq!(
            filter_directives("debug,async_nats=trace"),
            "debug,async_nats=trace"
        );
    }
}
