//! Logging and trace export setup, installed once per process.
//!
//! **Logs**: JSON lines for production (`LOG_FORMAT=json`), text for a terminal. Every JSON
//! line written while a trace context is current ([`crate::trace::scope`]) carries a
//! top-level `trace_id`, whichever span it is written in; text lines name it through the
//! `http`/`message`/`relay` span they are written in.
//!
//! **Traces**: [`init_with_service`] also exports spans over OTLP/HTTP (protobuf, through the
//! workspace's rustls reqwest) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with a batch processor and the resource
//! `service.name` = the binary's name. The spans join the W3C trace TARS carries
//! ([`crate::otel`]). With neither variable set there is no exporter, no OpenTelemetry layer
//! and nothing to flush. The OpenTelemetry SDK reads the rest of its standard variables
//! itself: `OTEL_EXPORTER_OTLP_HEADERS` / `_TRACES_HEADERS`, `_TIMEOUT`, `_COMPRESSION`,
//! `OTEL_SERVICE_NAME` (wins over the binary's name), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `_ARG`, and `OTEL_BSP_*` (batch size and delays).
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{self as sfmt, FmtContext};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::otel::{ExportClient, ServiceNames};

/// How long one export call may take unless `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` says.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs the global subscriber (logs only, no span export) once; a second call (tests,
/// `tars-dev`) is a no-op.
///
/// async-nats logs every connection event itself, and TARS logs the ones worth knowing once
/// with the connection's name, so its own lines are kept to warnings unless `level` names
/// `async_nats` explicitly.
pub fn init(level: &str, format: &str) {
    install(level, format, None);
}

/// [`init`], plus OTLP span export when the environment asks for it (see the module doc),
/// as `service` (the binary's name, e.g. `tars-ingress`: the resource's `service.name`; its
/// spans' `service` attribute is the name without `tars-`). Call from within the Tokio
/// runtime (export runs on it), and [`Telemetry::shutdown`] it on the way out so the last
/// spans are sent.
pub fn init_with_service(service: &str, level: &str, format: &str) -> Telemetry {
    let provider = export_requested(|k| std::env::var(k).ok())
        .then(|| provider(service))
        .flatten();
    let layer = provider.as_ref().map(|p| {
        let short = service.strip_prefix("tars-").unwrap_or(service);
        (p.tracer("tars"), ServiceNames::process(short))
    });
    install(level, format, layer);
    Telemetry { provider }
}

/// The span export installed by [`init_with_service`]; flush it with [`Self::shutdown`].
#[derive(Debug)]
#[must_use = "shut telemetry down on exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered and stops the exporter (waits at most the export
    /// timeout). A no-op when nothing is exported.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while the batch thread exports, and the export itself runs on this
        // runtime: block a thread of the blocking pool, not a worker.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace export did not shut down cleanly"),
            Err(e) => tracing::warn!(error = %e, "trace export shutdown panicked"),
        }
    }
}

/// Whether the environment (`var`) asks for OTLP export.
fn export_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    let says = |k: &str, v: &str| var(k).is_some_and(|x| x.trim().eq_ignore_ascii_case(v));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !says("OTEL_SDK_DISABLED", "true")
        && !says("OTEL_TRACES_EXPORTER", "none")
}

/// The batch-exporting provider, or `None` (said on stderr: logging is not up yet) when the
/// exporter cannot be built.
fn provider(service: &str) -> Option<SdkTracerProvider> {
    let timeout = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<u64>().ok())
    .map_or(EXPORT_TIMEOUT, Duration::from_millis);
    let Some(client) = ExportClient::new(timeout) else {
        eprintln!("trace export off: telemetry was set up outside a Tokio runtime");
        return None;
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("trace export off: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

fn install(level: &str, format: &str, otel: Option<(SdkTracer, ServiceNames)>) {
    let filter = EnvFilter::try_new(filter_directives(level))
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let logs = if format == "text" {
        sfmt::layer().with_target(false).boxed()
    } else {
        let json = format::format()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(false);
        sfmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceId(json))
            .boxed()
    };
    let spans = otel.map(|(tracer, names)| crate::otel::span_layer(tracer, names));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
}

/// A JSON event format that puts the current trace context's `trace_id` first on the line.
struct WithTraceId<E>(E);

impl<S, N, E> FormatEvent<S, N> for WithTraceId<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let trace = crate::trace::current()
            .filter(|_| event.metadata().fields().field("trace_id").is_none());
        let Some(trace) = trace else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_trace_id(line, trace.trace_id()))
    }
}

/// `line` (one JSON object) with `"trace_id"` as its first member.
fn with_trace_id(line: String, trace_id: &str) -> String {
    match line.strip_prefix('{') {
        Some(rest) if !rest.trim_start().starts_with('}') => {
            format!("{{\"trace_id\":\"{trace_id}\",{rest}")
        }
        _ => line,
    }
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

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!export_requested(env(&[])));
        assert!(!export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!export_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!export_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn the_trace_id_leads_a_json_line() {
        assert_eq!(
            with_trace_id(r#"{"level":"INFO","message":"hi"}"#.into(), "ab"),
            r#"{"trace_id":"ab","level":"INFO","message":"hi"}"#
        );
        assert_eq!(with_trace_id("{}".into(), "ab"), "{}");
        assert_eq!(with_trace_id("plain".into(), "ab"), "plain");
    }
}
