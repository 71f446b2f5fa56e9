//! What TARS tells people outside the approval message: the requester's DM for each
//! outcome, and the reminder replied in the approval message's thread. Rendered from the
//! record, like the message itself.

use tars_domain::{RequestRecord, RequestStatus};

use crate::blocks::{ended_why, escape, when};

/// The event types the requester hears about by DM.
pub const TOLD_TO_REQUESTER: [&str; 6] = [
    "request.applied",
    "request.denied",
    "request.failed",
    "request.expired",
    "request.revoked",
    "request.access_ending",
];

/// The requester's DM about event `kind` of `r`, or `None` when `kind` is not one they
/// hear about or the record has moved on (a late redelivery tells nothing stale).
pub fn dm(r: &RequestRecord, kind: &str) -> Option<String> {
    let what = format!(
        "{} access to `{}` (request `{}`)",
        r.permission,
        escape(r.tenant_name.as_str()),
        r.request_id
    );
    let by = r.decided_by.as_deref().map(escape).unwrap_or_default();
    let text = match (kind, r.status) {
        ("request.applied", RequestStatus::Applied) => format!(
            "✅ Your {what} is granted{}.",
            r.access_expires_at
                .map(|t| format!("; it ends at {}", when(t)))
                .unwrap_or_default()
        ),
        ("request.denied", RequestStatus::Denied) => {
            format!("❌ Your request for {what} was denied by {by}.")
        }
        ("request.failed", RequestStatus::Failed) => format!(
            "⚠️ Your request for {what} was approved but could not be applied: {}. An admin can retry it.",
            escape(r.failure_reason.as_deref().unwrap_or("unknown error"))
        ),
        ("request.expired", RequestStatus::Expired) => {
            format!("⌛ Your request for {what} expired without a decision.")
        }
        ("request.revoked", RequestStatus::Revoked) => {
            format!("🔒 Your {what} was removed ({}).", ended_why(r))
        }
        ("request.access_ending", RequestStatus::Applied) => format!(
            "⏳ Your {what} ends at {}. To keep it, submit a new request.",
            r.access_expires_at.map(when).unwrap_or_default()
        ),
        _ => return None,
    };
    Some(text)
}

/// The `n`-th reminder, replied in the thread of a request still pending.
pub fn reminder(r: &RequestRecord, n: u32) -> String {
    format!(
        "⏰ Reminder {n}: `{}` asked for {} access to `{}` at {} and is still waiting for an approver.",
        escape(r.requester.as_str()),
        r.permission,
        escape(r.tenant_name.as_str()),
        when(r.created_at)
    )
}
