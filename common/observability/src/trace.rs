//! W3C trace context (`traceparent`) carried from an HTTP request through every NATS
//! message it causes, so the log lines of one access request share one `trace_id` across
//! the ingress and all three workers.
//!
//! The context of the work in hand lives in a task-local ([`scope`]): the ingress sets it
//! per HTTP request, the worker runtime per message (from the message's `traceparent`
//! header), and the event publisher reads it ([`current`]) to stamp what it publishes.
//! Nothing is exported to a collector yet; the ids are the W3C ones so that an OTLP
//! exporter can adopt them later.

use std::future::Future;

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

    /// The `traceparent` header value (sampled).
    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// Runs `work` with `ctx` as the current trace context.
pub async fn scope<F: Future>(ctx: TraceContext, work: F) -> F::Output {
    CURRENT.scope(ctx, work).await
}

/// The current trace context, if the work in hand has one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
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
}
