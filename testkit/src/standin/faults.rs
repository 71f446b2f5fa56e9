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

    /// Every call waits this long first.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// Applies latency, then the next fault if any, as the response to send instead.
    pub async fn apply(&self, rate_limited_body: serde_json::Value) -> Option<Response> {
        let (latency, fault) = {
            let mut g = self.lock();
            (g.latency, g.queue.pop_front())
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
