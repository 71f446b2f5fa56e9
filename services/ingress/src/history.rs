//! A request's history as the API shows it, from its events in `TARS_EVENTS`.

use serde_json::{Value, json};
use tars_domain::RequestId;
use tars_domain::events::{Envelope, Event};
use tars_jetstream::audit::EventLog;

use crate::error::ApiError;

/// The ordered `{at, type, actor, source, detail}` entries of `id`, read by subject (one
/// batched direct get per event type: the cost is the request's own events).
pub async fn of(log: &EventLog, id: &RequestId) -> Result<Vec<Value>, ApiError> {
    let events = log.history(id).await.map_err(|e| {
        tracing::error!(error = %e, "reading history failed");
        ApiError::unavailable("the audit stream is unavailable; try again shortly")
    })?;
    Ok(events.iter().map(|(_, env)| entry(env)).collect())
}

/// One event as the API shows it: `{at, type, actor, source, detail}`.
pub fn entry(env: &Envelope) -> Value {
    let (source, detail) = match &env.event {
        Event::DecisionRequested {
            decision,
            source,
            reason,
            ..
        } => (
            Some(*source),
            json!({"decision": decision, "reason": reason}),
        ),
        Event::DecisionRejected {
            decision, status, ..
        } => (None, json!({"decision": decision, "already": status})),
        Event::RequestApproved { source, .. }
        | Event::RequestDenied { source, .. }
        | Event::RequestApprovalAdded { source, .. } => (Some(*source), Value::Null),
        Event::RequestApplied { group, added } => {
            (None, json!({"group": group, "membership_added": added}))
        }
        Event::RequestFailed { reason } | Event::RequestRevoking { reason } => {
            (None, json!({"reason": reason}))
        }
        Event::RequestRevoked { reason, left_alone } => {
            (None, json!({"reason": reason, "left_alone": left_alone}))
        }
        _ => (None, Value::Null),
    };
    json!({
        "at": env.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "type": env.event.kind(),
        "actor": env.actor,
        "source": source,
        "detail": detail,
    })
}
