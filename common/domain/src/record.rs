//! The request record (the value under `<request_id>` in `TARS_REQUESTS`) and its states.
//!
//! The record is the current state; only [`crate::machine`] decides how its status moves.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{Justification, ParseError, Permission, RequestId, TenantName, Username};

/// Where a request stands; see the state machine in `docs/architecture.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for an approver.
    Pending,
    /// Approved; the governance-applier has not finished yet.
    Approved,
    /// An approver said no.
    Denied,
    /// The requester withdrew it while pending.
    Cancelled,
    /// Nobody decided within `REQUEST_TTL`.
    Expired,
    /// The governance API granted the membership.
    Applied,
    /// The governance API refused, or retries ran out; replaying the dead letter retries.
    Failed,
    /// Access is being removed (its time ran out, or an admin or the requester asked):
    /// the governance-applier carries it out.
    Revoking,
    /// Access was removed after being applied (time-bound access or an early revoke).
    Revoked,
}

impl RequestStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
        }
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Denied | Self::Cancelled | Self::Expired | Self::Revoked
        )
    }

    /// The statuses a request in this one may move to next: the lifecycle's edges (a
    /// superset of what the machine does, never less; the machine's property test checks
    /// every change it makes is among them).
    pub fn successors(self) -> &'static [RequestStatus] {
        use RequestStatus as S;
        match self {
            S::Pending => &[S::Approved, S::Denied, S::Cancelled, S::Expired],
            S::Approved => &[S::Applied, S::Failed],
            S::Failed => &[S::Approved, S::Applied, S::Failed],
            S::Applied => &[S::Revoking],
            S::Revoking => &[S::Revoked],
            S::Denied | S::Cancelled | S::Expired | S::Revoked => &[],
        }
    }

    /// Whether a request in this status may ever be in `other` (itself included): an
    /// index key for a status the record can never reach again is garbage for good.
    pub fn may_reach(self, other: RequestStatus) -> bool {
        let mut seen = vec![self];
        let mut i = 0;
        while let Some(&s) = seen.get(i) {
            for &n in s.successors() {
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            i += 1;
        }
        seen.contains(&other)
    }

    /// Every status, for metrics and filters.
    pub const ALL: [RequestStatus; 9] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Cancelled,
        Self::Expired,
        Self::Applied,
        Self::Failed,
        Self::Revoking,
        Self::Revoked,
    ];
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RequestStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError::new("status", format!("unknown status {s:?}")))
    }
}

/// Where a decision came from, recorded for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A click or modal in Slack.
    Slack,
    /// The REST API.
    Rest,
    /// TARS itself (expiry sweep, policy).
    System,
}

/// The Slack message that shows a request, so later events update it instead of posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackMessageRef {
    /// Channel id the message lives in.
    pub channel: String,
    /// The message timestamp Slack uses as its id.
    pub ts: String,
}

/// A notifier's lease on posting a request's first Slack message. Another attempt that
/// sees a live lease backs off; one that finds the lease expired, or marked unsure, first
/// looks for the message in the channel (by its metadata) and posts only if it is not
/// there, so a post whose answer was lost is never posted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackClaim {
    /// The posting attempt holding the lease (the fencing token: only it may release or
    /// mark the lease).
    pub by: String,
    /// When the lease was taken; it expires after the notifier's claim lease.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// When the first lease of this request was taken: a lookup searches the channel from
    /// here on.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// The holder's post failed in a way that may still have posted (a timeout, a lost
    /// answer): the next attempt must look before it posts.
    #[serde(default)]
    pub unsure: bool,
}

/// The current state of one request: the value under `<request_id>` in `TARS_REQUESTS`.
///
/// Every field added later must be optional (`#[serde(default)]`) so that records written by
/// older versions still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The record's schema version.
    pub v: u32,
    /// The request's id (also its KV key).
    pub request_id: RequestId,
    /// Who asked.
    pub requester: Username,
    /// For which tenant.
    pub tenant_name: TenantName,
    /// For which access.
    pub permission: Permission,
    /// The requester's reason, if any.
    #[serde(default)]
    pub justification: Option<Justification>,
    /// Where it stands.
    pub status: RequestStatus,
    /// When it was submitted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Who approved, denied, cancelled or expired it.
    #[serde(default)]
    pub decided_by: Option<String>,
    /// When that happened.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// Whether the decision came from Slack, REST or TARS itself.
    #[serde(default)]
    pub decision_source: Option<Source>,
    /// When the governance API granted the access.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub applied_at: Option<OffsetDateTime>,
    /// Why applying failed, as the governance API said it.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The Slack message that shows this request.
    #[serde(default)]
    pub slack: Option<SlackMessageRef>,
    /// A notifier's claim to post the first message.
    #[serde(default)]
    pub slack_claim: Option<SlackClaim>,
    /// How long the access should last once applied, if the requester asked for
    /// time-bound access (bounded by `MAX_ACCESS_DURATION`).
    #[serde(default)]
    pub access_duration_secs: Option<u64>,
    /// Distinct approvals this request needs (from the policy at submit; 1 without one).
    #[serde(default = "one")]
    pub approvals_required: u32,
    /// The approvals given so far, in order (the last one, reaching the count, approved it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalMark>,
    /// The requester's e-mail (from KBase at submit), to find them in Slack for DMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_email: Option<String>,
    /// The e-mails of the tenant's stewards when the policy names them as approvers (read
    /// at submit), so the approval message can mention them in Slack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steward_emails: Vec<String>,
    /// The notices already sent (a DM per outcome, a thread reply per reminder), so a
    /// redelivered event sends none again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices_sent: Vec<String>,
    /// Whether the requester was warned that time-bound access ends soon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expiry_warned: bool,
    /// Reminders posted in the approval message's thread while it waited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reminders: u32,
    /// The Slack channel the policy sends this tenant's requests to (else the notifier's
    /// `SLACK_CHANNEL_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_channel: Option<String>,
    /// When time-bound access ends: set when it is applied (`applied_at` plus the
    /// duration); the decision worker's sweep starts the revocation once it has passed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub access_expires_at: Option<OffsetDateTime>,
    /// Whether applying added a membership (`false`: the user already had this access or
    /// more, so revoking must leave the membership alone). Records from before this field
    /// read `true`.
    #[serde(default = "yes")]
    pub membership_added: bool,
    /// How many times the governance-applier set out to grant this request, recorded
    /// before each call: an attempt that finds the access in place after an earlier one
    /// may have added it (its answer lost) counts it as added, read from here and never
    /// guessed from a delivery count (Guarantee 9). Records from before this field read 0.
    #[serde(default)]
    pub grant_attempts: u32,
    /// Who started the revocation (`tars` when the access ran out).
    #[serde(default)]
    pub revoked_by: Option<String>,
    /// Why: `expired`, or the words of whoever revoked it early.
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// Why the membership was left in place instead of removed, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_note: Option<String>,
    /// When the governance API removed the access.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The events this revision's state change caused, written in the same compare-and-set
    /// as the change itself, so the change and the duty to announce it are one durable
    /// write. The relay publishes them from the bucket's stream; a write that is not a
    /// state change carries none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One approver's approval of a request that needs several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalMark {
    /// The approver's KBase username.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Slack or REST.
    pub source: Source,
}

/// One event waiting in a record's outbox, with the message id that keeps it once in
/// `TARS_EVENTS` however often it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// The W3C `traceparent` of the call that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The event.
    pub envelope: crate::events::Envelope,
}

impl RequestRecord {
    /// The current record schema version.
    pub const VERSION: u32 = 1;

    /// A new pending request.
    pub fn new_pending(
        request_id: RequestId,
        requester: Username,
        tenant_name: TenantName,
        permission: Permission,
        justification: Option<Justification>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            v: Self::VERSION,
            request_id,
            requester,
            tenant_name,
            permission,
            justification,
            status: RequestStatus::Pending,
            created_at: now,
            updated_at: now,
            decided_by: None,
            decided_at: None,
            decision_source: None,
            applied_at: None,
            failure_reason: None,
            slack: None,
            slack_claim: None,
            access_duration_secs: None,
            approvals_required: 1,
            approvals: Vec::new(),
            approval_channel: None,
            requester_email: None,
            notices_sent: Vec::new(),
            steward_emails: Vec::new(),
            expiry_warned: false,
            reminders: 0,
            access_expires_at: None,
            membership_added: true,
            grant_attempts: 0,
            revoked_by: None,
            revoked_reason: None,
            revoked_at: None,
            revoke_note: None,
            outbox: Vec::new(),
        }
    }
}

/// The current time, truncated to milliseconds so records round-trip through RFC 3339.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}
