//! Per-user submission rate limit: a token bucket per username, in this process.
//!
//! Each ingress replica limits on its own, so N replicas allow up to N times the rate;
//! that is enough to stop a runaway notebook loop, which is what the limit is for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tars_domain::Username;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every user seen recently.
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<Username, Bucket>>,
}

impl RateLimiter {
    /// `per_minute` submissions a minute, with bursts of up to `per_minute`.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&self, user: &Username) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(120));
        }
        let b = buckets.entry(user.clone()).or_insert(Bucket {
            tokens: self.per_minute,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(self.per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - b.tokens) / rate).ceil().max(1.0),
            ))
        }
    }

    /// Gives a token back (the submission turned out to be a repeat of an open request).
    pub fn refund(&self, user: &Username) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(user) {
            b.tokens = (b.tokens + 1.0).min(self.per_minute);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_the_rate_and_refunds_return_tokens() {
        let l = RateLimiter::new(3);
        let u = Username::parse("alice").unwrap();
        for _ in 0..3 {
            l.take(&u).unwrap();
        }
        let wait = l.take(&u).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        l.refund(&u);
        assert!(l.take(&u).is_ok());
        assert!(l.take(&Username::parse("bob").unwrap()).is_ok());
    }
}
