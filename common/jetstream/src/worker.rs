//! The worker runtime shared by the notifier, decision and governance-applier workers.
//!
//! One function, [`settle`], owns the fate of every message: ack, retry by `nak` with a
//! delay computed from the delivery count, or dead-letter (publish to `TARS_DLQ`, wait for
//! the ack, then `Term`). Handlers only say what happened ([`Outcome`]); they never touch
//! acks. The facts this rests on (see `docs/architecture.md`):
//!
//! * the consumer's `backoff` is not applied to `nak`, so delays are computed here;
//! * the server's max-deliveries advisory is fire-and-forget, so dead-lettering happens on
//!   the main path, and the consumer's own `max_deliver` is unlimited: a message whose last
//!   delivery is lost to a crash comes back and is dead-lettered instead of vanishing;
//! * prefetched messages' ack timers run while they wait, so each pull asks for at most
//!   as many messages as there are free handler slots.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::topology::{DLQ_STREAM, Topology, WorkerKind};
use crate::wait::{Outages, Turn, WaitPolicy};
use tars_domain::events::Envelope;
use tars_observability::metrics::Metrics;
use tars_observability::trace::{self, TraceContext};

/// Dead-letter header: why the message was given up on.
pub const HDR_DLQ_REASON: &str = "Tars-Dlq-Reason";
/// Dead-letter header: which worker gave up.
pub const HDR_DLQ_WORKER: &str = "Tars-Dlq-Worker";
/// Dead-letter header: how many deliveries the message had.
pub const HDR_DLQ_DELIVERIES: &str = "Tars-Dlq-Deliveries";
/// Dead-letter header: the subject the message was published on.
pub const HDR_ORIGINAL_SUBJECT: &str = "Tars-Original-Subject";
/// Dead-letter header: the message's sequence in `TARS_EVENTS`.
pub const HDR_ORIGINAL_SEQ: &str = "Tars-Original-Seq";

/// What a handler decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (including "nothing to do"): acknowledge.
    Ack,
    /// A transient failure: deliver again later, after `delay` if given (e.g. Slack's
    /// `Retry-After`), else after the exponential backoff for this delivery.
    Retry {
        /// For the log and, on the last delivery, the dead letter.
        reason: String,
        /// An explicit delay that overrides the backoff.
        delay: Option<Duration>,
    },
    /// A permanent failure: move the message to the dead-letter stream.
    DeadLetter {
        /// Why, recorded in `Tars-Dlq-Reason`.
        reason: String,
    },
    /// Not a failure: the message must wait (a dependency is out, or another holder has
    /// its turn). The runtime keeps it (in-progress acks; no delivery is spent, so a wait
    /// never leads to a dead letter) and runs the handler again when its turn comes.
    Wait {
        /// What it waits for.
        on: Waiting,
        /// For the log.
        reason: String,
    },
}

/// What a message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A dependency that does not answer (no answer, a timeout, a 5xx, a 429): `slack`,
    /// `governance` or `nats`. Every message of the worker waiting on it shares one gate
    /// ([`crate::wait::Outages`]): one probes, the others wait for its answer.
    Outage(&'static str),
    /// Another holder has this message's turn (the notifier's posting lease): look again
    /// after at most this long.
    Turn(Duration),
}

impl Outcome {
    /// A transient failure with the default backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            delay: None,
        }
    }

    /// A permanent failure.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self::DeadLetter {
            reason: reason.into(),
        }
    }

    /// What a store error means for a message: NATS not answering is an outage (waited
    /// out), contention is retried, anything else dead-letters; a record that does not
    /// exist is `missing`'s call (a stale read to retry, or an order for nothing).
    pub fn of_store_error(
        e: crate::store::StoreError,
        missing: impl FnOnce(&tars_domain::RequestId) -> Self,
    ) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound(id) => missing(&id),
            e @ StoreError::Unavailable(_) => Self::outage("nats", e.to_string()),
            e if e.is_transient() => Self::retry(e.to_string()),
            e => Self::dead_letter(e.to_string()),
        }
    }

    /// An outage of `dependency`: wait it out.
    pub fn outage(dependency: &'static str, reason: impl Into<String>) -> Self {
        Self::Wait {
            on: Waiting::Outage(dependency),
            reason: reason.into(),
        }
    }

    /// Another holder's turn: look again after at most `within`.
    pub fn wait_turn(within: Duration, reason: impl Into<String>) -> Self {
        Self::Wait {
            on: Waiting::Turn(within),
            reason: reason.into(),
        }
    }
}

/// One delivery of an event, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The decoded event.
    pub envelope: Envelope,
    /// The subject it was published on.
    pub subject: String,
    /// Which delivery this is (1 = first).
    pub delivered: u64,
    /// True when a `Retry` now would dead-letter instead, so a handler can record the
    /// failure in the request's state first.
    pub last_attempt: bool,
    /// The message's sequence in `TARS_EVENTS`: stable across redeliveries, new for a
    /// replayed dead letter, so it makes good `Nats-Msg-Id`s for what a handler publishes.
    pub stream_seq: u64,
}

/// The work a worker does per event. Handlers must be idempotent: a message can be
/// delivered more than once, and the KV compare-and-set is what keeps state right.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;
}

/// Exponential retry delays: `base * 2^(delivery-1)`, capped.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay after the first failed delivery.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before delivery `delivered + 1`.
    pub fn delay(&self, delivered: u64) -> Duration {
        let exp = delivered.saturating_sub(1).min(32) as u32;
        self.base
            .checked_mul(2u32.saturating_pow(exp))
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// Whether the worker can pull from its consumer, for `/readyz`: a connected socket is not
/// enough (the consumer may be gone, or JetStream may be refusing pulls). It records when
/// the current run of failed pulls began; a good pull ends it.
#[derive(Debug, Clone, Default)]
pub struct PullHealth(Arc<std::sync::Mutex<Option<Instant>>>);

impl PullHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a good pull (or start): the run of failures is over.
    pub fn ok(&self) {
        *self.lock() = None;
    }

    /// Records a failed pull (or a start not yet made); returns how long pulls have been
    /// failing.
    pub fn failed(&self) -> Duration {
        let mut since = self.lock();
        since.get_or_insert_with(Instant::now).elapsed()
    }

    /// `Err` when pulls have been failing for longer than `tolerance`.
    pub fn check(&self, tolerance: Duration) -> Result<(), String> {
        match *self.lock() {
            Some(since) if since.elapsed() > tolerance => Err(format!(
                "cannot pull from the consumer for {} s",
                since.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }
}

/// How one worker process consumes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Handlers running at once (`WORKER_CONCURRENCY`), and the largest pull batch.
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered (`WORKER_MAX_DELIVER`).
    pub max_deliver: u64,
    /// Retry delays.
    pub retry: RetryPolicy,
    /// How often a message waiting out an outage probes the dependency.
    pub wait: WaitPolicy,
    /// How long a message this version cannot read waits before it is delivered again.
    pub unreadable_delay: Duration,
    /// How long a pull waits for messages; also bounds how long shutdown waits for a pull.
    pub pull_expires: Duration,
    /// How long shutdown lets running handlers finish before nak-ing them.
    pub shutdown_grace: Duration,
    /// How often an in-progress ack extends a long-running handler's `ack_wait` (never
    /// less often than a third of the consumer's `ack_wait`).
    pub progress_interval: Duration,
    /// Shared with the readiness probe.
    pub health: PullHealth,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            max_deliver: 10,
            retry: RetryPolicy::default(),
            wait: WaitPolicy::default(),
            unreadable_delay: UNREADABLE_DELAY,
            pull_expires: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            progress_interval: Duration::from_secs(10),
            health: PullHealth::default(),
        }
    }
}

/// Why a worker stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The durable consumer does not exist and could not be found.
    #[error("consumer {name}: {message}")]
    Consumer {
        /// Which consumer.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
}

struct Shared<H> {
    kind: WorkerKind,
    handler: Arc<H>,
    cfg: WorkerConfig,
    js: jetstream::Context,
    metrics: Metrics,
    /// The topology and the consumer, to declare the consumer again if pulls keep failing.
    topology: Topology,
    consumer: PullConsumer,
    /// Fired when the shutdown grace has run out: running handlers are abandoned and their
    /// messages nak-ed so another replica takes them at once.
    hard_stop: CancellationToken,
    /// This worker's series, looked up once instead of hashed per message.
    series: Series,
    /// The gates of the dependencies this worker's messages wait on.
    outages: Outages,
    /// Shutdown has begun: waiting messages are handed back at once.
    stopping: CancellationToken,
}

/// The metric series a worker moves for every message.
struct Series {
    acked: prometheus::IntCounter,
    retried: prometheus::IntCounter,
    waited: prometheus::IntCounter,
    waiting: prometheus::IntGauge,
    duration: prometheus::Histogram,
}

impl Series {
    fn new(metrics: &Metrics, worker: &str) -> Self {
        // Series an alert reads exist from the start, at zero: `increase()` cannot see a
        // series go from absent to 1, so a process's first dead letter would never page.
        metrics.dead_letters.with_label_values(&[worker]);
        metrics
            .worker_messages
            .with_label_values(&[worker, "dead_letter"]);
        metrics.unreadable.with_label_values(&[worker]);
        Self {
            acked: metrics.worker_messages.with_label_values(&[worker, "ack"]),
            retried: metrics
                .worker_messages
                .with_label_values(&[worker, "retry"]),
            waited: metrics.worker_messages.with_label_values(&[worker, "wait"]),
            waiting: metrics.worker_waiting.with_label_values(&[worker]),
            duration: metrics.worker_duration.with_label_values(&[worker]),
        }
    }
}

/// Runs `handler` on `kind`'s durable consumer until `shutdown` fires; then stops pulling,
/// lets in-flight handlers finish (or naks them after the grace period) and returns.
pub async fn run<H: Handler>(
    kind: WorkerKind,
    topology: Topology,
    handler: H,
    cfg: WorkerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // The topology was just declared, but on a cluster still electing leaders (or a busy
    // one) the look-up can time out: ride that out like any other call. A consumer or
    // stream that is not there is an answer, not an outage: an error at once.
    let consumer: PullConsumer = crate::retry::ride_out(
        "consumer look-up",
        || topology.events.get_consumer(kind.name),
        |e: &async_nats::Error| {
            use jetstream::context::{ConsumerInfoError, ConsumerInfoErrorKind as Kind};
            matches!(
                e.downcast_ref::<ConsumerInfoError>().map(|e| e.kind()),
                Some(Kind::TimedOut | Kind::NoResponders | Kind::Offline | Kind::Request)
            )
        },
    )
    .await
    .map_err(|e| WorkerError::Consumer {
        name: kind.name,
        message: e.to_string(),
    })?;
    let concurrency = cfg.concurrency.max(1);
    // In-progress acks must come well inside the consumer's ack_wait, whatever it is.
    let ack_wait = consumer.cached_info().config.ack_wait;
    let mut cfg = cfg;
    let cfg_wait = cfg.wait;
    if !ack_wait.is_zero() {
        cfg.progress_interval = cfg.progress_interval.min(ack_wait / 3);
    }
    let shared = Arc::new(Shared {
        kind,
        handler: Arc::new(handler),
        cfg,
        js: topology.js.clone(),
        metrics: metrics.clone(),
        topology: topology.clone(),
        consumer: consumer.clone(),
        hard_stop: CancellationToken::new(),
        series: Series::new(&metrics, kind.name),
        outages: Outages::new(kind.name, cfg_wait, metrics.clone()),
        stopping: shutdown.clone(),
    });
    let slots = Arc::new(Semaphore::new(concurrency));
    let lag = tokio::spawn(report_lag(
        consumer.clone(),
        kind.name,
        topology.requests.clone(),
        metrics,
        shutdown.clone(),
    ));
    info!(worker = kind.name, concurrency, "worker started");

    let mut pull_failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(shared.cfg.pull_expires)
            .messages()
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                pull_failures += 1;
                pull_failed(&shared).await;
                let wait = Duration::from_millis(100 * 2u64.pow(pull_failures.min(5)));
                warn!(worker = kind.name, consumer = kind.name, error = %e, ?wait, "pull failed; NATS may be reconnecting");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        pull_failures = 0;
        // Read the batch in its own task so the next pull goes out as soon as a slot
        // frees, instead of after this batch ends: pulls overlap, but every pull still
        // holds the slots it asked for, so outstanding messages never exceed concurrency.
        tokio::spawn(read_batch(shared.clone(), batch, permits, shutdown.clone()));
    }

    info!(
        worker = kind.name,
        "worker stopping: waiting for in-flight messages"
    );
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(shared.cfg.shutdown_grace, slots.acquire_many(all)).await;
    if drained.is_err() {
        warn!(
            worker = kind.name,
            "shutdown grace over: nak-ing unfinished messages"
        );
        shared.hard_stop.cancel();
        let _ = slots.acquire_many(all).await;
    }
    lag.abort();
    info!(worker = kind.name, "worker stopped");
    Ok(())
}

/// How long pulls may fail before the worker declares its consumer again (it may have been
/// deleted, or lost with a stream).
const REDECLARE_AFTER: Duration = Duration::from_secs(2);

/// Records a failed pull; once pulls have failed for a while, declares the worker's
/// consumer again with the configuration it had, so a deleted consumer comes back instead
/// of leaving the worker idle.
async fn pull_failed<H>(shared: &Shared<H>) {
    if shared.cfg.health.failed() <= REDECLARE_AFTER {
        return;
    }
    let kind = shared.kind;
    let config = shared.consumer.cached_info().config.clone();
    // Resumes after the consumer's saved position, never from the stream's beginning.
    match crate::topology::declare_consumer(
        &shared.topology.events,
        &shared.topology.requests,
        config,
    )
    .await
    {
        Ok(_) => info!(
            worker = kind.name,
            consumer = kind.name,
            "consumer declared again"
        ),
        Err(e) => {
            warn!(worker = kind.name, consumer = kind.name, error = %e, "declaring the consumer again failed")
        }
    }
}

/// Hands each message of one pull to a handler task with one of the slots the pull was
/// made for; slots the server did not fill are freed when the pull ends.
async fn read_batch<H: Handler>(
    shared: Arc<Shared<H>>,
    mut batch: jetstream::consumer::pull::Batch,
    mut permits: Vec<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let mut received = 0usize;
    let mut failed = false;
    while let Some(next) = batch.next().await {
        match next {
            // A message pulled after shutdown began is handled like any other (its pull
            // holds a slot for it, and the drain waits for it). Handed back at once, it
            // landed in this same pull again (it still has room) and burnt a delivery
            // each time: 13 in two seconds, then the dead-letter queue.
            Ok(msg) if shared.hard_stop.is_cancelled() => {
                // The grace is over: hand it back, but only once this pull has expired,
                // so that another replica takes it instead of this pull.
                let _ = msg
                    .ack_with(AckKind::Nak(Some(shared.cfg.pull_expires)))
                    .await;
            }
            Ok(msg) => {
                received += 1;
                let Some(permit) = permits.pop() else {
                    // The server never sends more than asked; if it did, give it back.
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                tokio::spawn(process(shared.clone(), msg, permit));
            }
            Err(e) => {
                if received == 0 {
                    warn!(worker = shared.kind.name, consumer = shared.kind.name, error = %e, "pull failed");
                    failed = true;
                    pull_failed(&shared).await;
                    // Likely a NATS outage: hold the slots a moment so the pull loop
                    // does not spin while the client reconnects.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {},
                        _ = shutdown.cancelled() => {},
                    }
                }
                break;
            }
        }
    }
    if !failed {
        shared.cfg.health.ok();
    }
}

/// Refreshes `tars_consumer_pending{worker=name}` from consumer info until shutdown, and
/// saves the consumer's position (its ack floor) whenever it moved, so that a consumer
/// declared again resumes there.
pub async fn report_lag(
    mut consumer: PullConsumer,
    name: &'static str,
    requests: async_nats::jetstream::kv::Store,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let gauge = metrics.consumer_pending.with_label_values(&[name]);
    let mut saved = 0u64;
    loop {
        if let Ok(info) = consumer.info().await {
            gauge.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
            let floor = info.ack_floor.stream_sequence;
            if floor > saved {
                crate::topology::save_position(&requests, name, floor).await;
                saved = floor;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {},
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Handles one message from start to settlement, holding one concurrency slot.
async fn process<H: Handler>(
    shared: Arc<Shared<H>>,
    msg: jetstream::Message,
    _permit: OwnedSemaphorePermit,
) {
    let (delivered, stream_seq) = match msg.info() {
        Ok(i) => (u64::try_from(i.delivered).unwrap_or(1), i.stream_sequence),
        Err(_) => (1, 0),
    };
    let span = info_span!(
        "message",
        worker = shared.kind.name,
        subject = %msg.subject,
        delivery = delivered,
        stream_seq,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    // The message continues the trace of whatever caused it (an HTTP request, or the
    // message before), so everything it publishes carries the same trace id on.
    let trace = TraceContext::from_header(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(trace::TRACEPARENT))
            .map(|v| v.as_str()),
    );
    span.record("trace_id", trace.trace_id());
    let work = async move {
        let started = Instant::now();
        let outcome = match Envelope::decode(&msg.payload) {
            // A newer version's event (during a rolling upgrade), or a damaged one: left
            // for a process that can read it, never acknowledged away (Guarantee 9).
            Err(e) => {
                unreadable(&shared, &msg, &e.to_string()).await;
                return;
            }
            Ok(envelope) => {
                tracing::Span::current().record("request_id", envelope.request_id.as_str());
                if delivered > shared.cfg.max_deliver {
                    Outcome::dead_letter(format!(
                        "delivered {delivered} times, more than the limit of {}",
                        shared.cfg.max_deliver
                    ))
                } else {
                    let delivery = Delivery {
                        envelope,
                        subject: msg.subject.to_string(),
                        delivered,
                        last_attempt: delivered >= shared.cfg.max_deliver,
                        stream_seq,
                    };
                    match handle_waiting(&shared, &msg, delivery).await {
                        Some(o) => o,
                        None => return, // handed back at shutdown, already nak-ed
                    }
                }
            }
        };
        shared
            .series
            .duration
            .observe(started.elapsed().as_secs_f64());
        settle(&shared, &msg, delivered, stream_seq, outcome).await;
    };
    trace::scope(trace, work.instrument(span)).await
}

/// How long an unreadable message waits before it is delivered again (to whichever
/// replica pulls it: during a rolling upgrade, soon one that reads it).
pub const UNREADABLE_DELAY: Duration = Duration::from_secs(30);

/// Hands back a message this process cannot read, counted and logged.
async fn unreadable<H>(shared: &Shared<H>, msg: &jetstream::Message, why: &str) {
    shared
        .metrics
        .unreadable
        .with_label_values(&[shared.kind.name])
        .inc();
    warn!(error = %why, "a message this version cannot read: left for one that can");
    let _ = msg
        .ack_with(AckKind::Nak(Some(shared.cfg.unreadable_delay)))
        .await;
}

/// Runs the handler until it says something other than "wait": a message that waits is
/// held (in-progress acks, no delivery spent) until its turn comes, then handled again.
/// `None` if shutdown took it back.
async fn handle_waiting<H: Handler>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivery: Delivery,
) -> Option<Outcome> {
    // The outage this message waits on, and whether it is the gate's probe.
    let mut waiting_on: Option<(&'static str, bool)> = None;
    let mut turns: u32 = 0;
    loop {
        let outcome = match run_handler(shared, msg, delivery.clone()).await {
            Some(o) => o,
            None => {
                if let Some((dep, true)) = waiting_on {
                    shared.outages.probe_abandoned(dep);
                }
                return None;
            }
        };
        // Anything but the same outage again is an answer from the dependency (or a step
        // past it): it is back, for every message waiting on it. (A probe that stopped
        // at another wait and kept its gate closed left the others waiting for good.)
        if let Some((dep, _)) = waiting_on {
            let again =
                matches!(&outcome, Outcome::Wait { on: Waiting::Outage(d), .. } if *d == dep);
            if !again {
                shared.outages.recovered(dep);
                waiting_on = None;
            }
        }
        let Outcome::Wait { on, reason } = outcome else {
            return Some(outcome);
        };
        shared.series.waited.inc();
        shared.series.waiting.inc();
        let resumed = match on {
            Waiting::Outage(dep) => {
                let probe = waiting_on.is_some_and(|(d, p)| d == dep && p);
                shared.outages.failed(dep, probe, &reason);
                let turn = hold(shared, msg, shared.outages.turn(dep)).await;
                if let Some(turn) = turn {
                    waiting_on = Some((dep, turn == Turn::Probe));
                }
                turn.is_some()
            }
            Waiting::Turn(within) => {
                turns = turns.saturating_add(1);
                // Look again soon at first, then less often: the holder usually finishes
                // in moments, but may be waiting on Slack's pacing for minutes.
                let backoff = Duration::from_millis(50)
                    .saturating_mul(2u32.saturating_pow(turns.min(16)))
                    .min(Duration::from_secs(2));
                tracing::debug!(%reason, "waiting for another holder's turn");
                hold(shared, msg, tokio::time::sleep(backoff.min(within)))
                    .await
                    .is_some()
            }
        };
        shared.series.waiting.dec();
        if !resumed {
            // Stopping: hand it back after a pull's expiry, so another replica takes it
            // (the one delivery a restart costs).
            if let Some((dep, true)) = waiting_on {
                shared.outages.probe_abandoned(dep);
            }
            let _ = msg
                .ack_with(AckKind::Nak(Some(shared.cfg.pull_expires)))
                .await;
            shared.series.retried.inc();
            return None;
        }
    }
}

/// Runs `wait` while keeping `msg` (in-progress acks); `None` if shutdown began first.
async fn hold<H, T>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    wait: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(wait);
    let period = shared.cfg.progress_interval;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            done = &mut wait => return Some(done),
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            _ = shared.stopping.cancelled() => return None,
        }
    }
}

/// Runs the handler (a panic becomes a retry), sending in-progress acks while it runs;
/// `None` if shutdown abandoned it. The handler runs in the message's own task, inside
/// its span and trace: a task of its own per message cost a spawn for nothing but
/// catching panics, which `catch_unwind` does.
async fn run_handler<H: Handler>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivery: Delivery,
) -> Option<Outcome> {
    use futures::FutureExt;
    let work = std::panic::AssertUnwindSafe(shared.handler.handle(delivery)).catch_unwind();
    tokio::pin!(work);
    // The first in-progress ack is due one interval from now, not at once.
    let period = shared.cfg.progress_interval;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            done = &mut work => {
                return Some(done.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    error!(panic = %what, "handler panicked");
                    Outcome::retry(format!("handler panicked: {what}"))
                }));
            }
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            _ = shared.hard_stop.cancelled() => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                shared.series.retried.inc();
                return None;
            }
        }
    }
}

/// The one place a message's fate is decided.
async fn settle<H>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivered: u64,
    stream_seq: u64,
    outcome: Outcome,
) {
    let worker = shared.kind.name;
    let count = |outcome: &str| {
        shared
            .metrics
            .worker_messages
            .with_label_values(&[worker, outcome])
            .inc();
    };
    match outcome {
        Outcome::Ack => {
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "ack failed; the message will be redelivered");
            }
            shared.series.acked.inc();
        }
        Outcome::Retry { reason, delay } if delivered < shared.cfg.max_deliver => {
            let delay = delay.unwrap_or_else(|| shared.cfg.retry.delay(delivered));
            info!(%reason, ?delay, "retrying later");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                warn!(error = %e, "nak failed; the message will be redelivered after ack_wait");
            }
            count("retry");
        }
        Outcome::Retry { reason, .. } => {
            let reason = format!("gave up after {delivered} deliveries: {reason}");
            dead_letter(shared, msg, delivered, stream_seq, &reason).await;
        }
        Outcome::DeadLetter { reason } => {
            dead_letter(shared, msg, delivered, stream_seq, &reason).await;
        }
        // Waits end in the handler loop; one that reaches here (none does) is kept.
        Outcome::Wait { reason, .. } => {
            let delay = shared.cfg.retry.delay(1);
            info!(%reason, ?delay, "waiting: handing the message back");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            count("retry");
        }
    }
}

/// Publishes the message to `tars.dlq.<worker>.<request_id>` with the `Tars-*` headers,
/// waits for the stream's ack, then terminates the original. If the dead letter cannot be
/// stored, the original is nak-ed instead, so nothing is lost.
async fn dead_letter<H>(
    shared: &Shared<H>,
    msg: &jetstream::Message,
    delivered: u64,
    stream_seq: u64,
    reason: &str,
) {
    let worker = shared.kind.name;
    let request_id = msg
        .subject
        .rsplit('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    let mut headers = async_nats::HeaderMap::new();
    // Header values must be one line.
    let reason_line: String = reason
        .replace(['\r', '\n'], " ")
        .chars()
        .take(1000)
        .collect();
    headers.insert(HDR_DLQ_REASON, reason_line.as_str());
    headers.insert(HDR_DLQ_WORKER, worker);
    headers.insert(HDR_DLQ_DELIVERIES, delivered.to_string().as_str());
    headers.insert(HDR_ORIGINAL_SUBJECT, msg.subject.as_str());
    headers.insert(HDR_ORIGINAL_SEQ, stream_seq.to_string().as_str());
    headers.insert("Nats-Msg-Id", format!("dlq.{worker}.{stream_seq}").as_str());
    let subject = format!("tars.dlq.{worker}.{request_id}");
    let stored = match shared
        .js
        .publish_with_headers(subject, headers, msg.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => {
            warn!(%reason, "dead-lettered to {DLQ_STREAM}");
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                warn!(error = %e, "term failed; the message may be delivered once more");
            }
            shared
                .metrics
                .dead_letters
                .with_label_values(&[worker])
                .inc();
            shared
                .metrics
                .worker_messages
                .with_label_values(&[worker, "dead_letter"])
                .inc();
        }
        Err(e) => {
            error!(error = %e, %reason, "could not store the dead letter; nak-ing instead");
            let _ = msg
                .ack_with(AckKind::Nak(Some(shared.cfg.retry.delay(delivered))))
                .await;
            shared
                .metrics
                .worker_messages
                .with_label_values(&[worker, "retry"])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(4), Duration::from_secs(8));
        assert_eq!(p.delay(9), Duration::from_secs(256));
        assert_eq!(p.delay(10), Duration::from_secs(300));
        assert_eq!(p.delay(u64::MAX), Duration::from_secs(300));
    }
}
