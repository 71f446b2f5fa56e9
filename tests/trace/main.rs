//! One access request is one trace across the whole of TARS.
//!
//! A global `tracing` subscriber turns TARS's spans into OpenTelemetry spans
//! ([`tars_observability::otel::span_layer`], as production installs it when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set) into an in-memory exporter. A real nats-server, the
//! stand-ins and all four services run in this process; one request is submitted with a W3C
//! `traceparent` and approved over REST in the same trace, and once it is applied the
//! spans of that trace id must come from the ingress, the notifier, the decision worker
//! and the governance-applier, and include the Slack and governance API calls.
//!
//! The stand-ins do not record request headers (and testkit is not this test's to change),
//! so that Slack and the governance API *received* a `traceparent` is not checked on the
//! wire: the call spans are checked here, and the header they send by the unit test
//! `an_outgoing_call_continues_the_trace_in_scope` of `tars_observability::trace`.
//!
//! Its own binary: the subscriber is process-global.
#![allow(clippy::unwrap_used, missing_docs)]

#[allow(dead_code)]
#[path = "../it/stack.rs"]
mod stack;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use tars_observability::otel::ServiceNames;
use tars_observability::trace::TraceContext;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::stack::{ADMIN_TOKEN, Options, Stack, USER_TOKEN, wait_status};
use crate::support::eventually;

const SERVICES: [&str; 4] = ["ingress", "notifier", "decision", "governance-applier"];

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// `POST path` with `body` as `token`, in the trace `traceparent` names.
async fn post_traced(
    stack: &Stack,
    path: &str,
    token: &str,
    traceparent: &str,
    body: Value,
) -> Value {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.base))
        .bearer_auth(token)
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "{path}: {body}");
    body
}

/// What is missing from `spans` (those of one trace) for the test to pass; empty when
/// nothing is.
fn missing(spans: &[&SpanData]) -> Vec<String> {
    let services: BTreeSet<String> = spans.iter().filter_map(|s| attr(s, "service")).collect();
    let mut missing: Vec<String> = SERVICES
        .iter()
        .filter(|s| !services.contains(**s))
        .map(|s| format!("a span of {s}"))
        .collect();
    let call = |peer: &str, service: &str| {
        spans.iter().any(|s| {
            attr(s, "peer").as_deref() == Some(peer)
                && attr(s, "service").as_deref() == Some(service)
        })
    };
    if !call("slack", "notifier") {
        missing.push("the notifier's Slack call".into());
    }
    if !call("governance", "governance-applier") {
        missing.push("the governance-applier's governance call".into());
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_is_one_trace_across_all_four_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // All four services share this process, so none is the default: the workers' spans
    // name theirs, and the ingress's request span is named here.
    let names = ServiceNames::none().span("http", "ingress");
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("info,async_nats=warn"))
        .with(tars_observability::otel::span_layer(
            provider.tracer("tars-trace-test"),
            names,
        ));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let stack = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let caller = TraceContext::new_root();
    let trace_id = TraceId::from_hex(caller.trace_id()).unwrap();
    let submitted = post_traced(
        &stack,
        "/requests/",
        USER_TOKEN,
        &caller.header(),
        json!({"tenant_name": "genomics", "permission": "read_only", "justification": "analysis"}),
    )
    .await;
    let id = submitted["request_id"].as_str().unwrap().to_owned();
    // The approval is a second HTTP request of the same trace (the caller's next span).
    let approval = caller.child();
    post_traced(
        &stack,
        "/approvals/approve",
        ADMIN_TOKEN,
        &approval.header(),
        json!({"request_id": id}),
    )
    .await;
    wait_status(&stack, &id, "applied").await;

    // The spans of the last hops (the Slack update after the grant) end shortly after.
    let spans = eventually(
        Duration::from_secs(30),
        "every service's spans in the trace",
        || {
            let provider = &provider;
            let exporter = &exporter;
            async move {
                provider.force_flush().unwrap();
                let all = exporter.get_finished_spans().unwrap();
                let traced: Vec<&SpanData> = all
                    .iter()
                    .filter(|s| s.span_context.trace_id() == trace_id)
                    .collect();
                missing(&traced).is_empty().then(|| all.clone())
            }
        },
    )
    .await;
    let traced: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect();
    assert_eq!(missing(&traced), Vec::<String>::new());

    // Both HTTP requests continue the caller's spans: they are children of the remote
    // parents the two traceparents named.
    let http: Vec<&&SpanData> = traced.iter().filter(|s| s.name == "http").collect();
    for parent in [caller.span_id(), approval.span_id()] {
        let parent = SpanId::from_hex(parent).unwrap();
        assert!(
            http.iter()
                .any(|s| s.parent_span_id == parent && s.parent_span_is_remote),
            "no HTTP span descends from the caller's span {parent:?}: {http:#?}"
        );
    }
    // Every span of the trace names its service, except the relay's (the relay publishes
    // for whichever process's store wrote, so in one process it is nobody's in particular).
    for s in &traced {
        if s.name != "relay" {
            assert!(attr(s, "service").is_some(), "{} names no service", s.name);
        }
    }
    // The request's message on Slack and its grant are what the trace shows, and the
    // governance API received the trace with the grant.
    assert!(!stack.slack.messages().is_empty());
    let grants: Vec<_> = stack
        .governance
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect();
    assert_eq!(grants.len(), 1);
    let sent = grants[0]
        .traceparent
        .as_deref()
        .expect("the grant carried no traceparent");
    assert_eq!(
        sent.split('-').nth(1),
        Some(caller.trace_id()),
        "the grant's traceparent {sent} is not the request's trace"
    );
    drop(stack);
    provider.shutdown().unwrap();
}
