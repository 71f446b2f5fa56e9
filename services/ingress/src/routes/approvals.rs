//! The approvers' API: approve or deny over REST, for whoever the approval policy names
//! for the request's tenant (admins, without a policy).

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
use crate::extract::{Caller, StrictJson};
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
        step if step.record.status == tars_domain::RequestStatus::Pending => {
            Err(Refusal::AlreadyCounted)
        }
        step => Err(Refusal::Settled {
            status: step.record.status,
            by: step.record.decided_by,
        }),
    }
}

/// Whether the policy lets this person decide `rec` (named, holding a listed role, a
/// steward of the tenant, or an admin where admins decide). Stewards are looked up in the
/// governance API (cached) only when the tenant's rules name them.
pub async fn policy_allows(
    st: &AppState,
    rec: &RequestRecord,
    username: &Username,
    roles: &[String],
    is_admin: bool,
) -> Result<bool, ApiError> {
    let rules = st.approval_policy.rules(&rec.tenant_name);
    let is_steward = match (&st.tenants, rules.names_stewards()) {
        (Some(check), true) => check
            .stewards(&rec.tenant_name)
            .await?
            .iter()
            .any(|s| s.username == username.as_str()),
        _ => false,
    };
    Ok(rules.may_decide(&tars_domain::policy::Decider {
        username,
        roles,
        is_admin,
        is_steward,
    }))
}

/// The request a decision names: by id, or the open request of a requester for a
/// tenant and permission (with `true`: the caller must check it is still pending, since
/// a decided request's open-index entry stays until its requester submits again).
async fn resolve(st: &AppState, body: &DecisionBody) -> Result<(RequestId, bool), ApiError> {
    if let Some(id) = body.request_id.as_deref() {
        return RequestId::parse(id)
            .map(|id| (id, false))
            .map_err(|_| ApiError::not_found(format!("request {id}")));
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
        .map(|id| (id, true))
        .ok_or_else(|| open_not_found(&requester, &tenant, permission))
}

fn open_not_found(requester: &Username, tenant: &TenantName, permission: Permission) -> ApiError {
    ApiError::not_found(format!(
        "open {permission} request of {requester} for {tenant}"
    ))
}

async fn decide(
    st: AppState,
    caller: tars_kbase::AuthUser,
    body: DecisionBody,
    decision: Decision,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Somebody who is not an admin hears the same 403 whether the request exists or not,
    // so these routes tell nobody which requests exist but those who may decide them.
    let not_approver = || ApiError::forbidden("you are not an approver of this request");
    let found = match resolve(&st, &body).await {
        Ok((id, by_slot)) => match st.store.get(&id).await?.map(|v| v.value) {
            // A decided request's entry left behind names no open request.
            Some(rec) if by_slot && rec.status != tars_domain::RequestStatus::Pending => {
                if !caller.is_admin {
                    return Err(not_approver());
                }
                return Err(open_not_found(
                    &rec.requester,
                    &rec.tenant_name,
                    rec.permission,
                ));
            }
            found => found.ok_or(id),
        },
        Err(e) if e.status == StatusCode::NOT_FOUND && !caller.is_admin => {
            return Err(not_approver());
        }
        Err(e) => return Err(e),
    };
    let rec = match found {
        Ok(rec) => rec,
        Err(_) if !caller.is_admin => return Err(not_approver()),
        Err(id) => return Err(ApiError::not_found(format!("request {id}"))),
    };
    let id = rec.request_id.clone();
    super::name_request(&id);
    if !policy_allows(&st, &rec, &caller.username, &caller.roles, caller.is_admin).await? {
        return Err(not_approver());
    }
    let admin = caller.username;
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
    Caller(caller): Caller,
    StrictJson(body): StrictJson<DecisionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    decide(st, caller, body, Decision::Approve).await
}

/// `POST /approvals/deny`.
pub async fn deny(
    State(st): State<AppState>,
    Caller(caller): Caller,
    StrictJson(body): StrictJson<DecisionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    decide(st, caller, body, Decision::Deny).await
}
