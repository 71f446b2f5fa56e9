//! Fault injection shared by the stand-ins: the next N calls fail, are rate limited, or
//! every call is slowed down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One injected failure.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with this JSON body.
    Status(u16, serde_json::Value),
    /// Answer 429 with `Retry-After` seconds.
    RateLimited(u64),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Fault>,
    latency: Duration,
    /// At most this many calls per second pass; the rest get 429 (Slack's real behaviour
    /// for bursts of `chat.postMessage`).
    per_second: Option<usize>,
    recent: VecDeque<std::time::Instant>,
    rate_limited: usize,
    /// Faults for the next calls of one method only (before the shared queue).
    by_method: std::collections::HashMap<String, VecDeque<Fault>>,
}

/// The faults of one stand-in; cheap to clone.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Inner>>);

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` calls answer `status` with the service's usual error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_next_with(n, status, serde_json::json!({"detail": "injected failure"}));
    }

    /// The next `n` calls answer `status` with `body`.
    pub fn fail_next_with(&self, n: usize, status: u16, body: serde_json::Value) {
        let mut g = self.lock();
        for _ in 0..n {
            g.queue.push_back(Fault::Status(status, body.clone()));
        }
    }

    /// The next `n` calls answer 429 with `Retry-After: secs`.
    pub fn rate_limit_next(&self, n: usize, secs: u64) {
        let mut g = self.lock();
        for _ in 0..n {
            g.queue.push_back(Fault::RateLimited(secs));
        }
    }

    /// The next `n` calls of `method` (a Slack Web API method) meet `fault`; other
    /// methods are not affected.
    pub fn method_next(&self, method: &str, n: usize, fault: Fault) {
        let mut g = self.lock();
        let q = g.by_method.entry(method.to_owned()).or_default();
        for _ in 0..n {
            q.push_back(fault.clone());
        }
    }

    /// Every call waits this long first.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// At most `n` calls per second succeed; the others get 429 with `Retry-After: 1`.
    pub fn limit_rate(&self, n: usize) {
        self.lock().per_second = Some(n);
    }

    /// How many calls the rate limit refused.
    pub fn rate_limited(&self) -> usize {
        self.lock().rate_limited
    }

    /// Applies latency, then the next fault if any, as the response to send instead.
    pub async fn apply(&self, rate_limited_body: serde_json::Value) -> Option<Response> {
        self.apply_to("", rate_limited_body).await
    }

    /// [`Faults::apply`] for a call of `method`: its own faults first.
    pub async fn apply_to(
        &self,
        method: &str,
        rate_limited_body: serde_json::Value,
    ) -> Option<Response> {
        let (latency, fault) = {
            let mut g = self.lock();
            let mut fault = g
                .by_method
                .get_mut(method)
                .and_then(|q| q.pop_front())
                .or_else(|| g.queue.pop_front());
            if let (None, Some(limit)) = (&fault, g.per_second) {
                let now = std::time::Instant::now();
                while g
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    g.recent.pop_front();
                }
                if g.recent.len() >= limit {
                    g.rate_limited += 1;
                    fault = Some(Fault::RateLimited(1));
                } else {
                    g.recent.push_back(now);
                }
            }
            (g.latency, fault)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault? {
            Fault::Status(code, body) => Some(
                (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    axum::Json(body),
                )
                    .into_response(),
            ),
            Fault::RateLimited(secs) => Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", secs.to_string())],
                    axum::Json(rate_limited_body),
                )
                    .into_response(),
            ),
        }
    }
}
