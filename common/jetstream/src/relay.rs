//! The relay: publishes the events waiting in request records' outboxes.
//!
//! A state change and its events are one durable write (the record's outbox, see
//! `tars_domain::record::Outgoing`). The relay tails the `TARS_REQUESTS` bucket's own
//! stream through the durable consumer `relay`, so every revision that was written is
//! seen at least once, in order, even if the process that wrote it died the instant after:
//! nothing is found by scanning, and nothing waits in memory. Each event is published with
//! its own `Nats-Msg-Id`, so a revision seen twice publishes once.
//!
//! It also finishes what a request that left `pending` may have left behind (the writer
//! does this at once; a crash between its writes is repaired here): the `s.pending`
//! index key.
//!
//! Every TARS process runs one relay on the same durable consumer; they share the work.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tars_domain::RequestRecord;
use tars_domain::events::Event;
use tars_observability::trace::{self, TraceContext};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::publish::{EventPublisher, Sent};
use crate::store::RequestStore;
use crate::topology::Topology;
use crate::worker::PullHealth;

/// The relay's durable consumer on the bucket's stream.
pub const RELAY_CONSUMER: &str = "relay";

/// How many revisions one pull asks for.
const BATCH: usize = 64;

/// The relay's consumer: every revision of every record key (index keys such as
/// `open.<user>` and `s.<status>.<id>` have more than one token and are not matched).
pub fn consumer_config(
    bucket: &str,
    ack_wait: Duration,
    replicas: usize,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(RELAY_CONSUMER.into()),
        description: Some("TARS relay: publishes request records' outboxes".into()),
        filter_subject: format!("$KV.{bucket}.*"),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Why a revision's duties could not be carried out now; it is redelivered.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("a record revision this version cannot read: {0}")]
    Unreadable(String),
}

/// Sends the outbox of one revision (the stream's acks are awaited by [`confirm`]) and
/// repairs what leaving `pending` may have left; `Err` leaves the revision to be
/// redelivered.
async fn relay_send(
    publisher: &EventPublisher,
    store: &RequestStore,
    msg: &jetstream::Message,
) -> Result<Vec<Sent>, RelayError> {
    let mut sent = Vec::new();
    // A deleted or purged key has no payload and nothing to announce.
    if msg.payload.is_empty() {
        return Ok(sent);
    }
    let revision: RequestRecord = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        // A newer version's record (during a rolling upgrade) or a damaged one: its
        // outbox is left for a process that can read it, never acknowledged away.
        Err(e) => return Err(RelayError::Unreadable(e.to_string())),
    };
    let left_pending = revision.outbox.iter().any(|o| {
        matches!(
            o.envelope.event,
            Event::RequestApproved { .. }
                | Event::RequestDenied { .. }
                | Event::RequestCancelled {}
                | Event::RequestExpired {}
        )
    });
    if left_pending {
        store.forget_if_settled(&revision).await?;
    }
    for out in revision.outbox {
        let ctx = TraceContext::from_header(out.traceparent.as_deref());
        let span = tracing::info_span!(
            "relay",
            request_id = %out.envelope.request_id,
            trace_id = %ctx.trace_id()
        );
        sent.push(
            trace::scope(ctx, publisher.send(&out.envelope, &out.msg_id))
                .instrument(span)
                .await?,
        );
    }
    Ok(sent)
}

/// Waits for the stream's acks of what [`relay_send`] sent.
async fn confirm(sent: Result<Vec<Sent>, RelayError>) -> Result<(), RelayError> {
    for s in sent? {
        s.acked().await?;
    }
    Ok(())
}

/// Acknowledges a revision whose events are stored, or has it redelivered.
async fn settle(
    msg: jetstream::Message,
    relayed: Result<(), RelayError>,
    metrics: &tars_observability::metrics::Metrics,
) {
    let settle = match relayed {
        Ok(()) => {
            fail::fail_point!("relay.after_publish");
            AckKind::Ack
        }
        Err(e @ RelayError::Unreadable(_)) => {
            metrics
                .unreadable
                .with_label_values(&[RELAY_CONSUMER])
                .inc();
            tracing::warn!(error = %e, subject = %msg.subject, "left for a process that can read it");
            AckKind::Nak(Some(crate::worker::UNREADABLE_DELAY))
        }
        Err(e) => {
            tracing::warn!(error = %e, subject = %msg.subject, "relay publish failed; will retry");
            AckKind::Nak(Some(Duration::from_millis(500)))
        }
    };
    if let Err(e) = msg.ack_with(settle).await {
        tracing::warn!(error = %e, "relay ack failed; the revision comes back");
    }
}

/// The relay's consumer, found (or declared again, after its saved position) however
/// long NATS takes to answer: a relay that gave up at start would leave this process
/// publishing nothing while it looked healthy. `None` only at shutdown.
async fn find_consumer(
    topology: &Topology,
    health: &PullHealth,
    shutdown: &CancellationToken,
) -> Option<consumer::PullConsumer> {
    let mut wait = Duration::from_millis(100);
    loop {
        match topology.requests.stream.get_consumer(RELAY_CONSUMER).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let failing = health.failed();
                tracing::warn!(consumer = RELAY_CONSUMER, error = %e, failing_s = failing.as_secs(), "the relay cannot find its consumer; trying again");
                if failing > REDECLARE_AFTER {
                    redeclare(topology).await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return None,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// How long the relay's pulls or look-ups may fail before it declares its consumer again.
const REDECLARE_AFTER: Duration = Duration::from_secs(2);

/// Declares the relay's consumer again, resuming after its saved position.
async fn redeclare(topology: &Topology) {
    let cfg = &topology.config;
    let config = consumer_config(crate::topology::REQUESTS_BUCKET, cfg.ack_wait, cfg.replicas);
    if let Err(e) =
        crate::topology::declare_consumer(&topology.requests.stream, &topology.requests, config)
            .await
    {
        tracing::warn!(consumer = RELAY_CONSUMER, error = %e, "declaring the relay's consumer again failed");
    }
}

/// Relays until `shutdown`; a look-up, pull or publish failure (NATS away, an election)
/// is retried, and `health` says whether the relay works, for `/readyz`.
pub async fn run(
    topology: Topology,
    publisher: EventPublisher,
    metrics: tars_observability::metrics::Metrics,
    health: PullHealth,
    shutdown: CancellationToken,
) {
    // Not working until the consumer is found and a pull succeeds.
    health.failed();
    // The series an alert would read exists from the start, at zero.
    metrics.unreadable.with_label_values(&[RELAY_CONSUMER]);
    let Some(consumer) = find_consumer(&topology, &health, &shutdown).await else {
        return;
    };
    let lag = tokio::spawn(crate::worker::report_lag(
        consumer.clone(),
        RELAY_CONSUMER,
        topology.requests.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let store = RequestStore::new(&topology, &metrics);
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            b = consumer.batch().max_messages(BATCH).expires(Duration::from_secs(2)).messages() => b,
            _ = shutdown.cancelled() => break,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(consumer = RELAY_CONSUMER, error = %e, "relay pull failed; retrying");
                if health.failed() > REDECLARE_AFTER {
                    redeclare(&topology).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        // A pull is finished even during shutdown: it is short, and what it holds is
        // published rather than left to wait for its ack timer. Revisions are sent in
        // the order they arrive (so events reach the stream in the order they were
        // written) while the stream's acks of earlier ones are still on their way: up to
        // a pull's BATCH revisions wait for theirs at once, each acknowledged once its
        // events are stored, in order.
        let mut waiting = FuturesOrdered::new();
        let mut open = true;
        let mut pulled = true;
        let mut received = 0usize;
        while open || !waiting.is_empty() {
            tokio::select! {
                biased;
                Some((msg, relayed)) = waiting.next(), if !waiting.is_empty() => {
                    settle(msg, relayed, &metrics).await;
                }
                next = batch.next(), if open => match next {
                    Some(Ok(msg)) => {
                        received += 1;
                        let sent = relay_send(&publisher, &store, &msg).await;
                        waiting.push_back(async move { (msg, confirm(sent).await) });
                    }
                    // A pull that ends in an error before any message (the consumer
                    // gone, JetStream refusing) is a failed pull.
                    Some(Err(e)) => {
                        tracing::debug!(consumer = RELAY_CONSUMER, error = %e, "relay pull ended");
                        pulled = received > 0;
                        open = false;
                    }
                    None => open = false,
                },
            }
        }
        if pulled {
            health.ok();
        } else if health.failed() > REDECLARE_AFTER {
            redeclare(&topology).await;
        }
    }
    lag.abort();
}
