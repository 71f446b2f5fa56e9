//! Publishing event envelopes to `TARS_EVENTS`: the one publish path (`Nats-Msg-Id`, acked).

use async_nats::jetstream;
use tars_domain::RequestId;
use tars_domain::events::Envelope;
use tars_domain::machine::{Effect, Emit};
use tars_observability::metrics::Metrics;
use time::OffsetDateTime;

/// Why a publish did not reach the stream; the caller decides whether to retry or answer 503.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The envelope could not be serialised (a bug).
    #[error("encode event: {0}")]
    Encode(#[from] serde_json::Error),
    /// NATS did not take the message.
    #[error("publish event: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
}

/// An event sent by [`EventPublisher::send`], its stream ack still to come.
pub struct Sent {
    ack: jetstream::context::PublishAckFuture,
    kind: &'static str,
    publisher: EventPublisher,
}

impl Sent {
    /// Waits for the stream's ack and counts the event; returns its stream sequence.
    pub async fn acked(self) -> Result<u64, PublishError> {
        let ack = self.ack.await?;
        self.publisher.count(self.kind);
        Ok(ack.sequence)
    }
}

/// The headers (`Nats-Msg-Id`, and the current trace's `traceparent`) and payload of
/// `envelope`.
fn encode(
    envelope: &Envelope,
    msg_id: &str,
) -> Result<(async_nats::HeaderMap, bytes::Bytes), PublishError> {
    let payload = serde_json::to_vec(envelope)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    if let Some(ctx) = tars_observability::trace::current() {
        headers.insert(
            tars_observability::trace::TRACEPARENT,
            ctx.child().header().as_str(),
        );
    }
    Ok((headers, bytes::Bytes::from(payload)))
}

/// Publishes envelopes to `TARS_EVENTS` and counts them; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    metrics: Metrics,
}

impl EventPublisher {
    /// A publisher on `js` that counts into `metrics`.
    pub fn new(js: jetstream::Context, metrics: Metrics) -> Self {
        Self { js, metrics }
    }

    /// Publishes with `msg_id` as `Nats-Msg-Id` and waits for the stream's ack; returns
    /// the stream sequence (a duplicate returns the original's).
    pub async fn publish(&self, envelope: &Envelope, msg_id: &str) -> Result<u64, PublishError> {
        // The message id makes a repeat of a publish that went through a no-op.
        let send = || async { self.send(envelope, msg_id).await?.acked().await };
        crate::retry::ride_out("publish", send, |e| matches!(e, PublishError::Publish(_))).await
    }

    /// Sends like [`Self::publish`] without waiting for the stream's ack, which
    /// [`Sent::acked`] awaits: a caller with many events in order (the relay) keeps them
    /// in flight together, in the order sent, instead of one round trip each. Not retried:
    /// a caller that gets an error sends again (the message id keeps one copy).
    pub async fn send(&self, envelope: &Envelope, msg_id: &str) -> Result<Sent, PublishError> {
        let (headers, payload) = encode(envelope, msg_id)?;
        let ack = self
            .js
            .publish_with_headers(envelope.subject(), headers, payload)
            .await?;
        Ok(Sent {
            ack,
            kind: envelope.event.kind(),
            publisher: self.clone(),
        })
    }

    fn count(&self, kind: &str) {
        self.metrics
            .events_published
            .with_label_values(&[kind])
            .inc();
    }

    /// Publishes a state transition with its natural `Nats-Msg-Id`.
    pub async fn publish_transition(&self, envelope: &Envelope) -> Result<u64, PublishError> {
        self.publish(envelope, &envelope.transition_msg_id()).await
    }

    /// Publishes one event a machine step emitted, as happening at `at`; `cause` is the
    /// stream sequence of the message being handled (0 outside a worker), used by
    /// per-cause message ids.
    pub async fn emit(
        &self,
        request_id: &RequestId,
        emit: &Emit,
        cause: u64,
        at: OffsetDateTime,
    ) -> Result<u64, PublishError> {
        let env = Envelope::at(
            request_id.clone(),
            emit.actor.clone(),
            emit.event.clone(),
            at,
        );
        self.publish(&env, &emit.msg_id(request_id, cause)).await
    }

    /// Publishes every [`Effect::Emit`] of a step, in order, and skips the other effects
    /// (the caller carries those out).
    pub async fn emit_all(
        &self,
        request_id: &RequestId,
        effects: &[Effect],
        cause: u64,
        at: OffsetDateTime,
    ) -> Result<(), PublishError> {
        for effect in effects {
            if let Effect::Emit(e) = effect {
                self.emit(request_id, e, cause, at).await?;
            }
        }
        Ok(())
    }
}
