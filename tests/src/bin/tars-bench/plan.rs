//! How long and how large each part runs. `--smoke` swaps in short runs of the same code
//! (same processes, same checks, same failures), so CI proves the harness works without
//! paying for numbers; the numbers of a smoke run mean nothing.

use std::sync::OnceLock;
use std::time::Duration;

/// The durations and sizes of every part.
#[derive(Debug)]
pub struct Plan {
    /// A smoke run: short, not a measurement.
    pub smoke: bool,
    /// wrk's measured run (whole seconds: wrk's `-d`).
    pub wrk_secs: u32,
    /// wrk's warm-up pass, longer than the measured run so it covers every token the run
    /// uses (its answers, 422s, are no slower than the run's 202s).
    pub wrk_warmup_secs: u32,
    /// The raw JetStream KV create figure beside each ingress run.
    pub kv_create_secs: u64,
    /// One-at-a-time samples of submit → posted and approve → applied.
    pub latency_samples: usize,
    /// Lifecycles of the sustained end-to-end run.
    pub lifecycles: usize,
    /// Stored finished requests the growth part measures at.
    pub growth_sizes: &'static [usize],
    /// Timed sequential calls per endpoint at each size.
    pub growth_calls: usize,
    /// The quiet period after start-up in which each process's idle CPU is measured.
    pub idle: Duration,
}

/// What `make bench` measures.
const FULL: Plan = Plan {
    smoke: false,
    wrk_secs: 10,
    wrk_warmup_secs: 12,
    kv_create_secs: 5,
    latency_samples: 100,
    lifecycles: 2_000,
    growth_sizes: &[1_000, 10_000, 100_000],
    growth_calls: 200,
    idle: Duration::from_secs(5),
};

/// `--smoke`: every part, briefly.
const SMOKE: Plan = Plan {
    smoke: true,
    wrk_secs: 2,
    wrk_warmup_secs: 3,
    kv_create_secs: 1,
    latency_samples: 10,
    lifecycles: 50,
    growth_sizes: &[1_000],
    growth_calls: 20,
    idle: Duration::from_secs(1),
};

/// Deadlines are the same in both modes: a smoke run fails where a full one would.
/// How long a process may take from spawn to `/readyz` answering 200.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long one latency sample may take per step (posted, applied, message updated).
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the sustained run's lifecycles may take to complete after the last approval.
pub const COMPLETION_DEADLINE: Duration = Duration::from_secs(120);

static PLAN: OnceLock<&'static Plan> = OnceLock::new();

/// Chooses the plan once, at start-up.
pub fn choose(smoke: bool) {
    let _ = PLAN.set(if smoke { &SMOKE } else { &FULL });
}

/// The plan chosen at start-up (the full one if none was).
pub fn get() -> &'static Plan {
    PLAN.get().copied().unwrap_or(&FULL)
}
