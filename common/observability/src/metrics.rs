//! The Prometheus metrics of a TARS process, all in one registry per process.
//!
//! One struct holds every family so that a service, or `tars-dev` running four services in
//! one process, registers each name once, and tests can create an isolated instance per
//! service under test. Names and labels are the contract in `docs/architecture.md`.

use std::sync::Arc;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric family TARS exports; cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The families, public so call sites read like `metrics.worker_messages.with_label_values(..)`.
pub struct Inner {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `tars_http_requests_total{route,method,status}`.
    pub http_requests: IntCounterVec,
    /// `tars_http_request_duration_seconds{route,method}`.
    pub http_duration: HistogramVec,
    /// `tars_events_published_total{type}`.
    pub events_published: IntCounterVec,
    /// `tars_worker_messages_total{worker,outcome}`; outcome = ack | retry | dead_letter.
    pub worker_messages: IntCounterVec,
    /// `tars_worker_handle_duration_seconds{worker}`.
    pub worker_duration: HistogramVec,
    /// `tars_consumer_pending{worker}`: messages the consumer has not delivered yet.
    pub consumer_pending: IntGaugeVec,
    /// `tars_dead_letters_total{worker}`.
    pub dead_letters: IntCounterVec,
    /// `tars_external_requests_total{target,status}`; status is the HTTP code or an error kind.
    pub external_requests: IntCounterVec,
    /// `tars_external_retries_total{target}`: in-process retries of external calls.
    pub external_retries: IntCounterVec,
    /// `tars_requests_total{status}`: transitions into each request status.
    pub requests: IntCounterVec,
    /// `tars_slack_rate_limited_total{method}`: Slack answers that said "not yet" (429 or
    /// `ratelimited`); each is waited out, never counted as a failed delivery.
    pub slack_rate_limited: IntCounterVec,
    /// `tars_slack_wait_seconds_total{reason}`: time calls spent waiting for a channel,
    /// `reason` = `paused` (after a 429) or `paced` (`SLACK_MAX_POSTS_PER_SECOND`).
    pub slack_wait_seconds: CounterVec,
    /// `tars_store_reads_total{kind}`: what the request store read, `kind` = `record` (a
    /// record fetched), `index_entry` (an index key listed) or `event` (an audit event
    /// read for a history). The evidence that a call's cost does not grow with history.
    pub store_reads: IntCounterVec,
    /// `tars_oldest_pending_request_seconds`: the age of the oldest request still waiting
    /// for a decision, as of the decision worker's last sweep (0 when none waits).
    pub oldest_pending_request: prometheus::Gauge,
    /// `tars_notifications_total{kind}`: reminders started (`reminder`), expiry warnings
    /// started (`expiry_warning`), direct messages sent (`dm`) and thread replies posted
    /// (`thread`).
    pub notifications: prometheus::IntCounterVec,
    /// `tars_dependency_waiting_since_seconds{worker,dependency}`: when (Unix seconds) the
    /// worker began waiting out an outage of `dependency` (`slack`, `governance`, `nats`),
    /// 0 while it answers. An outage is waited out, never failed, so this is where it shows.
    pub dependency_waiting_since: prometheus::GaugeVec,
    /// `tars_worker_waiting_messages{worker}`: messages a worker holds while they wait (on
    /// a dependency, or for another holder's turn) without spending a delivery.
    pub worker_waiting: IntGaugeVec,
    /// `tars_slack_duplicate_risk_total`: posts sent although an earlier one may have
    /// landed, because Slack refused the look-up that would have told (a missing scope).
    pub slack_duplicate_risk: prometheus::IntCounter,
    /// `tars_unreadable_total{consumer}`: messages or record revisions this process could
    /// not read (a newer version's, during a rolling upgrade, or damaged), handed back for
    /// a process that can, never acknowledged away.
    pub unreadable: IntCounterVec,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    h
}

impl Metrics {
    /// A fresh registry with every family registered (names are constants, so the panics
    /// above can only fire on a programming error caught by any test).
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let inner = Inner {
            http_requests: counter(
                r,
                "tars_http_requests_total",
                "HTTP requests answered",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                r,
                "tars_http_request_duration_seconds",
                "HTTP request latency",
                &["route", "method"],
            ),
            events_published: counter(
                r,
                "tars_events_published_total",
                "Events acknowledged by TARS_EVENTS",
                &["type"],
            ),
            worker_messages: counter(
                r,
                "tars_worker_messages_total",
                "Messages settled by workers",
                &["worker", "outcome"],
            ),
            worker_duration: histogram(
                r,
                "tars_worker_handle_duration_seconds",
                "Time a worker's handler spent on one message",
                &["worker"],
            ),
            consumer_pending: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tars_consumer_pending",
                        "Messages not yet delivered to the worker's consumer (lag)",
                    ),
                    &["worker"],
                )
                .unwrap_or_else(|e| panic!("tars_consumer_pending: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("tars_consumer_pending: {e}"));
                g
            },
            store_reads: counter(
                r,
                "tars_store_reads_total",
                "Request-store reads: records, index entries and audit events",
                &["kind"],
            ),
            oldest_pending_request: {
                let g = prometheus::Gauge::new(
                    "tars_oldest_pending_request_seconds",
                    "Age of the oldest pending request at the last expiry sweep",
                )
                .unwrap_or_else(|e| panic!("tars_oldest_pending_request_seconds: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("tars_oldest_pending_request_seconds: {e}"));
                g
            },
            notifications: counter(
                r,
                "tars_notifications_total",
                "Reminders and expiry warnings started, direct messages and thread replies sent",
                &["kind"],
            ),
            dependency_waiting_since: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "tars_dependency_waiting_since_seconds",
                        "When the worker began waiting out an outage of the dependency (Unix seconds; 0: it answers)",
                    ),
                    &["worker", "dependency"],
                )
                .unwrap_or_else(|e| panic!("tars_dependency_waiting_since_seconds: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("tars_dependency_waiting_since_seconds: {e}"));
                g
            },
            worker_waiting: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tars_worker_waiting_messages",
                        "Messages held while they wait on a dependency or a turn (no delivery spent)",
                    ),
                    &["worker"],
                )
                .unwrap_or_else(|e| panic!("tars_worker_waiting_messages: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("tars_worker_waiting_messages: {e}"));
                g
            },
            slack_duplicate_risk: {
                let c = prometheus::IntCounter::new(
                    "tars_slack_duplicate_risk_total",
                    "Posts sent although an earlier one may have landed (Slack refused the look-up)",
                )
                .unwrap_or_else(|e| panic!("tars_slack_duplicate_risk_total: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("tars_slack_duplicate_risk_total: {e}"));
                c
            },
            unreadable: counter(
                r,
                "tars_unreadable_total",
                "Messages or revisions this process could not read, left for one that can",
                &["consumer"],
            ),
            dead_letters: counter(
                r,
                "tars_dead_letters_total",
                "Messages moved to TARS_DLQ",
                &["worker"],
            ),
            external_requests: counter(
                r,
                "tars_external_requests_total",
                "Calls to Slack, KBase auth and the governance API",
                &["target", "status"],
            ),
            external_retries: counter(
                r,
                "tars_external_retries_total",
                "In-process retries of calls to external services",
                &["target"],
            ),
            requests: counter(
                r,
                "tars_requests_total",
                "Requests entering each status",
                &["status"],
            ),
            slack_rate_limited: counter(
                r,
                "tars_slack_rate_limited_total",
                "Slack answers asking to slow down (waited out, never a failed delivery)",
                &["method"],
            ),
            slack_wait_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "tars_slack_wait_seconds_total",
                        "Seconds Slack calls waited for their channel (paused after a 429, or paced)",
                    ),
                    &["reason"],
                )
                .unwrap_or_else(|e| panic!("tars_slack_wait_seconds_total: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("tars_slack_wait_seconds_total: {e}"));
                c
            },
            registry,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Counts a call to `target` that got no HTTP answer, and names the failure
    /// (`timeout` or `error`) for the caller's error message.
    pub fn transport_failure(&self, target: &str, timed_out: bool) -> &'static str {
        let kind = if timed_out { "timeout" } else { "error" };
        self.external(target, kind);
        kind
    }

    /// Counts one call to an external service with its outcome (`200`, `timeout`, ...).
    pub fn external(&self, target: &str, status: &str) {
        self.external_requests
            .with_label_values(&[target, status])
            .inc();
    }
}
