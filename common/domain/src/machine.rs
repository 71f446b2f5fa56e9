//! The request state machine: a pure function from `(record, command, now, policy)` to the
//! next record and the effects to carry out, or a refusal.
//!
//! Nothing here performs I/O. A shell (a worker or an ingress route) loads the record,
//! calls [`step`], writes the new record with compare-and-set (re-reading and stepping
//! again if it lost), and only then carries out the [`Effect`]s: publish an event, call the
//! governance API, dead-letter a message. This is the shape of raft-rs's `Ready`: the
//! machine says what must happen, the caller does it and reports back with the next
//! command.
//!
//! The record and the events agree by construction: [`step`] decides which events a
//! command causes and computes the next record by folding them with [`evolve`], so the
//! audit stream replays to the state the record holds (a property test checks it).
//!
//! A *repeat* (`changed == false` with effects) is how lost work heals: a redelivered
//! decision, a second cancel or a redelivered grant order re-emits the event it caused
//! the first time. Its `Nats-Msg-Id` ([`Dedupe`]) makes the stream keep one copy.

use std::time::Duration;

use time::OffsetDateTime;

use crate::events::{Decision, Envelope, Event};
use crate::ids::{Justification, Permission, RequestId, TenantName, Username};
use crate::record::{Outgoing, RequestRecord, RequestStatus, Source};

/// The actor TARS records for the steps it takes itself (expiry, governance outcomes).
pub const SYSTEM_ACTOR: &str = "tars";

/// The approver recorded for requests the policy approves without a human.
pub const POLICY_ACTOR: &str = "policy";

/// What the approval policy says about a new request, fixed at submit so a policy
/// changed while it waits does not change what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intake {
    /// Distinct approvals it needs.
    pub approvals_required: u32,
    /// Approved at once, without a human (`decided_by: policy`).
    pub auto_approve: bool,
    /// The Slack channel of its approval message, when the policy names one.
    pub approval_channel: Option<String>,
}

impl Default for Intake {
    /// One approval, nobody automatic, the default channel.
    fn default() -> Self {
        Self {
            approvals_required: 1,
            auto_approve: false,
            approval_channel: None,
        }
    }
}

/// The rules the machine applies that come from configuration. Approval policy (who may
/// approve which tenant, how many approvals) joins here, so every shell that steps the
/// machine applies the same rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A pending request older than this expires (`REQUEST_TTL`).
    pub request_ttl: Duration,
    /// A pending request gets a reminder in its thread once per this (`REMINDER_INTERVAL`).
    pub reminder_interval: Duration,
    /// The requester is warned this long before time-bound access ends
    /// (`ACCESS_EXPIRY_WARNING`).
    pub access_expiry_warning: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            request_ttl: Duration::from_secs(7 * 86_400),
            reminder_interval: Duration::from_secs(86_400),
            access_expiry_warning: Duration::from_secs(86_400),
        }
    }
}

/// Something that happened to a request, asking the machine for its next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An approver decided (the ingress checked they may).
    Decide {
        /// Approve or deny.
        decision: Decision,
        /// The KBase username recorded as the decider.
        by: Username,
        /// Slack or REST.
        source: Source,
    },
    /// Somebody asked to withdraw the request.
    Cancel {
        /// Who asked (only the requester may).
        by: Username,
    },
    /// The expiry sweep found the request; it expires if it is pending past the TTL.
    Expire,
    /// The governance-applier took the grant order and is about to carry it out.
    StartGrant,
    /// The governance API granted the membership (or the user already had it).
    Granted {
        /// Whether this call added the membership (`false`: it was there already). The
        /// machine counts it as added all the same when an earlier attempt was recorded
        /// (that attempt may have added it, its answer lost), so that revoking removes
        /// what TARS may have granted and leaves alone only what it certainly did not.
        added: bool,
    },
    /// The governance API refused, or retries ran out.
    GrantFailed {
        /// What it said.
        reason: String,
    },
    /// An admin or the requester asked to end applied access now (the shell checked
    /// that they may).
    Revoke {
        /// Who asked.
        by: Username,
        /// Their words, if any.
        reason: Option<String>,
    },
    /// The access sweep found applied time-bound access; it ends if its time has passed.
    EndAccess,
    /// The governance-applier took the revocation order and is about to carry it out.
    StartRevoke,
    /// The governance API removed the membership (or it was gone), or TARS left it
    /// (`left_alone` says why: the user holds another level now).
    AccessRemoved {
        /// Why nothing was removed, when nothing was.
        left_alone: Option<String>,
    },
    /// The access sweep found applied time-bound access; the requester is warned once
    /// when less than `warning` is left (not for grants shorter than twice `warning`).
    WarnAccessEnding {
        /// `ACCESS_EXPIRY_WARNING`.
        warning: Duration,
    },
    /// The expiry sweep found a request still pending; approvers are reminded once per
    /// `interval` it waits.
    Remind {
        /// `REMINDER_INTERVAL`.
        interval: Duration,
    },
}

/// A governance membership: who joins which tenant with which access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The requester.
    pub user: Username,
    /// The tenant.
    pub tenant: TenantName,
    /// The access level.
    pub permission: Permission,
}

impl Membership {
    /// The membership a record asks for.
    pub fn of(record: &RequestRecord) -> Self {
        Self {
            user: record.requester.clone(),
            tenant: record.tenant_name.clone(),
            permission: record.permission,
        }
    }

    /// The governance group that grants it (the group API's naming).
    pub fn group(&self) -> String {
        self.permission.group_for(&self.tenant)
    }
}

/// How an emitted event's `Nats-Msg-Id` is formed, so a repeat is stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// `<request_id>.<type>`: a state transition happens once per request.
    Transition,
    /// `<request_id>.<type>.<cause>`, where the shell supplies the stream sequence of the
    /// message that caused it: an outcome that may happen again (a refused decision, a
    /// failure after a replay) is kept once per cause.
    PerCause,
    /// `<request_id>.<type>.<actor>`: one approver's partial approval is kept once
    /// however often they click.
    PerActor,
    /// `<request_id>.<type>.<n>`: the n-th of a repeated step (a reminder) is kept once.
    Nth(u32),
}

/// An event to append to `TARS_EVENTS`.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// The event.
    pub event: Event,
    /// Who caused it: a username, or [`SYSTEM_ACTOR`].
    pub actor: String,
    /// How its message id is formed.
    pub dedupe: Dedupe,
}

impl Emit {
    /// The `Nats-Msg-Id` of this event about `request_id`; `cause` is the stream sequence
    /// of the message being handled (ignored for transitions).
    pub fn msg_id(&self, request_id: &RequestId, cause: u64) -> String {
        match self.dedupe {
            Dedupe::Transition => format!("{request_id}.{}", self.event.kind()),
            Dedupe::PerCause => format!("{request_id}.{}.{cause}", self.event.kind()),
            Dedupe::PerActor => format!("{request_id}.{}.{}", self.event.kind(), self.actor),
            Dedupe::Nth(n) => format!("{request_id}.{}.{n}", self.event.kind()),
        }
    }
}

/// Work the shell carries out after the new record is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish an event (the audit trail, and what the next worker reacts to).
    Emit(Emit),
    /// Add the membership in the governance API, then step [`Command::Granted`] or
    /// [`Command::GrantFailed`].
    Grant(Membership),
    /// Remove the membership from the governance API, then step
    /// [`Command::AccessRemoved`].
    Revoke(Membership),
    /// Dead-letter the message that caused this step, so an admin can replay it.
    DeadLetter(String),
}

/// The machine's answer to a command it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The record after the command.
    pub record: RequestRecord,
    /// Whether the record changed (and must be written); `false` is a repeat.
    pub changed: bool,
    /// What to carry out once the record is written, in order.
    pub effects: Vec<Effect>,
}

impl Step {
    /// Moves the events of a changed step into its record's outbox, so they are written in
    /// the same compare-and-set as the change, and returns the record with the effects left
    /// for the shell (a governance call, a dead letter). An unchanged step (a repeat) keeps
    /// its events as effects: nothing is written, so the shell publishes them itself.
    ///
    /// `cause` is the stream sequence of the message being handled (0 outside a worker),
    /// `at` the time of the step, `traceparent` the trace of the call that caused it.
    pub fn into_outbox(
        self,
        cause: u64,
        at: OffsetDateTime,
        traceparent: Option<String>,
    ) -> (RequestRecord, Vec<Effect>) {
        let mut record = self.record;
        if !self.changed {
            return (record, self.effects);
        }
        let id = record.request_id.clone();
        let mut rest = Vec::new();
        record.outbox = Vec::new();
        for effect in self.effects {
            match effect {
                Effect::Emit(e) => record.outbox.push(Outgoing {
                    msg_id: e.msg_id(&id, cause),
                    traceparent: traceparent.clone(),
                    envelope: Envelope::at(id.clone(), e.actor, e.event, at).about(&record),
                }),
                other => rest.push(other),
            }
        }
        (record, rest)
    }
}

/// Why the machine refused a command; the message is written for the person who asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A requester may never approve or deny their own request.
    #[error("you may not decide your own request")]
    OwnRequest,
    /// Only the requester may cancel.
    #[error("only the requester may cancel a request")]
    NotRequester,
    /// The request is past the point where this command applies.
    #[error("already {status}{}", by.as_deref().map(|b| format!(" (by {b})")).unwrap_or_default())]
    Settled {
        /// Where it stands.
        status: RequestStatus,
        /// Who decided it, if anybody did.
        by: Option<String>,
    },
    /// The grant order arrived before the approval is visible (a stale read): try later.
    #[error("the request is not approved yet")]
    NotApproved,
    /// The sweep looked at a pending request that is not old enough to expire, or at
    /// access whose time has not run out.
    #[error("the request is not due to expire")]
    NotDue,
    /// This approver's approval is counted already; the request needs more approvers.
    #[error("your approval is counted already; it needs approvals from others")]
    AlreadyCounted,
    /// Only applied access can be revoked.
    #[error("only applied access can be revoked; this request is {status}")]
    NotApplied {
        /// Where it stands.
        status: RequestStatus,
    },
}

/// The reason recorded when time-bound access runs out.
pub const EXPIRED_REASON: &str = "expired";

/// A new request and the `request.submitted` event that announces it: pending, or, when
/// the policy approves it without a human, approved by [`POLICY_ACTOR`] in the same write.
#[allow(clippy::too_many_arguments)]
pub fn submit(
    request_id: RequestId,
    requester: Username,
    tenant_name: TenantName,
    permission: Permission,
    justification: Option<Justification>,
    access_duration: Option<Duration>,
    intake: &Intake,
    now: OffsetDateTime,
) -> Step {
    let mut record = RequestRecord::new_pending(
        request_id,
        requester,
        tenant_name,
        permission,
        justification,
        now,
    );
    record.access_duration_secs = access_duration.map(|d| d.as_secs());
    record.approvals_required = intake.approvals_required.max(1);
    record.approval_channel = intake.approval_channel.clone();
    let mut effects = vec![Effect::Emit(Emit {
        event: Event::submitted(&record),
        actor: record.requester.to_string(),
        dedupe: Dedupe::Transition,
    })];
    if intake.auto_approve
        && let Ok(policy) = Username::parse(POLICY_ACTOR)
    {
        let approved = Event::RequestApproved {
            by: policy,
            source: Source::System,
        };
        record = evolve(&record, &approved, POLICY_ACTOR, now);
        effects.push(Effect::Emit(transition(approved, POLICY_ACTOR)));
    }
    Step {
        record,
        changed: true,
        effects,
    }
}

fn transition(event: Event, actor: impl Into<String>) -> Emit {
    Emit {
        event,
        actor: actor.into(),
        dedupe: Dedupe::Transition,
    }
}

fn settled(r: &RequestRecord) -> Refusal {
    Refusal::Settled {
        status: r.status,
        by: r.decided_by.clone(),
    }
}

/// The events `cmd` causes on `r`, and any effects beyond publishing them.
fn consequences(
    r: &RequestRecord,
    cmd: &Command,
    now: OffsetDateTime,
    policy: &Policy,
) -> Result<(Vec<Emit>, Vec<Effect>), Refusal> {
    use RequestStatus as S;
    let applied = |added: bool| Event::RequestApplied {
        group: Membership::of(r).group(),
        added,
    };
    let revoking = |reason: &str, actor: &str| {
        Ok((
            vec![transition(
                Event::RequestRevoking {
                    reason: reason.to_owned(),
                },
                actor,
            )],
            vec![],
        ))
    };
    let revoked = |left_alone: Option<String>| {
        transition(
            Event::RequestRevoked {
                reason: r.revoked_reason.clone().unwrap_or_default(),
                left_alone,
            },
            SYSTEM_ACTOR,
        )
    };
    match cmd {
        Command::Decide {
            decision,
            by,
            source,
        } => {
            if *by == r.requester {
                return Err(Refusal::OwnRequest);
            }
            let event = match decision {
                Decision::Approve => Event::RequestApproved {
                    by: by.clone(),
                    source: *source,
                },
                Decision::Deny => Event::RequestDenied {
                    by: by.clone(),
                    source: *source,
                },
            };
            let same_decider = r.decided_by.as_deref() == Some(by.as_str());
            let approved_already = r.approvals.iter().any(|a| a.by == by.as_str());
            let consistent = match decision {
                Decision::Approve => matches!(r.status, S::Approved | S::Applied | S::Failed),
                Decision::Deny => r.status == S::Denied,
            };
            let partial = || Emit {
                event: Event::RequestApprovalAdded {
                    by: by.clone(),
                    source: *source,
                },
                actor: by.to_string(),
                dedupe: Dedupe::PerActor,
            };
            match (r.status, decision) {
                // The same approver twice counts once: a repeat of their approval.
                (S::Pending, Decision::Approve) if approved_already => {
                    Ok((vec![partial()], vec![]))
                }
                // Not enough distinct approvals yet: recorded, still pending.
                (S::Pending, Decision::Approve)
                    if (r.approvals.len() as u64) + 1 < u64::from(r.approvals_required) =>
                {
                    Ok((vec![partial()], vec![]))
                }
                // Pending: the decision wins (a deny by any approver ends it).
                (S::Pending, _) => Ok((vec![transition(event, by.as_str())], vec![])),
                // Decided by this decider the same way: a redelivery, which re-emits its
                // event in case it was lost.
                _ if same_decider && consistent => {
                    Ok((vec![transition(event, by.as_str())], vec![]))
                }
                // An earlier approver of an approved request: nothing to do.
                (_, Decision::Approve) if approved_already && consistent => Ok((vec![], vec![])),
                _ => Err(settled(r)),
            }
        }
        Command::Cancel { by } => {
            if *by != r.requester {
                return Err(Refusal::NotRequester);
            }
            match r.status {
                S::Pending | S::Cancelled => Ok((
                    vec![transition(Event::RequestCancelled {}, by.as_str())],
                    vec![],
                )),
                _ => Err(settled(r)),
            }
        }
        Command::Expire => match r.status {
            S::Pending if r.created_at + policy.request_ttl > now => Err(Refusal::NotDue),
            S::Pending | S::Expired => Ok((
                vec![transition(Event::RequestExpired {}, SYSTEM_ACTOR)],
                vec![],
            )),
            _ => Err(settled(r)),
        },
        Command::StartGrant => match r.status {
            // Failed: a replayed dead letter asks to try again.
            S::Approved | S::Failed => Ok((vec![], vec![Effect::Grant(Membership::of(r))])),
            // Granted already; the applied event may have been lost: emit it again.
            S::Applied => Ok((
                vec![transition(applied(r.membership_added), SYSTEM_ACTOR)],
                vec![],
            )),
            S::Pending => Err(Refusal::NotApproved),
            _ => Err(settled(r)),
        },
        Command::Granted { added } => match r.status {
            S::Approved | S::Failed => Ok((
                vec![transition(
                    applied(*added || r.grant_attempts > 1),
                    SYSTEM_ACTOR,
                )],
                vec![],
            )),
            // A repeat keeps what the first outcome recorded.
            S::Applied => Ok((
                vec![transition(applied(r.membership_added), SYSTEM_ACTOR)],
                vec![],
            )),
            _ => Err(settled(r)),
        },
        Command::GrantFailed { reason } => match r.status {
            S::Approved | S::Failed => {
                let failed = Emit {
                    event: Event::RequestFailed {
                        reason: reason.clone(),
                    },
                    actor: SYSTEM_ACTOR.into(),
                    dedupe: Dedupe::PerCause,
                };
                Ok((vec![failed], vec![Effect::DeadLetter(reason.clone())]))
            }
            _ => Err(settled(r)),
        },
        Command::Revoke { by, reason } => match r.status {
            S::Applied => revoking(reason.as_deref().unwrap_or("revoked"), by.as_str()),
            // Asked again while it is being carried out: the event may have been lost.
            S::Revoking if r.revoked_by.as_deref() == Some(by.as_str()) => revoking(
                r.revoked_reason.as_deref().unwrap_or("revoked"),
                by.as_str(),
            ),
            status => Err(Refusal::NotApplied { status }),
        },
        Command::EndAccess => match (r.status, r.access_expires_at) {
            (S::Applied, Some(at)) if at <= now => revoking(EXPIRED_REASON, SYSTEM_ACTOR),
            (S::Applied, _) => Err(Refusal::NotDue),
            (S::Revoking, _) => revoking(
                r.revoked_reason.as_deref().unwrap_or(EXPIRED_REASON),
                r.revoked_by.as_deref().unwrap_or(SYSTEM_ACTOR),
            ),
            _ => Err(settled(r)),
        },
        Command::StartRevoke => match r.status {
            // A membership TARS did not add is not TARS's to remove.
            S::Revoking if !r.membership_added => Ok((
                vec![revoked(Some(
                    "the user had this access before TARS granted it; left as it was".into(),
                ))],
                vec![],
            )),
            S::Revoking => Ok((vec![], vec![Effect::Revoke(Membership::of(r))])),
            // Removed already; the revoked event may have been lost: emit it again.
            S::Revoked => Ok((vec![revoked(r.revoke_note.clone())], vec![])),
            _ => Err(settled(r)),
        },
        Command::AccessRemoved { left_alone } => match r.status {
            S::Revoking => Ok((vec![revoked(left_alone.clone())], vec![])),
            S::Revoked => Ok((vec![revoked(r.revoke_note.clone())], vec![])),
            _ => Err(settled(r)),
        },
        Command::WarnAccessEnding { warning } => {
            let warning = time::Duration::try_from(*warning).unwrap_or(time::Duration::MAX);
            match (r.status, r.access_expires_at, r.applied_at) {
                (S::Applied, Some(ends), Some(from))
                    if !r.expiry_warned
                        && now < ends
                        && now >= ends - warning
                        && ends - from >= warning * 2 =>
                {
                    Ok((
                        vec![transition(
                            Event::RequestAccessEnding { ends_at: ends },
                            SYSTEM_ACTOR,
                        )],
                        vec![],
                    ))
                }
                (S::Applied, _, _) => Err(Refusal::NotDue),
                _ => Err(settled(r)),
            }
        }
        Command::Remind { interval } => {
            let interval = time::Duration::try_from(*interval).unwrap_or(time::Duration::MAX);
            let n = r.reminders.saturating_add(1);
            match r.status {
                S::Pending if now >= r.created_at + interval * n => Ok((
                    vec![Emit {
                        event: Event::RequestReminded { n },
                        actor: SYSTEM_ACTOR.into(),
                        dedupe: Dedupe::Nth(n),
                    }],
                    vec![],
                )),
                S::Pending => Err(Refusal::NotDue),
                _ => Err(settled(r)),
            }
        }
    }
}

/// Applies `cmd` to `record` at `now` under `policy`.
///
/// `Ok` carries the next record and what to carry out; `changed == false` means a
/// repeat whose effects heal lost work. `Err` leaves the request as it is.
pub fn step(
    record: &RequestRecord,
    cmd: &Command,
    now: OffsetDateTime,
    policy: &Policy,
) -> Result<Step, Refusal> {
    let (emits, extra) = consequences(record, cmd, now, policy)?;
    // The previous revision's outbox was published from that revision; it is not part of
    // the state.
    let mut before = record.clone();
    before.outbox.clear();
    let mut next = before.clone();
    for e in &emits {
        next = evolve(&next, &e.event, &e.actor, now);
    }
    // A grant is recorded as attempted before it is carried out.
    if extra.iter().any(|e| matches!(e, Effect::Grant(_))) {
        next.grant_attempts = next.grant_attempts.saturating_add(1);
    }
    let changed = next != before;
    if changed {
        next.updated_at = now;
    }
    let mut effects: Vec<Effect> = emits.into_iter().map(Effect::Emit).collect();
    effects.extend(extra);
    Ok(Step {
        record: next,
        changed,
        effects,
    })
}

/// The event a refused decision leaves in the audit stream ("already approved by X" is
/// recorded, never applied); `None` for refusals of other commands.
pub fn rejection(cmd: &Command, refusal: &Refusal) -> Option<Emit> {
    let Command::Decide { decision, by, .. } = cmd else {
        return None;
    };
    let status = match refusal {
        Refusal::Settled { status, .. } => *status,
        Refusal::OwnRequest => RequestStatus::Pending,
        _ => return None,
    };
    Some(Emit {
        event: Event::DecisionRejected {
            decision: *decision,
            by: by.clone(),
            status,
        },
        actor: by.to_string(),
        dedupe: Dedupe::PerCause,
    })
}

/// What one event does to a record. Events that change nothing (a submission, a decision
/// request, a rejection, a repeat) leave it as it is, so the audit stream replays to the
/// record's state however often an event was emitted.
pub fn evolve(
    record: &RequestRecord,
    event: &Event,
    actor: &str,
    at: OffsetDateTime,
) -> RequestRecord {
    use RequestStatus as S;
    let mut r = record.clone();
    let mark = |r: &mut RequestRecord, by: &str, source: Source| {
        if r.status == S::Pending && !r.approvals.iter().any(|a| a.by == by) {
            r.approvals.push(crate::record::ApprovalMark {
                by: by.to_owned(),
                at,
                source,
            });
        }
    };
    let decide = |r: &mut RequestRecord, status: RequestStatus, by: &str, source: Source| {
        if r.status == S::Pending {
            r.status = status;
            r.decided_by = Some(by.to_owned());
            r.decided_at = Some(at);
            r.decision_source = Some(source);
        }
    };
    match event {
        Event::RequestApprovalAdded { by, source } => mark(&mut r, by.as_str(), *source),
        Event::RequestApproved { by, source } => {
            mark(&mut r, by.as_str(), *source);
            decide(&mut r, S::Approved, by.as_str(), *source);
        }
        Event::RequestDenied { by, source } => decide(&mut r, S::Denied, by.as_str(), *source),
        Event::RequestCancelled {} => decide(&mut r, S::Cancelled, actor, Source::Rest),
        Event::RequestExpired {} => decide(&mut r, S::Expired, SYSTEM_ACTOR, Source::System),
        Event::RequestApplied { added, .. } => {
            if matches!(r.status, S::Approved | S::Failed) {
                // After a failure an earlier attempt may have added the membership (its
                // answer lost): it counts as added, so revoking removes it.
                r.membership_added = *added || r.status == S::Failed;
                r.status = S::Applied;
                r.applied_at = Some(at);
                r.failure_reason = None;
                r.access_expires_at = r
                    .access_duration_secs
                    .and_then(|s| i64::try_from(s).ok())
                    .map(|s| at + time::Duration::seconds(s));
            }
        }
        Event::RequestRevoking { reason } => {
            if r.status == S::Applied {
                r.status = S::Revoking;
                r.revoked_by = Some(actor.to_owned());
                r.revoked_reason = Some(reason.clone());
            }
        }
        Event::RequestRevoked { left_alone, .. } => {
            if r.status == S::Revoking {
                r.status = S::Revoked;
                r.revoked_at = Some(at);
                r.revoke_note = left_alone.clone();
            }
        }
        Event::RequestAccessEnding { .. } => {
            if r.status == S::Applied {
                r.expiry_warned = true;
            }
        }
        Event::RequestReminded { n } => {
            if r.status == S::Pending {
                r.reminders = r.reminders.max(*n);
            }
        }
        Event::RequestFailed { reason } => {
            if matches!(r.status, S::Approved | S::Failed) {
                r.status = S::Failed;
                r.failure_reason = Some(reason.clone());
            }
        }
        Event::RequestSubmitted { .. }
        | Event::DecisionRequested { .. }
        | Event::DecisionRejected { .. } => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn fresh(requester: &str) -> RequestRecord {
        submit(
            RequestId::new(),
            user(requester),
            TenantName::parse("genomics").unwrap(),
            Permission::ReadOnly,
            None,
            None,
            &Intake::default(),
            t0(),
        )
        .record
    }

    fn approve(by: &str) -> Command {
        Command::Decide {
            decision: Decision::Approve,
            by: user(by),
            source: Source::Slack,
        }
    }

    #[test]
    fn an_approval_moves_pending_to_approved_and_emits_it() {
        let r = fresh("alice");
        let s = step(&r, &approve("bob"), t0(), &Policy::default()).unwrap();
        assert!(s.changed);
        assert_eq!(s.record.status, RequestStatus::Approved);
        assert_eq!(s.record.decided_by.as_deref(), Some("bob"));
        assert!(matches!(
            &s.effects[..],
            [Effect::Emit(Emit {
                event: Event::RequestApproved { .. },
                dedupe: Dedupe::Transition,
                ..
            })]
        ));
    }

    #[test]
    fn a_second_decider_is_refused_and_the_refusal_is_audited() {
        let r = step(&fresh("alice"), &approve("bob"), t0(), &Policy::default())
            .unwrap()
            .record;
        let deny = Command::Decide {
            decision: Decision::Deny,
            by: user("carol"),
            source: Source::Rest,
        };
        let refusal = step(&r, &deny, t0(), &Policy::default()).unwrap_err();
        assert_eq!(refusal.to_string(), "already approved (by bob)");
        let audit = rejection(&deny, &refusal).unwrap();
        assert_eq!(audit.dedupe, Dedupe::PerCause);
        assert!(matches!(
            audit.event,
            Event::DecisionRejected {
                status: RequestStatus::Approved,
                ..
            }
        ));
    }

    #[test]
    fn a_redelivered_approval_repeats_its_event_without_changing_anything() {
        let r = step(&fresh("alice"), &approve("bob"), t0(), &Policy::default())
            .unwrap()
            .record;
        let again = step(&r, &approve("bob"), t0(), &Policy::default()).unwrap();
        assert!(!again.changed);
        assert_eq!(again.record, r);
        assert_eq!(again.effects.len(), 1);
    }

    #[test]
    fn expiry_waits_for_the_ttl() {
        let p = Policy {
            request_ttl: Duration::from_secs(60),
            ..Policy::default()
        };
        let r = fresh("alice");
        let early = t0() + time::Duration::seconds(59);
        assert_eq!(step(&r, &Command::Expire, early, &p), Err(Refusal::NotDue));
        let due = t0() + time::Duration::seconds(60);
        let s = step(&r, &Command::Expire, due, &p).unwrap();
        assert_eq!(s.record.status, RequestStatus::Expired);
        assert_eq!(s.record.decided_by.as_deref(), Some(SYSTEM_ACTOR));
    }

    #[test]
    fn access_found_in_place_is_tars_s_only_when_an_earlier_attempt_was_recorded() {
        let p = Policy::default();
        let approved = step(&fresh("alice"), &approve("bob"), t0(), &p)
            .unwrap()
            .record;
        let first = step(&approved, &Command::StartGrant, t0(), &p)
            .unwrap()
            .record;
        let there = Command::Granted { added: false };
        // The first attempt finds the access in place: it was not TARS's doing.
        let found = step(&first, &there, t0(), &p).unwrap().record;
        assert!(!found.membership_added);
        // A second attempt (a redelivery, a replay, a probe after an outage) finds it
        // in place: the first may have added it, its answer lost.
        let second = step(&first, &Command::StartGrant, t0(), &p).unwrap().record;
        assert_eq!(second.grant_attempts, 2);
        let found = step(&second, &there, t0(), &p).unwrap().record;
        assert!(found.membership_added);
        // Whoever added it, an added membership is TARS's.
        let added = step(&first, &Command::Granted { added: true }, t0(), &p)
            .unwrap()
            .record;
        assert!(added.membership_added);
    }

    #[test]
    fn a_grant_order_becomes_one_governance_call_and_its_outcome() {
        let p = Policy::default();
        let r = step(&fresh("alice"), &approve("bob"), t0(), &p)
            .unwrap()
            .record;
        let start = step(&r, &Command::StartGrant, t0(), &p).unwrap();
        assert!(start.changed, "the attempt is recorded before the call");
        assert_eq!(start.record.grant_attempts, 1);
        assert_eq!(start.effects, vec![Effect::Grant(Membership::of(&r))]);
        let failed = step(
            &r,
            &Command::GrantFailed {
                reason: "no such group".into(),
            },
            t0(),
            &p,
        )
        .unwrap();
        assert_eq!(failed.record.status, RequestStatus::Failed);
        assert!(
            failed
                .effects
                .contains(&Effect::DeadLetter("no such group".into()))
        );
        // A replayed dead letter tries again, and success clears the reason.
        let retry = step(&failed.record, &Command::StartGrant, t0(), &p).unwrap();
        assert!(matches!(retry.effects[..], [Effect::Grant(_)]));
        let applied = step(&failed.record, &Command::Granted { added: true }, t0(), &p).unwrap();
        assert_eq!(applied.record.status, RequestStatus::Applied);
        assert_eq!(applied.record.failure_reason, None);
        // Once applied, a grant order only re-emits the outcome.
        let late = step(&applied.record, &Command::StartGrant, t0(), &p).unwrap();
        assert!(late.effects.iter().all(|e| !matches!(e, Effect::Grant(_))));
    }

    #[test]
    fn only_the_requester_cancels_and_only_while_pending() {
        let p = Policy::default();
        let r = fresh("alice");
        let by = |u: &str| Command::Cancel { by: user(u) };
        assert_eq!(step(&r, &by("bob"), t0(), &p), Err(Refusal::NotRequester));
        let c = step(&r, &by("alice"), t0(), &p).unwrap();
        assert_eq!(c.record.status, RequestStatus::Cancelled);
        let again = step(&c.record, &by("alice"), t0(), &p).unwrap();
        assert!(!again.changed, "a second cancel is a repeat");
        let approved = step(&r, &approve("bob"), t0(), &p).unwrap().record;
        assert!(matches!(
            step(&approved, &by("alice"), t0(), &p),
            Err(Refusal::Settled { .. })
        ));
    }

    #[test]
    fn a_change_carries_its_events_in_the_record_and_a_repeat_does_not() {
        let p = Policy::default();
        let r = fresh("alice");
        let (rec, rest) = step(&r, &approve("bob"), t0(), &p).unwrap().into_outbox(
            7,
            t0(),
            Some("00-t-s-01".into()),
        );
        assert!(rest.is_empty());
        assert_eq!(rec.outbox.len(), 1);
        assert_eq!(
            rec.outbox[0].msg_id,
            format!("{}.request.approved", r.request_id)
        );
        assert_eq!(rec.outbox[0].envelope.at, t0());
        // The next step starts from a clean outbox; a repeat writes nothing and hands its
        // events back to the shell.
        let again = step(&rec, &approve("bob"), t0(), &p).unwrap();
        assert!(!again.changed);
        let (_, rest) = again.into_outbox(8, t0(), None);
        assert!(matches!(rest[..], [Effect::Emit(_)]));
        let granted = step(&rec, &Command::Granted { added: true }, t0(), &p).unwrap();
        assert!(
            granted.record.outbox.is_empty(),
            "a step starts from a clean outbox"
        );
        let (applied, _) = granted.into_outbox(9, t0(), None);
        assert_eq!(applied.outbox.len(), 1, "only this step's event");
    }

    fn applied_for(duration: Option<Duration>, added: bool) -> RequestRecord {
        let p = Policy::default();
        let r = submit(
            RequestId::new(),
            user("alice"),
            TenantName::parse("genomics").unwrap(),
            Permission::ReadOnly,
            None,
            duration,
            &Intake::default(),
            t0(),
        )
        .record;
        let r = step(&r, &approve("bob"), t0(), &p).unwrap().record;
        step(&r, &Command::Granted { added }, t0(), &p)
            .unwrap()
            .record
    }

    #[test]
    fn time_bound_access_ends_at_its_time_through_one_governance_call() {
        let p = Policy::default();
        let r = applied_for(Some(Duration::from_secs(3600)), true);
        let end = t0() + time::Duration::hours(1);
        assert_eq!(r.access_expires_at, Some(end));
        let early = end - time::Duration::seconds(1);
        assert_eq!(
            step(&r, &Command::EndAccess, early, &p),
            Err(Refusal::NotDue)
        );
        let s = step(&r, &Command::EndAccess, end, &p).unwrap();
        assert_eq!(s.record.status, RequestStatus::Revoking);
        assert_eq!(s.record.revoked_by.as_deref(), Some(SYSTEM_ACTOR));
        assert_eq!(s.record.revoked_reason.as_deref(), Some(EXPIRED_REASON));
        let order = step(&s.record, &Command::StartRevoke, end, &p).unwrap();
        assert_eq!(order.effects, vec![Effect::Revoke(Membership::of(&r))]);
        let done = step(
            &s.record,
            &Command::AccessRemoved { left_alone: None },
            end,
            &p,
        )
        .unwrap();
        assert_eq!(done.record.status, RequestStatus::Revoked);
        assert_eq!(done.record.revoked_at, Some(end));
        // A redelivered order after the removal only re-emits the outcome.
        let late = step(&done.record, &Command::StartRevoke, end, &p).unwrap();
        assert!(!late.changed);
        assert!(late.effects.iter().all(|e| !matches!(e, Effect::Revoke(_))));
    }

    #[test]
    fn permanent_access_never_ends_on_its_own_and_early_revokes_need_applied_access() {
        let p = Policy::default();
        let r = applied_for(None, true);
        assert_eq!(r.access_expires_at, None);
        let far = t0() + time::Duration::days(10_000);
        assert_eq!(step(&r, &Command::EndAccess, far, &p), Err(Refusal::NotDue));
        let revoke = Command::Revoke {
            by: user("bob"),
            reason: Some("left the lab".into()),
        };
        let s = step(&r, &revoke, t0(), &p).unwrap();
        assert_eq!(s.record.status, RequestStatus::Revoking);
        assert_eq!(s.record.revoked_by.as_deref(), Some("bob"));
        assert_eq!(s.record.revoked_reason.as_deref(), Some("left the lab"));
        let pending = fresh("alice");
        assert_eq!(
            step(&pending, &revoke, t0(), &p),
            Err(Refusal::NotApplied {
                status: RequestStatus::Pending
            })
        );
    }

    #[test]
    fn a_membership_tars_did_not_add_is_left_alone_when_access_ends() {
        let p = Policy::default();
        let r = applied_for(Some(Duration::from_secs(60)), false);
        let end = t0() + time::Duration::minutes(1);
        let s = step(&r, &Command::EndAccess, end, &p).unwrap().record;
        let order = step(&s, &Command::StartRevoke, end, &p).unwrap();
        assert!(
            order
                .effects
                .iter()
                .all(|e| !matches!(e, Effect::Revoke(_)))
        );
        assert_eq!(order.record.status, RequestStatus::Revoked);
    }

    fn needing(approvals: u32, auto: bool) -> RequestRecord {
        submit(
            RequestId::new(),
            user("alice"),
            TenantName::parse("genomics").unwrap(),
            Permission::ReadWrite,
            None,
            None,
            &Intake {
                approvals_required: approvals,
                auto_approve: auto,
                approval_channel: None,
            },
            t0(),
        )
        .record
    }

    #[test]
    fn two_distinct_approvers_approve_and_one_twice_counts_once() {
        let p = Policy::default();
        let r = needing(2, false);
        let first = step(&r, &approve("bob"), t0(), &p).unwrap();
        assert!(first.changed);
        assert_eq!(first.record.status, RequestStatus::Pending);
        assert_eq!(first.record.approvals.len(), 1);
        assert!(matches!(
            &first.effects[..],
            [Effect::Emit(Emit {
                event: Event::RequestApprovalAdded { .. },
                dedupe: Dedupe::PerActor,
                ..
            })]
        ));
        let again = step(&first.record, &approve("bob"), t0(), &p).unwrap();
        assert!(!again.changed, "the same approver twice counts once");
        let second = step(&first.record, &approve("carol"), t0(), &p).unwrap();
        assert_eq!(second.record.status, RequestStatus::Approved);
        assert_eq!(second.record.decided_by.as_deref(), Some("carol"));
        let by: Vec<&str> = second
            .record
            .approvals
            .iter()
            .map(|a| a.by.as_str())
            .collect();
        assert_eq!(by, ["bob", "carol"]);
        // A late click of the first approver changes nothing and is not a refusal.
        let late = step(&second.record, &approve("bob"), t0(), &p).unwrap();
        assert!(!late.changed && late.effects.is_empty());
    }

    #[test]
    fn a_deny_by_any_approver_ends_a_partly_approved_request() {
        let p = Policy::default();
        let r = step(&needing(2, false), &approve("bob"), t0(), &p)
            .unwrap()
            .record;
        let deny = Command::Decide {
            decision: Decision::Deny,
            by: user("carol"),
            source: Source::Rest,
        };
        let s = step(&r, &deny, t0(), &p).unwrap();
        assert_eq!(s.record.status, RequestStatus::Denied);
        assert_eq!(s.record.decided_by.as_deref(), Some("carol"));
    }

    #[test]
    fn the_policy_approves_at_submit_in_the_same_write() {
        let r = needing(1, true);
        assert_eq!(r.status, RequestStatus::Approved);
        assert_eq!(r.decided_by.as_deref(), Some(POLICY_ACTOR));
        assert_eq!(r.decision_source, Some(Source::System));
        let s = submit(
            RequestId::new(),
            user("alice"),
            TenantName::parse("public").unwrap(),
            Permission::ReadOnly,
            None,
            None,
            &Intake {
                auto_approve: true,
                ..Intake::default()
            },
            t0(),
        );
        let kinds: Vec<&str> = s
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(em) => Some(em.event.kind()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["request.submitted", "request.approved"]);
    }

    const PEOPLE: [&str; 3] = ["alice", "bob", "carol"];

    fn any_command() -> impl Strategy<Value = Command> {
        let who = (0..PEOPLE.len()).prop_map(|i| user(PEOPLE[i]));
        prop_oneof![
            (any::<bool>(), who.clone(), any::<bool>()).prop_map(|(ok, by, slack)| {
                Command::Decide {
                    decision: if ok {
                        Decision::Approve
                    } else {
                        Decision::Deny
                    },
                    by,
                    source: if slack { Source::Slack } else { Source::Rest },
                }
            }),
            who.clone().prop_map(|by| Command::Cancel { by }),
            Just(Command::Expire),
            Just(Command::StartGrant),
            any::<bool>().prop_map(|added| Command::Granted { added }),
            prop_oneof![Just("refused"), Just("timeout")]
                .prop_map(|r| Command::GrantFailed { reason: r.into() }),
            (who.clone(), proptest::option::of(Just("done".to_owned())))
                .prop_map(|(by, reason)| Command::Revoke { by, reason }),
            Just(Command::EndAccess),
            Just(Command::StartRevoke),
            proptest::option::of(Just("left".to_owned()))
                .prop_map(|left_alone| Command::AccessRemoved { left_alone }),
            (1u64..500).prop_map(|s| Command::WarnAccessEnding {
                warning: Duration::from_secs(s)
            }),
            (1u64..500).prop_map(|s| Command::Remind {
                interval: Duration::from_secs(s)
            }),
        ]
    }

    /// The edges of the lifecycle; a changed step moves along exactly one of them.
    fn allowed(from: RequestStatus, to: RequestStatus) -> bool {
        use RequestStatus as S;
        matches!(
            (from, to),
            (
                S::Pending,
                S::Approved | S::Denied | S::Cancelled | S::Expired
            ) | (S::Approved, S::Applied | S::Failed)
                | (S::Failed, S::Applied | S::Failed)
                | (S::Applied, S::Revoking)
                | (S::Revoking, S::Revoked)
        )
    }

    fn projection(r: &RequestRecord) -> impl PartialEq + std::fmt::Debug {
        (
            r.status,
            r.decided_by.clone(),
            r.decided_at,
            r.decision_source,
            r.applied_at,
            r.failure_reason.clone(),
            r.access_expires_at,
            r.membership_added,
            r.approvals.clone(),
            (r.revoked_by.clone(), r.revoked_reason.clone(), r.revoked_at),
            (r.expiry_warned, r.reminders),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For any sequence of commands: a terminal state never changes, every change
        /// follows an edge of the lifecycle, at most one decision wins, the requester never
        /// decides, no governance call is ordered once the grant is applied, and the
        /// emitted events replay to the record.
        #[test]
        fn the_rules_hold_for_any_sequence(
            requester in 0..PEOPLE.len(),
            ttl_secs in 1u64..1_000,
            duration in proptest::option::of(1u64..2_000),
            required in 1u32..4,
            auto in proptest::bool::weighted(0.1),
            script in proptest::collection::vec((any_command(), 0i64..400), 1..40),
        ) {
            let policy = Policy { request_ttl: Duration::from_secs(ttl_secs), ..Policy::default() };
            let mut history: Vec<(Event, String, OffsetDateTime)> = Vec::new();
            let first = submit(
                RequestId::new(),
                user(PEOPLE[requester]),
                TenantName::parse("genomics").unwrap(),
                Permission::ReadWrite,
                None,
                duration.map(Duration::from_secs),
                &Intake { approvals_required: required, auto_approve: auto, approval_channel: None },
                t0(),
            );
            prop_assert_eq!(first.record.status == RequestStatus::Approved, auto);
            let initial = RequestRecord {
                status: RequestStatus::Pending,
                decided_by: None,
                decided_at: None,
                decision_source: None,
                approvals: Vec::new(),
                ..first.record.clone()
            };
            for e in &first.effects {
                if let Effect::Emit(em) = e {
                    history.push((em.event.clone(), em.actor.clone(), t0()));
                }
            }
            let mut record = first.record;
            let mut now = t0();
            let mut winning_decisions = 0;
            let mut ever_applied = false;
            for (cmd, advance) in script {
                now += time::Duration::seconds(advance);
                let before = record.clone();
                let result = step(&before, &cmd, now, &policy);
                if let Command::Decide { by, .. } = &cmd
                    && *by == before.requester
                {
                    prop_assert_eq!(&result, &Err(Refusal::OwnRequest));
                }
                let Ok(s) = result else { continue };
                if before.status.is_terminal() {
                    prop_assert!(!s.changed, "terminal {} changed by {:?}", before.status, cmd);
                    prop_assert_eq!(&s.record, &before);
                }
                if s.changed {
                    prop_assert!(
                        allowed(before.status, s.record.status) || before.status == s.record.status,
                        "{} -> {} by {:?}", before.status, s.record.status, cmd
                    );
                    // The store's index repair relies on `successors` never missing an
                    // edge the machine takes.
                    prop_assert!(
                        before.status == s.record.status
                            || before.status.successors().contains(&s.record.status),
                        "{} -> {} not in successors", before.status, s.record.status
                    );
                    if before.status == RequestStatus::Pending && s.record.status != RequestStatus::Pending {
                        winning_decisions += 1;
                    }
                    if before.status == RequestStatus::Pending && s.record.status == RequestStatus::Approved {
                        let distinct: std::collections::BTreeSet<&str> =
                            s.record.approvals.iter().map(|a| a.by.as_str()).collect();
                        prop_assert_eq!(distinct.len(), s.record.approvals.len(), "an approver counted twice");
                        prop_assert!(distinct.len() as u32 >= required, "approved with {} of {}", distinct.len(), required);
                    }
                    prop_assert!(
                        s.record.approvals.iter().all(|a| a.by != s.record.requester.as_str()),
                        "the requester approved their own request"
                    );
                } else {
                    prop_assert_eq!(&s.record, &before);
                }
                for e in &s.effects {
                    match e {
                        Effect::Grant(m) => {
                            prop_assert!(!ever_applied, "governance ordered again after applied");
                            prop_assert!(matches!(before.status, RequestStatus::Approved | RequestStatus::Failed));
                            prop_assert_eq!(m, &Membership::of(&before));
                        }
                        Effect::Revoke(m) => {
                            prop_assert_eq!(before.status, RequestStatus::Revoking);
                            prop_assert!(before.membership_added, "a membership TARS did not add is removed");
                            prop_assert_eq!(m, &Membership::of(&before));
                        }
                        Effect::Emit(em) => history.push((em.event.clone(), em.actor.clone(), now)),
                        Effect::DeadLetter(_) => {}
                    }
                }
                if s.changed && s.record.status == RequestStatus::Applied && before.status != RequestStatus::Applied {
                    let want = duration.map(|d| now + time::Duration::seconds(d as i64));
                    prop_assert_eq!(s.record.access_expires_at, want, "expiry is applied_at + duration");
                }
                if cmd == Command::EndAccess && s.changed {
                    prop_assert!(
                        before.access_expires_at.is_some_and(|at| at <= now),
                        "access ended before its time"
                    );
                }
                ever_applied |= s.record.status == RequestStatus::Applied;
                record = s.record;
            }
            prop_assert!(winning_decisions <= 1, "{} decisions won", winning_decisions);
            let replayed = history
                .iter()
                .fold(initial, |r, (e, actor, at)| evolve(&r, e, actor, *at));
            prop_assert_eq!(projection(&replayed), projection(&record));
        }
    }
}
