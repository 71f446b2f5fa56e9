//! The admins' API: approve or deny over REST.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tars_domain::events::{Decision, Envelope, Event};
use tars_domain::machine::{self, Command, Refusal};
use tars_domain::{Permission, RequestId, RequestRecord, Source, TenantName, Username, now};
use tars_jetstream::store::open_slot;

use crate::error::ApiError;
use crate::extract::{Admin, StrictJson};
use crate::state::AppState;

/// `{request_id}` or the older `{requester, tenant_name, permission}`; `channel_id` and
/// `message_ts` (sent by the older Slack integration) are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    requester: Option<String>,
    #[serde(default)]
    tenant_name: Option<String>,
    #[serde(default)]
    permission: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    channel_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    message_ts: Option<String>,
}

/// Publishes a decision request; the decision worker applies it with compare-and-set.
pub async fn publish_decision(
    st: &AppState,
    id: RequestId,
    decision: Decision,
    by: Username,
    source: Source,
    reason: Option<String>,
    msg_id: &str,
) -> Result<(), ApiError> {
    let env = Envelope::new(
        id,
        by.to_string(),
        Event::DecisionRequested {
            decision,
            by,
            source,
            reason,
        },
    );
    st.publisher.publish(&env, msg_id).await?;
    Ok(())
}

/// Whether `by` may decide `rec` now, by the rules the decision worker applies (it stays
/// the authority: the record may change between this read and its compare-and-set). A
/// repeat of a decision already made counts as settled here, so the caller hears 409.
pub fn may_decide(
    st: &AppState,
    rec: &RequestRecord,
    decision: Decision,
    by: &Username,
    source: Source,
) -> Result<(), Refusal> {
    let cmd = Command::Decide {
        decision,
        by: by.clone(),
        source,
    };
    match machine::step(rec, &cmd, now(), &st.policy)? {
        step if step.changed => Ok(()),
        step => Err(Refusal::Settled {
            status: step.record.status,
            by: step.record.decided_by,
        }),
    }
}

async fn resolve(st: &AppState, body: &DecisionBody) -> Result<RequestId, ApiError> {
    if let Some(id) = body.request_id.as_deref() {
        return RequestId::parse(id).map_err(|_| ApiError::not_found(format!("request {id}")));
    }
    let (Some(requester), Some(tenant)) = (body.requester.as_deref(), body.tenant_name.as_deref())
    else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "give request_id, or requester and tenant_name (and permission)",
        ));
    };
    let requester = Username::parse(requester)?;
    let tenant = TenantName::parse(tenant)?;
    let permission: Permission = match body.permission.as_deref() {
        Some(p) => p.parse()?,
        None => Permission::default(),
    };
    let idx = st.store.open_index(&requester).await?;
    idx.and_then(|i| i.value.get(&open_slot(&tenant, permission)).cloned())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "open {permission} request of {requester} for {tenant}"
            ))
        })
}

async fn decide(
    st: AppState,
    admin: Username,
    body: DecisionBody,
    decision: Decision,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = resolve(&st, &body).await?;
    super::name_request(&id);
    let rec = st
        .store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))?
        .value;
    match may_decide(&st, &rec, decision, &admin, Source::Rest) {
        Ok(()) => {}
        Err(Refusal::OwnRequest) => {
            return Err(ApiError::forbidden("you may not decide your own request"));
        }
        Err(refusal) => return Err(ApiError::conflict(format!("request {id} is {refusal}"))),
    }
    let msg_id = format!("decision.{}", uuid::Uuid::new_v4());
    publish_decision(
        &st,
        id.clone(),
        decision,
        admin,
        Source::Rest,
        body.reason,
        &msg_id,
    )
    .await?;
    let verb = match decision {
        Decision::Approve => "approval",
        Decision::Deny => "denial",
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": id,
            "status": "accepted",
            "message": format!("Your {verb} of request {id} is being applied."),
        })),
    ))
}

/// `POST /approvals/approve`.
pub async fn approve(
    State(st): State<AppState>,
    Admin(admin): Admin,
    StrictJson(body): StrictJson<DecisionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    decide(st, admin.username, body, Decision::Approve).await
}

/// `POST /approvals/deny`.
pub async fn deny(
    State(st): State<AppState>,
    Admin(admin): Admin,
    StrictJson(body): StrictJson<DecisionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    decide(st, admin.username, body, Decision::Deny).await
}
