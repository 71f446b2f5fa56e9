//! Token buckets per key, in this process: submissions and reads per user, failed
//! authentications per client address.
//!
//! Each ingress replica limits on its own, so N replicas allow up to N times the rate;
//! that is enough to stop a runaway notebook loop or a token-guessing client, which is
//! what the limits are for. Buckets idle for two minutes are dropped once more than
//! 100,000 keys are held, so memory stays bounded.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tars_domain::Username;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every key seen recently.
pub struct RateLimiter<K = Username> {
    per_minute: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` submissions a minute, with bursts of up to `per_minute`.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        self.with_bucket(key, true)
    }

    /// Says how long until `key` has a token again, without taking one.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.with_bucket(key, false)
    }

    fn with_bucket(&self, key: &K, take: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(120));
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.per_minute,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(self.per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            if take {
                b.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - b.tokens) / rate).ceil().max(1.0),
            ))
        }
    }

    /// Gives a token back (the submission turned out to be a repeat of an open request).
    pub fn refund(&self, key: &K) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(self.per_minute);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_the_rate_and_refunds_return_tokens() {
        let l: RateLimiter = RateLimiter::new(3);
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
        // Checking never spends.
        let addr: RateLimiter<std::net::IpAddr> = RateLimiter::new(1);
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        assert!(addr.check(&ip).is_ok() && addr.check(&ip).is_ok());
        addr.take(&ip).unwrap();
        assert!(addr.check(&ip).is_err());
    }
}
