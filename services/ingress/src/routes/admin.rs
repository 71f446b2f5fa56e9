//! Dead letters for admins: inspect, replay, discard.

use async_nats::jetstream::consumer;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tars_jetstream::topology::WorkerKind;
use tars_jetstream::worker::{
    HDR_DLQ_DELIVERIES, HDR_DLQ_REASON, HDR_DLQ_WORKER, HDR_ORIGINAL_SEQ, HDR_ORIGINAL_SUBJECT,
};

use crate::error::ApiError;
use crate::extract::Admin;
use crate::extract::StrictQuery;
use crate::state::AppState;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "dead-letter stream failed");
    ApiError::unavailable("the dead-letter stream is unavailable; try again shortly")
}

/// `GET /admin/dead-letters` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    /// Start after this sequence.
    after: Option<u64>,
    limit: Option<usize>,
}

fn header(h: &async_nats::HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.as_str().to_owned())
}

/// `GET /admin/dead-letters`: `{"dead_letters": [...], "next": <seq or null>}`.
pub async fn list(
    State(st): State<AppState>,
    Admin(_): Admin,
    StrictQuery(q): StrictQuery<DlqQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let dlq = &st.topology.dlq;
    let c = dlq
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: q.after.unwrap_or(0) + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut batch = c
        .fetch()
        .max_messages(limit)
        .messages()
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(m) = batch.next().await {
        let m = m.map_err(unavailable)?;
        let info = m.info().map_err(unavailable)?;
        let seq = info.stream_sequence;
        last = Some(seq);
        let h = m.headers.clone().unwrap_or_default();
        let data: Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.payload).into_owned()));
        out.push(json!({
            "seq": seq,
            "subject": m.subject.as_str(),
            "worker": header(&h, HDR_DLQ_WORKER),
            "reason": header(&h, HDR_DLQ_REASON),
            "deliveries": header(&h, HDR_DLQ_DELIVERIES).and_then(|d| d.parse::<u64>().ok()),
            "original_subject": header(&h, HDR_ORIGINAL_SUBJECT),
            "original_seq": header(&h, HDR_ORIGINAL_SEQ).and_then(|d| d.parse::<u64>().ok()),
            "request_id": m.subject.as_str().rsplit('.').next(),
            "at": info.published.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "data": data,
        }));
    }
    let name = c.cached_info().name.clone();
    let _ = dlq.delete_consumer(&name).await;
    let next = if out.len() == limit { last } else { None };
    Ok(Json(json!({"dead_letters": out, "next": next})))
}

/// A dead letter's sequence as the path spells it: anything but a positive integer names
/// no dead letter (404, like an unknown one).
fn seq_of(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::not_found(format!("dead letter {raw}")))
}

async fn load(
    st: &AppState,
    seq: u64,
) -> Result<async_nats::jetstream::message::StreamMessage, ApiError> {
    st.topology.dlq.get_raw_message(seq).await.map_err(|e| {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        if e.kind() == RawMessageErrorKind::NoMessageFound {
            ApiError::not_found(format!("dead letter {seq}"))
        } else {
            unavailable(e)
        }
    })
}

/// `POST /admin/dead-letters/{seq}/replay`: publishes the original message again (a new
/// message with a fresh id, so the duplicate window does not swallow it) to the worker
/// that dead-lettered it alone (`tars.replay.<worker>.<original subject>`: replaying a
/// notifier's dead letter must not grant again), and removes the dead letter.
pub async fn replay(
    State(st): State<AppState>,
    Admin(admin): Admin,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let seq = seq_of(&seq)?;
    let m = load(&st, seq).await?;
    let original = m
        .headers
        .get(HDR_ORIGINAL_SUBJECT)
        .map(|v| v.as_str().to_owned())
        .ok_or_else(|| {
            ApiError::conflict(format!("dead letter {seq} names no original subject"))
        })?;
    let worker = m
        .headers
        .get(HDR_DLQ_WORKER)
        .and_then(|w| WorkerKind::named(w.as_str()))
        .ok_or_else(|| ApiError::conflict(format!("dead letter {seq} names no known worker")))?;
    let subject = worker.replay_subject(&original);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("replay.{seq}").as_str());
    headers.insert("Tars-Replayed-By", admin.username.as_str());
    let ack = st
        .topology
        .js
        .publish_with_headers(subject.clone(), headers, m.payload.clone())
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    let _ = st.topology.dlq.delete_message(seq).await;
    tracing::info!(seq, %subject, by = %admin.username, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": seq, "subject": subject, "new_seq": ack.sequence})),
    ))
}

/// `DELETE /admin/dead-letters/{seq}`: discards it; no request changes.
pub async fn discard(
    State(st): State<AppState>,
    Admin(admin): Admin,
    Path(seq): Path<String>,
) -> Result<StatusCode, ApiError> {
    let seq = seq_of(&seq)?;
    load(&st, seq).await?;
    st.topology
        .dlq
        .delete_message(seq)
        .await
        .map_err(unavailable)?;
    tracing::info!(seq, by = %admin.username, "dead letter discarded");
    Ok(StatusCode::NO_CONTENT)
}
