//! The versioned event envelope every TARS message carries.
//!
//! `TARS_EVENTS` is the audit log, so an event says what happened, to which request, when
//! and by whom; the *state* lives in the KV record. This module is data only: publishing
//! (acked, with `Nats-Msg-Id`) lives in `tars-jetstream`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{Permission, RequestId, TenantName, Username};
use crate::record::{RequestRecord, RequestStatus, Source};

/// The envelope version this build writes and understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an approver decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Grant the access.
    Approve,
    /// Refuse it.
    Deny,
}

/// The typed body of an event; the tag is the envelope's `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A user asked for access; the record is already in the KV bucket.
    #[serde(rename = "request.submitted")]
    RequestSubmitted {
        /// Who asked.
        requester: Username,
        /// For which tenant.
        tenant_name: TenantName,
        /// For which access.
        permission: Permission,
    },
    /// An admin (in Slack or over REST) asked for a decision; the decision worker applies it.
    #[serde(rename = "decision.requested")]
    DecisionRequested {
        /// Approve or deny.
        decision: Decision,
        /// The KBase username recorded as the approver.
        by: Username,
        /// Where the decision came from.
        source: Source,
        /// Optional words of the approver.
        #[serde(default)]
        reason: Option<String>,
    },
    /// A decision arrived for a request that was no longer pending; recorded, never applied.
    #[serde(rename = "decision.rejected")]
    DecisionRejected {
        /// What was asked.
        decision: Decision,
        /// By whom.
        by: Username,
        /// The status the request already had.
        status: RequestStatus,
    },
    /// One approval of a request that needs more than one; it stays pending.
    #[serde(rename = "request.approval_added")]
    RequestApprovalAdded {
        /// The approver.
        by: Username,
        /// Where the approval came from.
        source: Source,
    },
    /// The request was approved; the governance-applier grants it.
    #[serde(rename = "request.approved")]
    RequestApproved {
        /// The approver.
        by: Username,
        /// Where the approval came from.
        source: Source,
    },
    /// The request was denied.
    #[serde(rename = "request.denied")]
    RequestDenied {
        /// The approver who denied.
        by: Username,
        /// Where the denial came from.
        source: Source,
    },
    /// The requester withdrew the request.
    #[serde(rename = "request.cancelled")]
    RequestCancelled {},
    /// Nobody decided in time.
    #[serde(rename = "request.expired")]
    RequestExpired {},
    /// The governance API granted the membership.
    #[serde(rename = "request.applied")]
    RequestApplied {
        /// The group the user joined.
        group: String,
        /// Whether a membership was added (`false`: the user already had this access or
        /// more). Events from before this field read `true`.
        #[serde(default = "yes")]
        added: bool,
    },
    /// The governance API refused, or retries ran out.
    #[serde(rename = "request.failed")]
    RequestFailed {
        /// What the governance API said.
        reason: String,
    },
    /// Applied access is to end (its time ran out, or it was revoked early); the
    /// governance-applier removes it. The envelope's actor started it.
    #[serde(rename = "request.revoking")]
    RequestRevoking {
        /// `expired`, or the words of whoever revoked it.
        reason: String,
    },
    /// Time-bound access ends soon; the requester is told.
    #[serde(rename = "request.access_ending")]
    RequestAccessEnding {
        /// When it ends.
        #[serde(with = "time::serde::rfc3339")]
        ends_at: OffsetDateTime,
    },
    /// A request waited longer than the reminder interval; approvers are reminded.
    #[serde(rename = "request.reminded")]
    RequestReminded {
        /// Which reminder this is (1, 2, …).
        n: u32,
    },
    /// The governance API removed the access (or it was already gone).
    #[serde(rename = "request.revoked")]
    RequestRevoked {
        /// The reason the revocation was started with.
        reason: String,
        /// Why the membership was left as it was, when it was (the user held another
        /// level, had it before TARS granted it, or was no longer a member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left_alone: Option<String>,
    },
}

fn yes() -> bool {
    true
}

impl Event {
    /// Every `type` string, for reading one request's events subject by subject (a request's
    /// history is the messages on `tars.<kind>.<id>` for each of these).
    pub const KINDS: [&'static str; 14] = [
        "request.submitted",
        "decision.requested",
        "decision.rejected",
        "request.approval_added",
        "request.approved",
        "request.denied",
        "request.cancelled",
        "request.expired",
        "request.applied",
        "request.failed",
        "request.revoking",
        "request.revoked",
        "request.access_ending",
        "request.reminded",
    ];

    /// The `type` string, also the middle of the subject.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RequestSubmitted { .. } => "request.submitted",
            Self::DecisionRequested { .. } => "decision.requested",
            Self::DecisionRejected { .. } => "decision.rejected",
            Self::RequestApprovalAdded { .. } => "request.approval_added",
            Self::RequestApproved { .. } => "request.approved",
            Self::RequestDenied { .. } => "request.denied",
            Self::RequestCancelled {} => "request.cancelled",
            Self::RequestExpired {} => "request.expired",
            Self::RequestApplied { .. } => "request.applied",
            Self::RequestFailed { .. } => "request.failed",
            Self::RequestRevoking { .. } => "request.revoking",
            Self::RequestRevoked { .. } => "request.revoked",
            Self::RequestAccessEnding { .. } => "request.access_ending",
            Self::RequestReminded { .. } => "request.reminded",
        }
    }

    /// A submitted event for a freshly created record.
    pub fn submitted(record: &RequestRecord) -> Self {
        Self::RequestSubmitted {
            requester: record.requester.clone(),
            tenant_name: record.tenant_name.clone(),
            permission: record.permission,
        }
    }
}

/// One message on `TARS_EVENTS`: `{v, event_id, type, request_id, at, actor, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version; readers dead-letter versions they do not know.
    pub v: u32,
    /// Unique id of this event.
    pub event_id: String,
    /// The request the event is about.
    pub request_id: RequestId,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who caused it: a username, or `tars` for the system.
    pub actor: String,
    /// The tenant of the request, so the audit can be read by tenant (absent in events
    /// written before it was added, and in decision requests for unknown requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<TenantName>,
    /// Who asked for the request, for the audit's `requester` filter (absent as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Username>,
    /// The typed body (`type` + `data`).
    #[serde(flatten)]
    pub event: Event,
}

/// Why bytes from the stream could not become an [`Envelope`]; both are permanent.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A newer TARS wrote an envelope this build does not understand.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u64),
    /// Not JSON, or not an event this build knows.
    #[error("malformed event: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Envelope {
    /// Wraps an event about `request_id` caused by `actor`, happening now.
    pub fn new(request_id: RequestId, actor: impl Into<String>, event: Event) -> Self {
        Self::at(request_id, actor, event, crate::record::now())
    }

    /// Wraps an event that happened at `at` (the time the machine stepped with).
    pub fn at(
        request_id: RequestId,
        actor: impl Into<String>,
        event: Event,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            event_id: uuid::Uuid::now_v7().to_string(),
            request_id,
            at,
            actor: actor.into(),
            tenant_name: None,
            requester: None,
            event,
        }
    }

    /// Names the request's tenant and requester in the envelope (for the audit filters).
    pub fn about(mut self, record: &RequestRecord) -> Self {
        self.tenant_name = Some(record.tenant_name.clone());
        self.requester = Some(record.requester.clone());
        self
    }

    /// The subject: `tars.<type>.<request_id>`.
    pub fn subject(&self) -> String {
        format!("tars.{}.{}", self.event.kind(), self.request_id)
    }

    /// The default `Nats-Msg-Id` for state transitions: `<request_id>.<type>`, so the same
    /// transition published twice is stored once.
    pub fn transition_msg_id(&self) -> String {
        format!("{}.{}", self.request_id, self.event.kind())
    }

    /// Reads an envelope, refusing versions this build does not know before looking at
    /// anything else.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Peek {
            v: u64,
        }
        let peek: Peek = serde_json::from_slice(payload)?;
        if peek.v != u64::from(ENVELOPE_VERSION) {
            return Err(DecodeError::UnsupportedVersion(peek.v));
        }
        Ok(serde_json::from_slice(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_every_event_once() {
        let u = || Username::parse("alice").unwrap();
        let events = [
            Event::RequestSubmitted {
                requester: u(),
                tenant_name: TenantName::parse("kbase").unwrap(),
                permission: Permission::ReadOnly,
            },
            Event::DecisionRequested {
                decision: Decision::Approve,
                by: u(),
                source: Source::Rest,
                reason: None,
            },
            Event::DecisionRejected {
                decision: Decision::Deny,
                by: u(),
                status: RequestStatus::Denied,
            },
            Event::RequestApprovalAdded {
                by: u(),
                source: Source::Rest,
            },
            Event::RequestApproved {
                by: u(),
                source: Source::Slack,
            },
            Event::RequestDenied {
                by: u(),
                source: Source::Slack,
            },
            Event::RequestCancelled {},
            Event::RequestExpired {},
            Event::RequestApplied {
                group: "g".into(),
                added: true,
            },
            Event::RequestFailed { reason: "r".into() },
            Event::RequestRevoking {
                reason: "expired".into(),
            },
            Event::RequestRevoked {
                reason: "expired".into(),
                left_alone: None,
            },
            Event::RequestAccessEnding {
                ends_at: OffsetDateTime::UNIX_EPOCH,
            },
            Event::RequestReminded { n: 1 },
        ];
        let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds, Event::KINDS);
    }

    #[test]
    fn envelope_round_trips_with_type_and_data() {
        let id = RequestId::new();
        let env = Envelope::new(
            id.clone(),
            "alice",
            Event::RequestApplied {
                group: "kbasero".into(),
                added: true,
            },
        );
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["type"], "request.applied");
        assert_eq!(json["data"]["group"], "kbasero");
        assert_eq!(json["v"], 1);
        let back = Envelope::decode(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(back, env);
        assert_eq!(env.subject(), format!("tars.request.applied.{id}"));
    }

    #[test]
    fn future_versions_and_unknown_types_are_refused() {
        let v2 = br#"{"v":2,"type":"request.teleported","data":{}}"#;
        assert!(matches!(
            Envelope::decode(v2),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        let unknown = br#"{"v":1,"event_id":"x","request_id":"0190b3a4-0000-7000-8000-000000000000","at":"2026-01-01T00:00:00Z","actor":"a","type":"request.teleported","data":{}}"#;
        assert!(matches!(
            Envelope::decode(unknown),
            Err(DecodeError::Malformed(_))
        ));
    }
}
