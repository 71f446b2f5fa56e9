//! Waiting out an outage: one gate per dependency a worker calls.
//!
//! When Slack or the governance API does not answer (a timeout, a refused connection, a
//! 5xx, a 429), the message that found out is not a failed attempt: the worker keeps it
//! (in-progress acks, no delivery spent) and waits. Every message of the worker that meets
//! the same outage waits at the same gate: one of them, the probe, tries again after a
//! delay that doubles up to a cap (with jitter); the others wait until the probe gets an
//! answer. So an hour-long outage costs one call a minute, not one per message, and when
//! it ends the waiting messages go on together instead of after their own backoffs.
//!
//! The gate is per process: replicas probe on their own (a handful of calls a minute in
//! all), which keeps the design free of shared state beyond the stream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

// Tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;

use tokio::sync::watch;
use tracing::{info, warn};

use tars_observability::metrics::Metrics;

/// How long the probe waits before trying again: `base * 2^n`, capped, with up to a fifth
/// more of jitter so replicas' probes drift apart.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    /// The wait after the first failed call.
    pub base: Duration,
    /// The longest wait between two probes.
    pub cap: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl WaitPolicy {
    /// The wait after `probes` failed probes (0: the outage was just found), with
    /// `jitter` in `[0, 1)` adding up to a fifth.
    pub fn delay(&self, probes: u32, jitter: f64) -> Duration {
        let plain = self
            .base
            .checked_mul(2u32.saturating_pow(probes.min(31)))
            .unwrap_or(self.cap)
            .min(self.cap);
        plain.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 5.0)
    }
}

/// A number in `[0, 1)` from the clock's low bits: enough to spread probes apart.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

/// One outage as this process sees it.
#[derive(Debug)]
struct Outage {
    since: Instant,
    /// Failed probes so far.
    probes: u32,
    /// No probe before this.
    next_probe: Instant,
    /// A message is probing now: the others wait for its answer.
    probing: bool,
}

/// What a waiting message does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The dependency answered again: go on.
    Resume,
    /// This message is the probe: try once; report with [`Outages::failed`] (as the
    /// probe) or [`Outages::recovered`].
    Probe,
}

/// The gates of one worker's dependencies.
pub struct Outages {
    worker: &'static str,
    policy: WaitPolicy,
    metrics: Metrics,
    state: Mutex<HashMap<&'static str, Outage>>,
    /// Bumped on every change, so waiters look again.
    changed: watch::Sender<u64>,
}

impl Outages {
    /// The gates of `worker`, probing on `policy`.
    pub fn new(worker: &'static str, policy: WaitPolicy, metrics: Metrics) -> Self {
        Self {
            worker,
            policy,
            metrics,
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Outage>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A message found `dep` out (`probe`: it was the probe). The first report starts
    /// the outage (a log line, the gauge); a failed probe pushes the next one back.
    pub fn failed(&self, dep: &'static str, probe: bool, reason: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        match state.get_mut(dep) {
            None => {
                state.insert(
                    dep,
                    Outage {
                        since: now,
                        probes: 0,
                        next_probe: now + self.policy.delay(0, jitter()),
                        probing: false,
                    },
                );
                let unix = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.metrics
                    .dependency_waiting_since
                    .with_label_values(&[self.worker, dep])
                    .set(unix);
                warn!(worker = self.worker, dependency = dep, %reason, "waiting on {dep}: it does not answer; messages are held, not failed");
            }
            Some(o) if probe => {
                o.probes = o.probes.saturating_add(1);
                o.next_probe = now + self.policy.delay(o.probes, jitter());
                o.probing = false;
                tracing::debug!(worker = self.worker, dependency = dep, probes = o.probes, waiting_for = ?o.since.elapsed(), %reason, "{dep} still does not answer");
            }
            Some(_) => {}
        }
        drop(state);
        self.bump();
    }

    /// A message that waited on `dep` got an answer: the outage is over for everyone.
    pub fn recovered(&self, dep: &'static str) {
        let ended = self.lock().remove(dep);
        if let Some(o) = ended {
            self.metrics
                .dependency_waiting_since
                .with_label_values(&[self.worker, dep])
                .set(0.0);
            info!(
                worker = self.worker,
                dependency = dep,
                waited_s = o.since.elapsed().as_secs(),
                probes = o.probes,
                "{dep} answers again"
            );
            self.bump();
        }
    }

    /// A probe that ended without an answer either way (its process is stopping): another
    /// message probes in its place.
    pub fn probe_abandoned(&self, dep: &'static str) {
        if let Some(o) = self.lock().get_mut(dep) {
            o.probing = false;
        }
        self.bump();
    }

    /// Waits for this message's turn at `dep`'s gate.
    pub async fn turn(&self, dep: &'static str) -> Turn {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let until = {
                let mut state = self.lock();
                let Some(o) = state.get_mut(dep) else {
                    return Turn::Resume;
                };
                let now = Instant::now();
                if !o.probing && now >= o.next_probe {
                    o.probing = true;
                    return Turn::Probe;
                }
                (!o.probing).then_some(o.next_probe)
            };
            match until {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = rx.changed() => {}
                },
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }

    /// Whether `dep` is being waited out now.
    pub fn is_out(&self, dep: &str) -> bool {
        self.lock().contains_key(dep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_at_most_a_fifth_of_jitter() {
        let p = WaitPolicy::default();
        assert_eq!(p.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(3, 0.0), Duration::from_secs(8));
        assert_eq!(p.delay(6, 0.0), Duration::from_secs(60));
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(60));
        assert!(p.delay(6, 0.999) <= Duration::from_secs(72));
        assert!(p.delay(6, 0.5) > Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn one_message_probes_while_the_others_wait_for_its_answer() {
        let gates = std::sync::Arc::new(Outages::new(
            "test",
            WaitPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(4),
            },
            Metrics::new(),
        ));
        gates.failed("slack", false, "down");
        gates.failed("slack", false, "down");
        // Three messages wait; exactly one becomes the probe once the delay has passed.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = gates.clone();
                tokio::spawn(async move { g.turn("slack").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let finished: Vec<_> = waiters.iter().filter(|w| w.is_finished()).collect();
        assert_eq!(finished.len(), 1, "one probe, the others still waiting");
        // The probe got an answer: every waiter resumes.
        gates.recovered("slack");
        let mut turns = Vec::new();
        for w in waiters {
            turns.push(w.await.expect("waiter"));
        }
        assert_eq!(turns.iter().filter(|t| **t == Turn::Probe).count(), 1);
        assert_eq!(turns.iter().filter(|t| **t == Turn::Resume).count(), 2);
        assert!(!gates.is_out("slack"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_pushes_the_next_one_back() {
        let gates = Outages::new(
            "test",
            WaitPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            Metrics::new(),
        );
        gates.failed("governance", false, "503");
        let start = tokio::time::Instant::now();
        let mut probes = 0;
        // Five probes wait 1 + 2 + 4 + 8 + 16 s for their turns (plus at most a fifth of
        // jitter): the waits double, not five times 1 s.
        while probes < 5 {
            assert_eq!(gates.turn("governance").await, Turn::Probe);
            probes += 1;
            gates.failed("governance", true, "503");
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(31), "{waited:?}");
        assert!(waited <= Duration::from_millis(37_200), "{waited:?}");
    }
}
