//! The state machine: decisions and expiry, each a compare-and-set on the record.

use std::time::Duration;

use tars_domain::events::{Decision, Envelope, Event};
use tars_domain::{RequestId, RequestStatus, Source, Username, now};
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::service::Connected;
use tars_jetstream::store::{Change, RequestStore, StoreError};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// The decision worker's handler.
pub struct Worker {
    store: RequestStore,
    publisher: EventPublisher,
    metrics: Metrics,
    /// Expiry events whose publish failed after the record changed; the next sweep
    /// publishes them (their `Nats-Msg-Id` keeps each once).
    unpublished: std::sync::Mutex<Vec<Envelope>>,
}

enum Verdict {
    /// This decision changed the record now.
    Won(RequestStatus),
    /// This decision had already won (a redelivery): publish again, the id dedupes.
    AlreadyWon(RequestStatus),
    /// The request was no longer pending (or the decider is the requester).
    Lost(RequestStatus),
    /// The requester tried to decide their own request.
    OwnRequest,
}

fn store_outcome(e: StoreError) -> Outcome {
    match e {
        StoreError::NotFound(id) => Outcome::dead_letter(format!("request {id} does not exist")),
        e if e.is_transient() => Outcome::retry(e.to_string()),
        e => Outcome::dead_letter(e.to_string()),
    }
}

impl Worker {
    /// Builds the handler from a connected process.
    pub fn new(conn: &Connected) -> Self {
        Self {
            store: RequestStore::new(conn.topology.requests.clone()),
            publisher: EventPublisher::new(conn.topology.js.clone(), conn.metrics.clone()),
            metrics: conn.metrics.clone(),
            unpublished: std::sync::Mutex::default(),
        }
    }

    /// Applies one decision; `cause` is the decision message's stream sequence, which
    /// keys the rejection event so a redelivered losing decision is recorded once.
    async fn decide(
        &self,
        id: &RequestId,
        decision: Decision,
        by: &Username,
        source: Source,
        cause: u64,
    ) -> Outcome {
        let target = match decision {
            Decision::Approve => RequestStatus::Approved,
            Decision::Deny => RequestStatus::Denied,
        };
        let result = self
            .store
            .modify(id, |r| {
                if r.requester == *by {
                    return Change::Keep(Verdict::OwnRequest);
                }
                if r.status == RequestStatus::Pending {
                    r.status = target;
                    r.decided_by = Some(by.to_string());
                    r.decided_at = Some(now());
                    r.decision_source = Some(source);
                    return Change::Write(Verdict::Won(target));
                }
                let same_decider = r.decided_by.as_deref() == Some(by.as_str());
                let consistent = match decision {
                    Decision::Approve => matches!(
                        r.status,
                        RequestStatus::Approved | RequestStatus::Applied | RequestStatus::Failed
                    ),
                    Decision::Deny => r.status == RequestStatus::Denied,
                };
                if same_decider && consistent {
                    Change::Keep(Verdict::AlreadyWon(target))
                } else {
                    Change::Keep(Verdict::Lost(r.status))
                }
            })
            .await;
        let verdict = match result {
            Ok((v, _)) => v,
            Err(e) => return store_outcome(e),
        };
        let event = match verdict {
            Verdict::Won(status) | Verdict::AlreadyWon(status) => {
                if matches!(verdict, Verdict::Won(_)) {
                    self.metrics
                        .requests
                        .with_label_values(&[status.as_str()])
                        .inc();
                    tracing::info!(%by, %status, "decided");
                }
                match decision {
                    Decision::Approve => Event::RequestApproved {
                        by: by.clone(),
                        source,
                    },
                    Decision::Deny => Event::RequestDenied {
                        by: by.clone(),
                        source,
                    },
                }
            }
            Verdict::Lost(status) => {
                tracing::info!(%by, %status, "decision on a request that is no longer pending: recorded, not applied");
                Event::DecisionRejected {
                    decision,
                    by: by.clone(),
                    status,
                }
            }
            Verdict::OwnRequest => {
                tracing::warn!(%by, "a requester tried to decide their own request");
                Event::DecisionRejected {
                    decision,
                    by: by.clone(),
                    status: RequestStatus::Pending,
                }
            }
        };
        let env = Envelope::new(id.clone(), by.to_string(), event);
        let published = match &env.event {
            Event::DecisionRejected { .. } => {
                self.publisher
                    .publish(&env, &format!("{id}.decision.rejected.{cause}"))
                    .await
            }
            _ => self.publisher.publish_transition(&env).await,
        };
        match published {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }

    /// Expires every pending request older than `ttl`; safe to run on every replica at
    /// once (the compare-and-set lets one win, the publish id dedupes).
    pub async fn expire_stale(&self, ttl: Duration) -> Result<usize, StoreError> {
        let cutoff = now() - ttl;
        let mut expired = 0;
        let retry: Vec<Envelope> =
            std::mem::take(&mut *self.unpublished.lock().unwrap_or_else(|p| p.into_inner()));
        for env in retry {
            if self.publisher.publish_transition(&env).await.is_err() {
                self.unpublished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(env);
            }
        }
        let stale = self
            .store
            .pending()
            .await?
            .into_iter()
            .filter(|id| id.created_at().is_none_or(|t| t <= cutoff));
        for id in stale {
            let result = self
                .store
                .modify(&id, |r| {
                    if r.status != RequestStatus::Pending || r.created_at > cutoff {
                        return Change::Keep(false);
                    }
                    r.status = RequestStatus::Expired;
                    r.decided_by = Some("tars".into());
                    r.decided_at = Some(now());
                    r.decision_source = Some(Source::System);
                    Change::Write(true)
                })
                .await;
            let changed = match result {
                Ok((changed, _)) => changed,
                // An index entry whose record a crashed submission never wrote.
                Err(StoreError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if changed {
                expired += 1;
                self.metrics.requests.with_label_values(&["expired"]).inc();
                let env = Envelope::new(id.clone(), "tars", Event::RequestExpired {});
                if let Err(e) = self.publisher.publish_transition(&env).await {
                    // The record says expired; the event goes out on the next sweep.
                    tracing::warn!(error = %e, request_id = %id, "expired, but the event was not published yet");
                    self.unpublished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(env);
                }
            }
        }
        Ok(expired)
    }

    /// Sweeps every `every` until shutdown.
    pub async fn sweep_forever(&self, ttl: Duration, every: Duration, shutdown: CancellationToken) {
        loop {
            match self.expire_stale(ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired stale pending requests"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will try again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl Handler for Worker {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let id = delivery.envelope.request_id.clone();
        match &delivery.envelope.event {
            Event::DecisionRequested {
                decision,
                by,
                source,
                ..
            } => {
                self.decide(&id, *decision, by, *source, delivery.stream_seq)
                    .await
            }
            other => Outcome::dead_letter(format!(
                "the decision worker does not handle {}",
                other.kind()
            )),
        }
    }
}
