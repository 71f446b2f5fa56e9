//! Grants an approved request in the governance API and records the outcome.

use tars_domain::events::{Envelope, Event};
use tars_domain::{RequestId, RequestStatus, now};
use tars_governance::{GovernanceClient, GovernanceError};
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::service::Connected;
use tars_jetstream::store::{Change, RequestStore, StoreError};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;

/// The governance-applier's handler.
pub struct Worker {
    store: RequestStore,
    publisher: EventPublisher,
    governance: GovernanceClient,
    metrics: Metrics,
}

fn store_outcome(e: StoreError) -> Outcome {
    if e.is_transient() {
        Outcome::retry(e.to_string())
    } else {
        Outcome::dead_letter(e.to_string())
    }
}

impl Worker {
    /// Builds the handler from a connected process and the governance client.
    pub fn new(conn: &Connected, governance: GovernanceClient) -> Self {
        Self {
            store: RequestStore::new(conn.topology.requests.clone()),
            publisher: EventPublisher::new(conn.topology.js.clone(), conn.metrics.clone()),
            governance,
            metrics: conn.metrics.clone(),
        }
    }

    /// Moves the record to `status` (from approved or failed) and publishes `event`;
    /// `cause` (the approval message's stream sequence) keys a failure event, since a
    /// request may fail, be replayed and fail again.
    async fn record(
        &self,
        id: &RequestId,
        status: RequestStatus,
        reason: Option<String>,
        event: Event,
        cause: u64,
    ) -> Result<(), Outcome> {
        let (changed, _) = self
            .store
            .modify(id, |r| {
                let open = matches!(r.status, RequestStatus::Approved | RequestStatus::Failed);
                let unchanged = r.status == status && r.failure_reason == reason;
                if !open || unchanged {
                    return Change::Keep(false);
                }
                r.status = status;
                match status {
                    RequestStatus::Applied => {
                        r.applied_at = Some(now());
                        r.failure_reason = None;
                    }
                    _ => r.failure_reason = reason.clone(),
                }
                Change::Write(true)
            })
            .await
            .map_err(store_outcome)?;
        if changed {
            self.metrics
                .requests
                .with_label_values(&[status.as_str()])
                .inc();
        }
        let env = Envelope::new(id.clone(), "tars", event);
        // A failure can happen again after a replay: give each its own id.
        let published = if status == RequestStatus::Failed {
            self.publisher
                .publish(&env, &format!("{id}.request.failed.{cause}"))
                .await
        } else {
            self.publisher.publish_transition(&env).await
        };
        published
            .map(|_| ())
            .map_err(|e| Outcome::retry(e.to_string()))
    }

    /// Records `failed` with the reason and dead-letters the message, so an admin can
    /// replay it once the cause is fixed.
    async fn fail(&self, id: &RequestId, reason: String, cause: u64) -> Outcome {
        let event = Event::RequestFailed {
            reason: reason.clone(),
        };
        match self
            .record(
                id,
                RequestStatus::Failed,
                Some(reason.clone()),
                event,
                cause,
            )
            .await
        {
            Ok(()) => Outcome::dead_letter(reason),
            Err(o) => o,
        }
    }

    async fn apply(&self, id: &RequestId, last_attempt: bool, cause: u64) -> Outcome {
        let rec = match self.store.get(id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => return Outcome::dead_letter(format!("request {id} does not exist")),
            Err(e) => return store_outcome(e),
        };
        match rec.status {
            RequestStatus::Approved | RequestStatus::Failed => {}
            RequestStatus::Applied => {
                // Granted already; the event may not have gone out if the last attempt
                // died between the record and the publish: publish again (same
                // Nats-Msg-Id, so the stream keeps one).
                let group = rec.permission.group_for(&rec.tenant_name);
                let env = Envelope::new(id.clone(), "tars", Event::RequestApplied { group });
                return match self.publisher.publish_transition(&env).await {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::retry(e.to_string()),
                };
            }
            RequestStatus::Pending => return Outcome::retry("the record is not approved yet"),
            other => {
                tracing::info!(status = %other, "approved event for a request that is now {other}: nothing to apply");
                return Outcome::Ack;
            }
        }
        let group = rec.permission.group_for(&rec.tenant_name);
        match self.governance.add_member(&group, &rec.requester).await {
            Ok(()) => {
                tracing::info!(%group, user = %rec.requester, "access granted");
                match self
                    .record(
                        id,
                        RequestStatus::Applied,
                        None,
                        Event::RequestApplied { group },
                        cause,
                    )
                    .await
                {
                    Ok(()) => Outcome::Ack,
                    Err(o) => o,
                }
            }
            Err(GovernanceError::Permanent(reason)) => {
                tracing::warn!(%group, %reason, "governance refused");
                self.fail(id, reason, cause).await
            }
            Err(GovernanceError::Transient(reason)) if last_attempt => {
                self.fail(id, format!("retries exhausted: {reason}"), cause)
                    .await
            }
            Err(GovernanceError::Transient(reason)) => {
                self.metrics
                    .external_retries
                    .with_label_values(&["governance"])
                    .inc();
                Outcome::retry(reason)
            }
        }
    }
}

impl Handler for Worker {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let id = delivery.envelope.request_id.clone();
        match &delivery.envelope.event {
            Event::RequestApproved { .. } => {
                self.apply(&id, delivery.last_attempt, delivery.stream_seq)
                    .await
            }
            other => Outcome::dead_letter(format!(
                "the governance-applier does not handle {}",
                other.kind()
            )),
        }
    }
}
