//! The JetStream objects TARS needs, declared idempotently by every service at start.
//!
//! Any service may start first, several may start at once, and a restart must change
//! nothing: every declaration is a create-or-update with the same configuration, so the
//! second caller is a no-op and two callers racing both succeed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

/// The audit stream of every request and decision event.
pub const EVENTS_STREAM: &str = "TARS_EVENTS";
/// The dead-letter stream.
pub const DLQ_STREAM: &str = "TARS_DLQ";
/// The KV bucket of current request records.
pub const REQUESTS_BUCKET: &str = "TARS_REQUESTS";

/// One durable pull consumer of `TARS_EVENTS` and the subjects it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerKind {
    /// The durable name, also the worker's label in metrics and dead-letter subjects.
    pub name: &'static str,
    /// The subjects it consumes (besides its replays, [`WorkerKind::replay_subject`]).
    pub filter: &'static [&'static str],
}

/// Where replayed dead letters go: `tars.replay.<worker>.<original subject>`, taken only
/// by the worker that dead-lettered them (Guarantee 9).
pub const REPLAY_PREFIX: &str = "tars.replay";

impl WorkerKind {
    /// The subject a replay of this worker's dead letter first published on `original`
    /// is sent to (a replay of a replay keeps the first original subject).
    pub fn replay_subject(&self, original: &str) -> String {
        format!(
            "{REPLAY_PREFIX}.{}.{}",
            self.name,
            original_subject(original)
        )
    }

    /// Every subject the consumer takes: its own and its replays.
    pub fn subjects(&self) -> Vec<String> {
        let mut all: Vec<String> = self.filter.iter().map(|s| (*s).to_owned()).collect();
        all.push(format!("{REPLAY_PREFIX}.{}.>", self.name));
        all
    }

    /// The worker of this name, if any.
    pub fn named(name: &str) -> Option<Self> {
        WORKERS.into_iter().find(|k| k.name == name)
    }
}

/// The subject an event was first published on: `subject` itself, or what a replay
/// subject (`tars.replay.<worker>.<original>`) carries.
pub fn original_subject(subject: &str) -> &str {
    let mut rest = subject;
    while let Some(tail) = rest
        .strip_prefix(REPLAY_PREFIX)
        .and_then(|t| t.strip_prefix('.'))
    {
        match tail.split_once('.') {
            Some((_worker, original)) => rest = original,
            None => break,
        }
    }
    rest
}

/// Renders Slack messages from every request event.
pub const NOTIFIER: WorkerKind = WorkerKind {
    name: "notifier",
    filter: &["tars.request.>"],
};
/// Applies decisions to the state machine.
pub const DECISION: WorkerKind = WorkerKind {
    name: "decision",
    filter: &["tars.decision.requested.*"],
};
/// Grants approved access in the governance API, and removes it again when it ends.
pub const GOVERNANCE_APPLIER: WorkerKind = WorkerKind {
    name: "governance-applier",
    filter: &["tars.request.approved.*", "tars.request.revoking.*"],
};
/// All three workers.
pub const WORKERS: [WorkerKind; 3] = [NOTIFIER, DECISION, GOVERNANCE_APPLIER];

/// How long a `Nats-Msg-Id` is remembered: longer than Slack's 5-minute signature window,
/// so a replayed signed click (or a client retry after a 503) can never publish twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Revisions kept per key of `TARS_REQUESTS`. A request is written a handful of times in
/// its life (create, Slack claim and reference, decision, outcome); the relay must see
/// each revision with an outbox before it is replaced.
pub const REQUEST_HISTORY: i64 = 32;

/// The knobs of the topology; everything else is fixed by the design.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Stream and bucket replicas (`TARS_REPLICAS`): 1 in development, 3 on a cluster.
    pub replicas: usize,
    /// How long the audit stream keeps events.
    pub events_max_age: Duration,
    /// How long a delivered message may go unacknowledged before redelivery.
    pub ack_wait: Duration,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(90 * 24 * 3600),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Why the topology could not be declared; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The server runs without JetStream (`nats-server -js` is needed).
    #[error("the NATS server has no JetStream enabled (start nats-server with -js): {0}")]
    NoJetStream(String),
    /// JetStream did not answer for the account (timed out, or still electing a leader).
    #[error("JetStream account: {0}")]
    Account(String),
    /// A stream could not be created or updated.
    #[error("declare stream {name}: {source}")]
    Stream {
        /// Which stream.
        name: &'static str,
        /// The server's answer.
        source: jetstream::context::CreateStreamError,
    },
    /// A consumer could not be looked up, created or updated.
    #[error("declare consumer {name}: {message}")]
    Consumer {
        /// Which consumer.
        name: &'static str,
        /// The server's answer.
        message: String,
    },
}

/// Handles to the declared objects.
#[derive(Clone)]
pub struct Topology {
    /// The JetStream context everything was declared on.
    pub js: jetstream::Context,
    /// `TARS_EVENTS`.
    pub events: stream::Stream,
    /// `TARS_DLQ`.
    pub dlq: stream::Stream,
    /// `TARS_REQUESTS`.
    pub requests: kv::Store,
    /// What it was declared with, to declare a lost consumer again the same way.
    pub config: TopologyConfig,
}

fn stream_config(name: &str, subjects: &[&str], cfg: &TopologyConfig) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: cfg.events_max_age,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: cfg.replicas,
        // Histories are read by subject with direct gets, answered by any replica.
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration of the stream behind `TARS_REQUESTS`: what async-nats makes of a KV
/// bucket, plus atomic batches (a record and its index keys are one write) and
/// per-message TTLs (a removed index key's marker vanishes). Written out here because
/// the KV helper would send the same update without those flags on every start.
pub fn requests_stream_config(cfg: &TopologyConfig) -> stream::Config {
    stream::Config {
        name: format!("KV_{REQUESTS_BUCKET}"),
        description: Some("TARS request records and their index keys".into()),
        subjects: vec![format!("$KV.{REQUESTS_BUCKET}.>")],
        // The relay reads every revision from the bucket's stream: keep enough of each
        // key's revisions that none is replaced before the relay has seen it.
        max_messages_per_subject: REQUEST_HISTORY,
        max_bytes: -1,
        max_message_size: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: cfg.replicas,
        discard: stream::DiscardPolicy::New,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// The configuration of `TARS_EVENTS`, the audit log.
pub fn events_stream_config(cfg: &TopologyConfig) -> stream::Config {
    stream_config(
        EVENTS_STREAM,
        &["tars.request.>", "tars.decision.>", "tars.replay.>"],
        cfg,
    )
}

/// The configuration of `TARS_DLQ`; dead letters are kept as long as the audit log.
pub fn dlq_stream_config(cfg: &TopologyConfig) -> stream::Config {
    stream_config(DLQ_STREAM, &["tars.dlq.>"], cfg)
}

/// The configuration of a worker's durable consumer.
///
/// `max_deliver` is left unlimited on purpose: the worker runtime dead-letters on its own
/// limit (`WORKER_MAX_DELIVER`) on the main path, so a message whose last delivery is lost
/// to a crash is delivered again and dead-lettered, never dropped silently by the server.
/// `backoff` stays empty because the server does not apply it to `nak`.
pub fn consumer_config(kind: WorkerKind, cfg: &TopologyConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(kind.name.into()),
        description: Some(format!("TARS {} worker", kind.name)),
        filter_subjects: kind.subjects(),
        // A new deployment's consumer starts at the beginning; an existing one keeps its
        // position, and one declared again resumes after its saved one
        // ([`declare_consumer`]).
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// Declares the topology like [`ensure`], trying again with growing, jittered waits until
/// `deadline` has passed: on a cluster, simultaneous creates of one stream answer late and
/// a node may still be electing leaders, so a failed attempt is normal at start, not
/// fatal. A server without JetStream is refused at once (waiting will not give it one).
pub async fn declare(
    client: &async_nats::Client,
    cfg: &TopologyConfig,
    deadline: Duration,
) -> Result<Topology, TopologyError> {
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(deadline))
        .with_max_times(usize::MAX)
        .with_jitter();
    (|| ensure(client, cfg))
        .retry(backoff)
        .when(|e| !matches!(e, TopologyError::NoJetStream(_)))
        .notify(|e, wait| tracing::warn!(error = %e, ?wait, "declaring the topology failed; trying again"))
        .await
}

/// Declares streams, bucket and consumers once; safe to call from any number of
/// processes at once.
pub async fn ensure(
    client: &async_nats::Client,
    cfg: &TopologyConfig,
) -> Result<Topology, TopologyError> {
    let js = jetstream::new(client.clone());
    js.query_account().await.map_err(|e| match e.kind() {
        jetstream::context::AccountErrorKind::JetStreamUnavailable => {
            TopologyError::NoJetStream(e.to_string())
        }
        _ => TopologyError::Account(e.to_string()),
    })?;

    let events = create_stream(&js, EVENTS_STREAM, events_stream_config(cfg)).await?;
    let dlq = create_stream(&js, DLQ_STREAM, dlq_stream_config(cfg)).await?;
    create_stream(&js, "KV_TARS_REQUESTS", requests_stream_config(cfg)).await?;
    let requests = js
        .get_key_value(REQUESTS_BUCKET)
        .await
        .map_err(|e| TopologyError::Account(format!("bucket {REQUESTS_BUCKET}: {e}")))?;
    declare_consumer(
        &requests.stream,
        &requests,
        crate::relay::consumer_config(REQUESTS_BUCKET, cfg.ack_wait, cfg.replicas),
    )
    .await
    .map_err(|message| TopologyError::Consumer {
        name: crate::relay::RELAY_CONSUMER,
        message,
    })?;
    for kind in WORKERS {
        declare_consumer(&events, &requests, consumer_config(kind, cfg))
            .await
            .map_err(|message| TopologyError::Consumer {
                name: kind.name,
                message,
            })?;
    }
    Ok(Topology {
        js,
        events,
        dlq,
        requests,
        config: cfg.clone(),
    })
}

async fn create_stream(
    js: &jetstream::Context,
    name: &'static str,
    config: stream::Config,
) -> Result<stream::Stream, TopologyError> {
    js.create_or_update_stream(config)
        .await
        .map_err(|source| TopologyError::Stream { name, source })?;
    js.get_stream(name)
        .await
        .map_err(|e| TopologyError::Account(format!("stream {name} vanished: {e}")))
}

/// The key of `TARS_REQUESTS` under which a consumer's last known ack floor is kept (two
/// tokens: never taken for a record by the relay or a listing).
fn position_key(consumer: &str) -> String {
    format!("consumers.{consumer}")
}

/// Saves `floor` (the stream sequence below which everything is acknowledged) as the
/// position of `consumer`, so that a consumer declared again resumes there instead of
/// at the stream's beginning. Best effort: a position saved late only means a few more
/// events seen twice, which every handler tolerates.
pub async fn save_position(requests: &kv::Store, consumer: &str, floor: u64) {
    if let Err(e) = requests
        .put(
            position_key(consumer),
            floor.to_string().into_bytes().into(),
        )
        .await
    {
        tracing::debug!(consumer, error = %e, "saving the consumer's position failed");
    }
}

/// The position last saved for `consumer`.
pub async fn saved_position(requests: &kv::Store, consumer: &str) -> Option<u64> {
    let entry = requests.get(position_key(consumer)).await.ok()??;
    std::str::from_utf8(&entry).ok()?.trim().parse().ok()
}

/// Where a consumer declared again starts: after `floor`, or at the beginning when no
/// position was ever known (a new deployment).
pub fn resume_after(floor: Option<u64>) -> consumer::DeliverPolicy {
    match floor {
        Some(f) if f > 0 => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: f + 1,
        },
        _ => consumer::DeliverPolicy::All,
    }
}

/// Declares the durable consumer `config` on `stream` so that it resumes where it was
/// (Guarantee 9): one that exists keeps its position (its start is never changed, which
/// the server would refuse anyway) and gets the rest of `config` (a new filter subject,
/// say); one that is missing resumes after the position saved for it in `requests`, or
/// starts at the beginning when none was ever saved.
pub async fn declare_consumer(
    stream: &stream::Stream,
    requests: &kv::Store,
    config: impl consumer::IntoConsumerConfig,
) -> Result<(), String> {
    let mut config = config.into_consumer_config();
    let name = config.durable_name.clone().unwrap_or_default();
    match stream.consumer_info(&name).await {
        Ok(info) => config.deliver_policy = info.config.deliver_policy,
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            let floor = saved_position(requests, &name).await;
            config.deliver_policy = resume_after(floor);
            if floor.is_some() {
                tracing::info!(consumer = %name, ?floor, "consumer missing: declared again after its saved position");
            }
        }
        Err(e) => return Err(e.to_string()),
    }
    // Processes declaring a missing consumer at once read the same saved position, so
    // they declare the same configuration and both succeed.
    stream
        .create_consumer(config)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_goes_to_its_worker_and_keeps_the_first_subject() {
        let s = GOVERNANCE_APPLIER.replay_subject("tars.request.approved.r1");
        assert_eq!(s, "tars.replay.governance-applier.tars.request.approved.r1");
        assert_eq!(
            NOTIFIER.replay_subject(&s),
            "tars.replay.notifier.tars.request.approved.r1"
        );
        assert_eq!(original_subject(&s), "tars.request.approved.r1");
        assert_eq!(
            original_subject("tars.request.approved.r1"),
            "tars.request.approved.r1"
        );
    }

    #[test]
    fn a_consumer_resumes_after_its_floor_or_starts_at_the_beginning() {
        assert_eq!(resume_after(None), consumer::DeliverPolicy::All);
        assert_eq!(resume_after(Some(0)), consumer::DeliverPolicy::All);
        assert_eq!(
            resume_after(Some(41)),
            consumer::DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
    }
}
