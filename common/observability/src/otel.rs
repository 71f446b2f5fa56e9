//! OpenTelemetry spans for the W3C trace that [`crate::trace`] carries, and their OTLP export.
//!
//! TARS makes its own spans with `tracing` (the HTTP request, each handled message, each
//! Slack and governance call). When tracing is exported ([`crate::telemetry::init_with_service`]
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` set), [`span_layer`] turns them into OpenTelemetry
//! spans, and makes them join the trace of the [`TraceContext`](crate::trace::TraceContext)
//! in scope instead of starting traces of their own:
//!
//! - a span that names a trace (it has a `trace_id` field: the ingress's `http` span, the
//!   relay's span) joins the context that [`crate::trace::scope`] makes current inside it;
//! - any other span first entered inside a [`crate::trace::scope`] (the worker's `message`
//!   span) joins that scope's context, unless it descends from a span already in that trace.
//!
//! "joins" meaning: its OpenTelemetry parent is the remote span of the context's
//! `traceparent`, so it has the context's trace id and descends from the hop that sent it.
//!
//! Each span also gets a `service` attribute naming the TARS service it belongs to (its own
//! `service` or `worker` field, else its parent's, else the process's): the resource's
//! `service.name` tells processes apart, this tells apart services that share one process
//! (`tars-dev`, the tests).
//!
//! Nothing here runs unless a [`span_layer`] was built: without an exporter, TARS's spans stay
//! plain `tracing` spans and the cost is one relaxed atomic load per [`crate::trace::scope`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::trace::{self, TraceContext};

/// Set once a [`span_layer`] exists; until then joining is skipped outright.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Which `service` attribute the spans of a process get when neither they nor their parents
/// name one (the worker runtime's spans name theirs with their `worker` field).
#[derive(Debug, Clone, Default)]
pub struct ServiceNames {
    default: Option<String>,
    by_span: Vec<(&'static str, String)>,
}

impl ServiceNames {
    /// Every unnamed span belongs to `service` (a process running one TARS service).
    pub fn process(service: &str) -> Self {
        Self {
            default: Some(service.to_owned()),
            by_span: Vec::new(),
        }
    }

    /// No default: only spans that name a service, or descend from one that does, get the
    /// attribute (a process running several services, such as a test).
    pub fn none() -> Self {
        Self::default()
    }

    /// Spans called `span_name` (and what descends from them) belong to `service`.
    pub fn span(mut self, span_name: &'static str, service: &str) -> Self {
        self.by_span.push((span_name, service.to_owned()));
        self
    }
}

/// The `tracing` layer that makes OpenTelemetry spans of TARS's spans, with `tracer`
/// (whose provider exports them), joined to the trace in scope and named by `names` (see the
/// module doc).
///
/// OpenTelemetry contexts are not activated on span entry: TARS has no OpenTelemetry-native
/// instrumentation that would read them, and a span that is not started on entry can still
/// be given its parent when the trace context is learnt inside it.
pub fn span_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
    names: ServiceNames,
) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    ENABLED.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .and_then(JoinLayer { names })
}

/// The service a span belongs to.
struct Service(String);
/// The span has been entered once (its service and trace are settled).
struct Seen;
/// The span was made to join this trace.
struct Joined(String);

/// Reads a span's `service` or `worker` field.
#[derive(Default)]
struct ServiceField(Option<String>);

impl tracing::field::Visit for ServiceField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if matches!(field.name(), "service" | "worker") {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "service" | "worker") {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

struct JoinLayer {
    names: ServiceNames,
}

impl<S> Layer<S> for JoinLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut field = ServiceField::default();
        attrs.record(&mut field);
        let named = field.0.or_else(|| {
            self.names
                .by_span
                .iter()
                .find(|(name, _)| *name == attrs.metadata().name())
                .map(|(_, service)| service.clone())
        });
        if let (Some(service), Some(span)) = (named, ctx.span(id)) {
            span.extensions_mut().insert(Service(service));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        if span.extensions().get::<Seen>().is_some() {
            return;
        }
        span.extensions_mut().insert(Seen);
        let service = span
            .scope()
            .find_map(|s| s.extensions().get::<Service>().map(|x| x.0.clone()))
            .or_else(|| self.names.default.clone());
        // The registry has made the span current before the layers hear of the entry.
        let handle = tracing::Span::current();
        if handle.id().as_ref() != Some(id) {
            return;
        }
        if let Some(service) = service {
            if span.extensions().get::<Service>().is_none() {
                span.extensions_mut().insert(Service(service.clone()));
            }
            handle.set_attribute("service", service);
        }
        if let Some(cx) = trace::current() {
            join(&span, &handle, &cx);
        }
    }
}

/// Makes `span` (whose handle is `handle`) a child of `cx`'s remote span, unless it or a
/// parent already joined that trace. Holds no extension lock while calling back into the
/// subscriber.
fn join<'a, R: LookupSpan<'a>>(span: &SpanRef<'a, R>, handle: &tracing::Span, cx: &TraceContext) {
    let inside = span.scope().any(|s| {
        s.extensions()
            .get::<Joined>()
            .is_some_and(|j| j.0 == cx.trace_id())
    });
    if inside {
        return;
    }
    span.extensions_mut()
        .replace(Joined(cx.trace_id().to_owned()));
    // A span already started (something asked for its context) keeps its own trace.
    let _ = handle.set_parent(remote_context(cx));
}

/// Called by [`trace::scope`] as it starts: the current span, if it names a trace (has a
/// `trace_id` field), joins `cx`.
pub(crate) fn join_current(cx: &TraceContext) {
    if !enabled() {
        return;
    }
    let handle = tracing::Span::current();
    let (Some(id), Some(meta)) = (handle.id(), handle.metadata()) else {
        return;
    };
    if meta.fields().field("trace_id").is_none() {
        return;
    }
    tracing::dispatcher::get_default(|dispatch| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(span) = registry.span(&id)
        {
            join(&span, &handle, cx);
        }
    });
}

/// The OpenTelemetry context whose (remote) span is the one `cx`'s `traceparent` names.
fn remote_context(cx: &TraceContext) -> opentelemetry::Context {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(cx.trace_id()),
        SpanId::from_hex(cx.span_id()),
    ) else {
        return opentelemetry::Context::new();
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` naming `span`'s OpenTelemetry span, when it has one.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The OTLP/HTTP exporter's client: the workspace's reqwest (rustls), its requests run on
/// the Tokio runtime that installed telemetry, since the SDK's batch processor exports
/// from a plain thread of its own.
#[derive(Debug)]
pub(crate) struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    /// A client whose calls give up after `timeout`; `None` outside a Tokio runtime.
    pub(crate) fn new(timeout: std::time::Duration) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let http = reqwest::Client::builder().timeout(timeout).build().ok()?;
        Some(Self { http, runtime })
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let http = self.http.clone();
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let resp = http.execute(request).await?;
            let mut out = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                out = out.header(name, value);
            }
            let body = resp.bytes().await?;
            Ok::<_, HttpError>(out.body(body)?)
        });
        Box::pin(async move { task.await? })
    }
}
