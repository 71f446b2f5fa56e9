//! W3C trace context (`traceparent`) carried from an HTTP request through every NATS
//! message it causes, so the log lines and spans of one access request share one trace id
//! across the ingress and all three workers, and on to the Slack and governance calls.
//!
//! The context of the work in hand lives in a task-local ([`scope`]): the ingress sets it
//! per HTTP request, the worker runtime per message (from the message's `traceparent`
//! header), and the event publisher reads it ([`current`]) to stamp what it publishes.
//! Every JSON log line written inside a scope names its `trace_id`
//! ([`crate::telemetry`]). A call to a third party gets a span of its own and a
//! `traceparent` to send ([`outgoing`]).
//!
//! When OpenTelemetry export is on ([`crate::telemetry::init_with_service`]), the spans of
//! the request and of each message join this same trace ([`crate::otel`]): the ids here are
//! the W3C ones, so what the collector shows and what the logs say agree.

use std::future::Future;

use tracing::Instrument as _;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The NATS and HTTP header that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// One trace and the span within it that the next hop descends from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, never all zero.
    trace_id: String,
    /// 16 lowercase hex digits, never all zero.
    span_id: String,
}

fn hex_id(len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

fn valid_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// A new trace, for work that arrives without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: hex_id(32),
            span_id: hex_id(16),
        }
    }

    /// Reads a `traceparent` header (`00-<trace>-<span>-<flags>`); anything malformed is
    /// `None`, so a hostile header can only start a new trace, never reach a log line.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let ok = version == "00"
            && parts.next().is_none()
            && valid_id(trace, 32)
            && valid_id(span, 16)
            && flags.len() == 2
            && flags.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self {
            trace_id: trace.to_owned(),
            span_id: span.to_owned(),
        })
    }

    /// The context of `header`, or a new trace when it is missing or malformed.
    pub fn from_header(header: Option<&str>) -> Self {
        header.and_then(Self::parse).unwrap_or_else(Self::new_root)
    }

    /// The same trace with a new span id: the context to hand to the next hop.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: hex_id(16),
        }
    }

    /// The trace id, for log fields.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The id of the span the next hop descends from (16 lowercase hex digits).
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The `traceparent` header value (sampled).
    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// Runs `work` with `ctx` as the current trace context. With OpenTelemetry export on, the
/// span this is polled in, when it names a trace (a `trace_id` field, like the ingress's
/// `http` span), joins `ctx`'s trace, as does a span first entered inside `work`.
pub async fn scope<F: Future>(ctx: TraceContext, work: F) -> F::Output {
    crate::otel::join_current(&ctx);
    CURRENT.scope(ctx, work).await
}

/// The current trace context, if the work in hand has one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// One call to a third party (Slack, the governance API): the span to run it in and the
/// `traceparent` header to send with it.
#[derive(Debug)]
pub struct Outgoing {
    span: tracing::Span,
    traceparent: Option<String>,
}

impl Outgoing {
    /// `00-<trace>-<span>-01` to send as the [`TRACEPARENT`] header: the call span's own ids
    /// when spans are exported, else a child of the current trace context; `None` outside
    /// any trace.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Runs the call in its span.
    pub async fn run<F: Future>(self, call: F) -> F::Output {
        call.instrument(self.span).await
    }
}

/// The span and `traceparent` of one call to `peer` (`"slack"`, `"governance"`) for
/// `operation` (the API method): a child of the current span named `call`, with `peer`
/// and `operation` fields (`otel.name` = "<peer> <operation>", `otel.kind` = client).
pub fn outgoing(peer: &'static str, operation: &str) -> Outgoing {
    let span = tracing::info_span!(
        "call",
        peer,
        operation,
        otel.name = format!("{peer} {operation}"),
        otel.kind = "client",
    );
    let traceparent =
        crate::otel::traceparent_of(&span).or_else(|| current().map(|c| c.child().header()));
    Outgoing { span, traceparent }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.header()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.header(), root.header());
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c\n-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            TraceContext::from_header(Some(ok)).trace_id(),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }

    #[tokio::test]
    async fn the_context_is_current_inside_its_scope_only() {
        assert_eq!(current(), None);
        let ctx = TraceContext::new_root();
        let seen = scope(ctx.clone(), async { current() }).await;
        assert_eq!(seen, Some(ctx));
    }

    #[tokio::test]
    async fn an_outgoing_call_continues_the_trace_in_scope() {
        assert_eq!(outgoing("slack", "chat.postMessage").traceparent(), None);
        let ctx = TraceContext::new_root();
        let sent = scope(ctx.clone(), async {
            outgoing("slack", "chat.postMessage").traceparent
        })
        .await
        .and_then(|h| TraceContext::parse(&h));
        let sent = sent.expect("a traceparent");
        assert_eq!(sent.trace_id(), ctx.trace_id());
        assert_ne!(sent.span_id(), ctx.span_id());
    }
}
