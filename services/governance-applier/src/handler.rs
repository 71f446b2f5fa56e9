//! The governance shell: takes a grant order (`request.approved`) or a revocation order
//! (`request.revoking`), asks the state machine what to do, carries out the governance
//! call, and steps the machine with the outcome.

use tars_domain::RequestId;
use tars_domain::events::Event;
use tars_domain::machine::{Command, Effect, Membership, Policy, Refusal};
use tars_governance::{GovernanceClient, GovernanceError, Granted, Removed};
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::service::Connected;
use tars_jetstream::store::{RequestStore, StoreError};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;

/// The governance-applier's handler.
pub struct Worker {
    store: RequestStore,
    publisher: EventPublisher,
    governance: GovernanceClient,
    metrics: Metrics,
    /// The rules the machine applies (none of today's concern the applier's steps).
    policy: Policy,
}

fn store_outcome(e: StoreError) -> Outcome {
    Outcome::of_store_error(e, |id| {
        Outcome::dead_letter(format!("request {id} does not exist"))
    })
}

impl Worker {
    /// Builds the handler from a connected process and the governance client.
    pub fn new(conn: &Connected, governance: GovernanceClient) -> Self {
        Self {
            store: RequestStore::new(&conn.topology, &conn.metrics),
            publisher: EventPublisher::new(conn.topology.js.clone(), conn.metrics.clone()),
            governance,
            metrics: conn.metrics.clone(),
            policy: Policy::default(),
        }
    }

    /// Steps `cmd`, publishes what it emitted (`cause` keys per-cause ids: a request may
    /// fail, be replayed and fail again) and returns the effects left to carry out.
    async fn step(&self, id: &RequestId, cmd: Command, cause: u64) -> Result<Vec<Effect>, Outcome> {
        let now = tars_domain::now();
        let step = match self.store.step(id, &cmd, now, cause, &self.policy).await {
            Ok(Ok(step)) => step,
            Ok(Err(Refusal::NotApproved)) => {
                return Err(Outcome::retry("the record is not approved yet"));
            }
            Ok(Err(refusal)) => {
                tracing::info!(%refusal, "grant order for a request that moved on: nothing to do");
                return Err(Outcome::Ack);
            }
            Err(e) => return Err(store_outcome(e)),
        };
        if step.changed {
            let status = step.record.status;
            self.metrics
                .requests
                .with_label_values(&[status.as_str()])
                .inc();
        }
        // A changed step's events are in the record's outbox; a repeat's are published
        // here again, in case the first publish was lost.
        self.publisher
            .emit_all(id, &step.effects, cause, now)
            .await
            .map_err(|e| Outcome::outage("nats", e.to_string()))?;
        Ok(step
            .effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Emit(_)))
            .collect())
    }

    /// Carries out a grant order; `first` says no earlier delivery of it ran.
    async fn apply(&self, id: &RequestId, cause: u64) -> Outcome {
        let effects = match self.step(id, Command::StartGrant, cause).await {
            Ok(effects) => effects,
            Err(outcome) => return outcome,
        };
        // A grant order yields one governance call, or nothing (already applied: the
        // step re-emitted the outcome).
        let grant = effects.into_iter().find_map(|e| match e {
            Effect::Grant(m) => Some(m),
            _ => None,
        });
        match grant {
            Some(m) => {
                fail::fail_point!("grant.before_call");
                self.grant(id, &m, cause).await
            }
            None => Outcome::Ack,
        }
    }

    /// Calls the governance API for `m` and steps the machine with its answer.
    async fn grant(&self, id: &RequestId, m: &Membership, cause: u64) -> Outcome {
        let group = m.group();
        let granted = self
            .governance
            .grant(&m.user, &m.tenant, m.permission)
            .await;
        let error = match granted {
            Ok(how) => {
                match how {
                    Granted::Added => {
                        tracing::info!(tenant = %m.tenant, permission = %m.permission, user = %m.user, "access granted")
                    }
                    Granted::AlreadySatisfied => {
                        tracing::info!(tenant = %m.tenant, permission = %m.permission, user = %m.user, "the user already had this access: nothing changed")
                    }
                }
                fail::fail_point!("grant.after_call");
                // Whether an earlier attempt may have added it is the machine's call,
                // from the attempts the record counts.
                let added = how == Granted::Added;
                let recorded = self.step(id, Command::Granted { added }, cause).await;
                fail::fail_point!("grant.after_record");
                return match recorded {
                    Ok(_) | Err(Outcome::Ack) => Outcome::Ack,
                    Err(o) => o,
                };
            }
            Err(e @ GovernanceError::Permanent { .. }) => {
                tracing::warn!(%group, error = %e, "governance refused");
                e
            }
            // An outage is waited out however long it lasts (Guarantee 1): the message is
            // held, no delivery is spent, and it never ends `failed`.
            Err(GovernanceError::Transient(reason)) => {
                self.metrics
                    .external_retries
                    .with_label_values(&["governance"])
                    .inc();
                return Outcome::outage("governance", reason);
            }
        };
        // The requester and Slack see a plain reason; the dead letter keeps the detail.
        let detail = error.to_string();
        let reason = error.user_reason();
        // `failed` is recorded, then the message is dead-lettered so an admin can replay
        // it once the cause is fixed.
        match self.step(id, Command::GrantFailed { reason }, cause).await {
            Ok(effects) => effects
                .into_iter()
                .find_map(|e| match e {
                    Effect::DeadLetter(_) => Some(Outcome::dead_letter(detail.clone())),
                    _ => None,
                })
                .unwrap_or(Outcome::Ack),
            Err(o) => o,
        }
    }
}

impl Worker {
    /// Carries out a revocation order: one governance call (or none, for a membership
    /// TARS did not add), then `revoked`. A refusal dead-letters the order and leaves the
    /// request `revoking`, so an admin sees it and can replay it.
    async fn revoke(&self, id: &RequestId, cause: u64) -> Outcome {
        let effects = match self.step(id, Command::StartRevoke, cause).await {
            Ok(effects) => effects,
            Err(outcome) => return outcome,
        };
        let Some(m) = effects.into_iter().find_map(|e| match e {
            Effect::Revoke(m) => Some(m),
            _ => None,
        }) else {
            return Outcome::Ack;
        };
        fail::fail_point!("revoke.before_call");
        match self
            .governance
            .revoke(&m.user, &m.tenant, m.permission)
            .await
        {
            Ok(how) => {
                let left_alone = match how {
                    Removed::Removed => {
                        tracing::info!(tenant = %m.tenant, permission = %m.permission, user = %m.user, "access removed");
                        None
                    }
                    Removed::NotMember => {
                        // Also what a redelivery after our own removal finds: success.
                        tracing::info!(tenant = %m.tenant, user = %m.user, "the user was no longer a member: nothing to remove");
                        None
                    }
                    Removed::LeftAlone => {
                        tracing::info!(tenant = %m.tenant, user = %m.user, "the user holds another level now: left as it is");
                        Some(format!(
                            "the user now holds another access level than {} on the tenant; left as it is",
                            m.permission
                        ))
                    }
                };
                fail::fail_point!("revoke.after_call");
                match self
                    .step(id, Command::AccessRemoved { left_alone }, cause)
                    .await
                {
                    Ok(_) | Err(Outcome::Ack) => Outcome::Ack,
                    Err(o) => o,
                }
            }
            Err(GovernanceError::Transient(reason)) => {
                self.metrics
                    .external_retries
                    .with_label_values(&["governance"])
                    .inc();
                Outcome::outage("governance", reason)
            }
            Err(e) => {
                tracing::error!(tenant = %m.tenant, user = %m.user, error = %e, "removing access failed; the order is dead-lettered and the request stays revoking");
                Outcome::dead_letter(format!("revoking: {e}"))
            }
        }
    }
}

impl Worker {
    /// Records a grant that ran out of attempts as `failed`, then dead-letters its order.
    async fn give_up(&self, id: &RequestId, delivered: u64, why: &str, cause: u64) -> Outcome {
        let detail = format!("gave up after {delivered} attempts: {why}");
        tracing::warn!(%detail, "grant out of attempts: recorded as failed");
        let reason = "TARS could not complete this grant after several attempts; an admin can \
                      retry it"
            .to_owned();
        match self.step(id, Command::GrantFailed { reason }, cause).await {
            Ok(_) | Err(Outcome::Ack) => Outcome::dead_letter(detail),
            Err(o) => o,
        }
    }
}

impl Handler for Worker {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let id = delivery.envelope.request_id.clone();
        match &delivery.envelope.event {
            Event::RequestApproved { .. } => match self.apply(&id, delivery.stream_seq).await {
                // No step is left where nothing drives it: a grant out of attempts (store
                // contention, a record not yet readable) is recorded `failed` with why,
                // then dead-lettered for an admin to replay (Guarantee 9).
                Outcome::Retry { reason, .. } if delivery.last_attempt => {
                    self.give_up(&id, delivery.delivered, &reason, delivery.stream_seq)
                        .await
                }
                other => other,
            },
            Event::RequestRevoking { .. } => self.revoke(&id, delivery.stream_seq).await,
            other => Outcome::dead_letter(format!(
                "the governance-applier does not handle {}",
                other.kind()
            )),
        }
    }
}
