//! A request's history, read from the audit stream `TARS_EVENTS`.

use async_nats::jetstream::{consumer, stream::Stream};
use futures::StreamExt;
use serde_json::{Value, json};
use tars_domain::RequestId;
use tars_domain::events::{Envelope, Event};

use crate::error::ApiError;

/// Events of one request are few; more than this is cut.
const MAX_EVENTS: usize = 200;

/// The ordered `{at, type, actor, source, detail}` entries of `id`.
///
/// Uses a short-lived ephemeral consumer filtered on the request's subjects and one
/// no-wait fetch, so reading the history costs three round trips whatever the stream size.
pub async fn of(events: &Stream, id: &RequestId) -> Result<Vec<Value>, ApiError> {
    let unavailable = |e: String| {
        tracing::error!(error = %e, "reading history failed");
        ApiError::unavailable("the audit stream is unavailable; try again shortly")
    };
    let consumer = events
        .create_consumer(consumer::pull::Config {
            filter_subjects: vec![
                format!("tars.request.*.{id}"),
                format!("tars.decision.*.{id}"),
            ],
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(MAX_EVENTS)
        .messages()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    while let Some(msg) = batch.next().await {
        let msg = msg.map_err(|e| unavailable(e.to_string()))?;
        if let Ok(env) = Envelope::decode(&msg.payload) {
            out.push(entry(&env));
        }
    }
    let name = consumer.cached_info().name.clone();
    let _ = events.delete_consumer(&name).await;
    Ok(out)
}

fn entry(env: &Envelope) -> Value {
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
        Event::RequestApproved { source, .. } | Event::RequestDenied { source, .. } => {
            (Some(*source), Value::Null)
        }
        Event::RequestApplied { group } => (None, json!({"group": group})),
        Event::RequestFailed { reason } => (None, json!({"reason": reason})),
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
