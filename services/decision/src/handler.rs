//! The decision shell: steps the state machine for decisions and expiry, writes the
//! record with compare-and-set, then publishes what the step emitted.

use std::time::Duration;

use tars_domain::RequestId;
use tars_domain::events::Event;
use tars_domain::machine::{self, Command, Effect, Policy, Refusal};
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::service::Connected;
use tars_jetstream::store::{RequestStore, StoreError};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// The decision worker's handler.
pub struct Worker {
    store: RequestStore,
    publisher: EventPublisher,
    metrics: Metrics,
    /// The rules the machine applies (TTL, reminder interval, expiry warning).
    policy: Policy,
    /// When this worker's expiry sweep last ran: a pending request is reminded only when
    /// a reminder interval ended since, so a sweep reads only the requests due.
    last_sweep: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

fn store_outcome(e: StoreError) -> Outcome {
    Outcome::of_store_error(e, |id| {
        Outcome::dead_letter(format!("request {id} does not exist"))
    })
}

impl Worker {
    /// Builds the handler from a connected process and the policy it applies.
    pub fn new(conn: &Connected, policy: Policy) -> Self {
        Self {
            store: RequestStore::new(&conn.topology, &conn.metrics),
            publisher: EventPublisher::new(conn.topology.js.clone(), conn.metrics.clone()),
            metrics: conn.metrics.clone(),
            policy,
            last_sweep: std::sync::Mutex::new(None),
        }
    }

    /// Applies one decision; `cause` is the decision message's stream sequence, which
    /// keys the rejection event so a redelivered losing decision is recorded once.
    async fn decide(&self, id: &RequestId, cmd: Command, cause: u64) -> Outcome {
        let now = tars_domain::now();
        let stepped = match self.store.step(id, &cmd, now, cause, &self.policy).await {
            Ok(s) => s,
            Err(e) => return store_outcome(e),
        };
        fail::fail_point!("decide.after_write");
        let effects = match stepped {
            Ok(step) => {
                if step.changed {
                    let status = step.record.status;
                    self.metrics
                        .requests
                        .with_label_values(&[status.as_str()])
                        .inc();
                    tracing::info!(%status, "decided");
                }
                step.effects
            }
            Err(refusal) => {
                match &refusal {
                    Refusal::OwnRequest => {
                        tracing::warn!("a requester tried to decide their own request");
                    }
                    other => {
                        tracing::info!(refusal = %other, "decision refused: recorded, not applied");
                    }
                }
                machine::rejection(&cmd, &refusal)
                    .map(Effect::Emit)
                    .into_iter()
                    .collect()
            }
        };
        match self.publisher.emit_all(id, &effects, cause, now).await {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }

    /// Expires every pending request older than the policy's TTL as of `now`; safe to run
    /// on every replica at once (the compare-and-set lets one win). The expiry and its
    /// event are one write: the relay publishes the event. Pending requests are found
    /// through the status index (their ids carry their creation time), so a sweep reads
    /// the pending requests' index keys and the records due, nothing else. Also exports
    /// the age of the oldest pending request.
    pub async fn expire_stale(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        let cutoff = now - self.policy.request_ttl;
        let pending = self.store.pending().await?;
        let oldest = pending.iter().filter_map(RequestId::created_at).min();
        self.metrics
            .oldest_pending_request
            .set(oldest.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)));
        let (stale, pending_left): (Vec<RequestId>, Vec<RequestId>) = pending
            .into_iter()
            .partition(|id| id.created_at().is_none_or(|t| t <= cutoff));
        let mut expired = 0;
        for id in stale {
            match self
                .store
                .step(&id, &Command::Expire, now, 0, &self.policy)
                .await
            {
                Ok(Ok(step)) if step.changed => {
                    fail::fail_point!("expire.after_write");
                    expired += 1;
                    self.metrics.requests.with_label_values(&["expired"]).inc();
                }
                // Decided meanwhile: its pending key (or open-index entry) outlived the
                // decision; remove them.
                Ok(Err(Refusal::Settled { .. })) => self.store.repair_pending(&id).await?,
                // Not due after all.
                Ok(_) => {}
                // A key whose record a crashed submission never wrote.
                Err(StoreError::NotFound(_)) => self.store.repair_pending(&id).await?,
                Err(e) => return Err(e),
            }
        }
        let previous = self
            .last_sweep
            .lock()
            .map(|mut l| l.replace(now))
            .unwrap_or(None);
        self.remind(&pending_left, previous, now).await?;
        Ok(expired)
    }

    /// Steps `Remind` on the pending requests for which a reminder interval ended between
    /// the previous sweep (`None`: every one old enough) and `now`.
    async fn remind(
        &self,
        pending: &[RequestId],
        previous: Option<time::OffsetDateTime>,
        now: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let every = self.policy.reminder_interval.as_secs_f64().max(1.0);
        let periods = |id: &RequestId, t: time::OffsetDateTime| {
            id.created_at()
                .map_or(0.0, |c| ((t - c).as_seconds_f64() / every).floor())
        };
        let cmd = Command::Remind {
            interval: self.policy.reminder_interval,
        };
        for id in pending {
            let due = periods(id, now) >= 1.0
                && previous.is_none_or(|p| periods(id, now) > periods(id, p));
            if !due {
                continue;
            }
            match self.store.step(id, &cmd, now, 0, &self.policy).await {
                Ok(Ok(step)) if step.changed => {
                    self.metrics
                        .notifications
                        .with_label_values(&["reminder"])
                        .inc();
                }
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts the revocation of every grant whose time-bound access has ended by `now`
    /// (found through the access keys of the days since the last sweep, see
    /// [`RequestStore::access_due`]) and returns how many it started. The revocation and
    /// its event are one write; the governance-applier carries it out. A grant whose
    /// access ended while every process was down is found by the first sweep after.
    pub async fn end_access(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        self.warn_access_ending(now).await?;
        let mut started = 0;
        for id in self.store.access_due(now).await? {
            match self
                .store
                .step(&id, &Command::EndAccess, now, 0, &self.policy)
                .await
            {
                Ok(Ok(step)) => {
                    if step.changed {
                        fail::fail_point!("end_access.after_write");
                        started += 1;
                        self.metrics.requests.with_label_values(&["revoking"]).inc();
                    } else {
                        // A repeat (the revocation started before; its key outlived it):
                        // publish its event again in case it was lost.
                        self.publisher
                            .emit_all(&id, &step.effects, 0, now)
                            .await
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    }
                    self.store.forget_access(&step.record).await?;
                }
                // Due later today.
                Ok(Err(Refusal::NotDue)) => {}
                // Revoked already: its key outlived it.
                Ok(Err(_)) => {
                    if let Some(v) = self.store.get(&id).await? {
                        self.store.forget_access(&v.value).await?;
                    }
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }

    /// Warns the requesters of grants whose access ends within `ACCESS_EXPIRY_WARNING`
    /// (once each; the notifier sends the DM).
    async fn warn_access_ending(&self, now: time::OffsetDateTime) -> Result<(), StoreError> {
        let warning = self.policy.access_expiry_warning;
        let until = now + time::Duration::try_from(warning).unwrap_or(time::Duration::ZERO);
        let cmd = Command::WarnAccessEnding { warning };
        for id in self.store.access_ending_by(now, until).await? {
            match self.store.step(&id, &cmd, now, 0, &self.policy).await {
                Ok(Ok(step)) if step.changed => self
                    .metrics
                    .notifications
                    .with_label_values(&["expiry_warning"])
                    .inc(),
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes finished records older than `retention` as of `now` (see
    /// [`RequestStore::retire`]).
    pub async fn retire(
        &self,
        now: time::OffsetDateTime,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        self.store.retire(now, retention).await
    }

    /// Sweeps every `every` until shutdown: expiry, ended access, then retention.
    pub async fn sweep_forever(
        &self,
        every: Duration,
        retention: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            match self.expire_stale(tars_domain::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired stale pending requests"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will try again"),
            }
            match self.end_access(tars_domain::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(revoking = n, "time-bound access ended: revoking"),
                Err(e) => tracing::warn!(error = %e, "access sweep failed; will try again"),
            }
            match self.retire(tars_domain::now(), retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed finished requests past retention"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; will try again"),
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
                let cmd = Command::Decide {
                    decision: *decision,
                    by: by.clone(),
                    source: *source,
                };
                self.decide(&id, cmd, delivery.stream_seq).await
            }
            other => Outcome::dead_letter(format!(
                "the decision worker does not handle {}",
                other.kind()
            )),
        }
    }
}
