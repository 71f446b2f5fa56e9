//! The users' API: submit, read, list and cancel access requests.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tars_domain::duration::{format_duration, parse_duration};
use tars_domain::machine::{self, Command, Refusal};
use tars_domain::{
    Justification, Permission, RequestId, RequestRecord, RequestStatus, TenantName, Username, now,
};
use tars_jetstream::store::{open_slot, past_record_grace};

use crate::error::ApiError;
use crate::extract::{Caller, StrictJson, StrictQuery};
use crate::history;
use crate::state::AppState;

/// `POST /requests` body (the notebook client's fields plus `duration`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    tenant_name: String,
    #[serde(default)]
    permission: Option<String>,
    #[serde(default)]
    justification: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

/// A submission's fields, each parsed into its type.
#[derive(Debug)]
pub struct Submission {
    /// The tenant asked for.
    pub tenant: TenantName,
    /// read_only unless asked otherwise.
    pub permission: Permission,
    /// Why, if given.
    pub justification: Option<Justification>,
    /// For how long, if time-bound.
    pub duration: Option<std::time::Duration>,
}

impl SubmitBody {
    /// Parses every field once (422 naming the field that is wrong); pure, so a property
    /// test can try any body.
    pub fn validate(self, max_duration: std::time::Duration) -> Result<Submission, ApiError> {
        Ok(Submission {
            tenant: TenantName::parse(&self.tenant_name)?,
            permission: match self.permission.as_deref() {
                None => Permission::default(),
                Some(p) => p.parse()?,
            },
            justification: Justification::parse(self.justification.as_deref().unwrap_or(""))?,
            duration: self
                .duration
                .as_deref()
                .map(|d| access_duration(d, max_duration))
                .transpose()?,
        })
    }
}

/// The answer to a submission, keeping the notebook client's fields.
#[derive(Debug, Serialize)]
pub struct SubmitAnswer {
    status: RequestStatus,
    message: String,
    requester: Username,
    tenant_name: TenantName,
    permission: Permission,
    request_id: RequestId,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
}

fn answer(r: &RequestRecord, message: String) -> SubmitAnswer {
    SubmitAnswer {
        status: r.status,
        message,
        requester: r.requester.clone(),
        tenant_name: r.tenant_name.clone(),
        permission: r.permission,
        request_id: r.request_id.clone(),
        created_at: r.created_at,
    }
}

/// `POST /requests` and `/requests/`.
///
/// Order of writes, each safe to repeat: (1) the requester's open index gets the new id by
/// compare-and-set (where concurrent duplicates lose), (2) the index keys of the new
/// request, (3) the record, create-only, with `request.submitted` in its outbox (the relay
/// publishes it). A failure after (1) or (2) answers 503; the client's retry finds the id
/// in the open index and creates the record under it, so nothing is lost or stuck, and
/// once this answered 2xx the request reaches the approvers without any retry.
pub async fn submit(
    State(st): State<AppState>,
    Caller(user): Caller,
    StrictJson(body): StrictJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let Submission {
        tenant,
        permission,
        justification,
        duration,
    } = body.validate(st.max_access_duration)?;
    if let Some(check) = &st.tenants {
        check.check(&tenant, permission).await?;
    }
    let rules = st.approval_policy.rules(&tenant);
    if let (Some(d), Some(max)) = (duration, rules.max_duration)
        && d > max
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!(
                "duration: at most {} for tenant {tenant}",
                format_duration(max)
            ),
        ));
    }
    let duration = duration.or(rules.default_duration);
    // Stewards named as approvers are mentioned in the approval message.
    let steward_emails: Vec<String> = match (&st.tenants, rules.names_stewards()) {
        (Some(check), true) => check
            .stewards(&tenant)
            .await?
            .iter()
            .filter_map(|s| s.email.clone())
            .collect(),
        _ => Vec::new(),
    };
    let intake = machine::Intake {
        approvals_required: rules.approvals_for(permission),
        auto_approve: rules.auto_approves(permission),
        approval_channel: rules.slack_channel.clone(),
    };
    let requester = user.username;
    let email = user.email;
    let slot = open_slot(&tenant, permission);
    let new_request = |id: RequestId| {
        let mut step = machine::submit(
            id,
            requester.clone(),
            tenant.clone(),
            permission,
            justification.clone(),
            duration,
            &intake,
            now(),
        );
        step.record.requester_email = email.clone();
        step.record.steward_emails = steward_emails.clone();
        step
    };
    let mut took_token = false;
    for _ in 0..100 {
        let idx = st.store.open_index(&requester).await?;
        let (mut open, revision) = match idx {
            Some(v) => (v.value, Some(v.revision)),
            None => (Default::default(), None),
        };
        if let Some(id) = open.get(&slot).cloned() {
            super::name_request(&id);
            match st.store.get(&id).await? {
                Some(rec) if rec.value.status == RequestStatus::Pending => {
                    if took_token {
                        st.limiter.refund(&requester);
                    }
                    let msg = already_open(&rec.value);
                    return Ok((StatusCode::OK, Json(answer(&rec.value, msg))).into_response());
                }
                Some(_) => {
                    // That request left pending; its entry stays until a submission
                    // of the same user drops it, as here.
                    open.remove(&slot);
                    st.store
                        .write_open_index(&requester, &open, revision)
                        .await?;
                    continue;
                }
                // The index names an id whose record a crashed submission never wrote:
                // finish it under that id, while it may still come.
                None if !past_record_grace(&id) => {
                    return create(&st, new_request(id)).await;
                }
                // A record that will never come (retired, or its submission crashed long
                // ago): its id is never used again.
                None => {
                    open.remove(&slot);
                    st.store
                        .write_open_index(&requester, &open, revision)
                        .await?;
                    continue;
                }
            }
        }
        // Decided requests leave their entries behind: drop those before refusing.
        if open.len() >= st.max_open && !st.store.prune_open(&mut open).await? {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_open_requests",
                format!("you have {} open requests, the most allowed; wait for decisions or cancel some", open.len()),
            )
            .retry_after(std::time::Duration::from_secs(60)));
        }
        if !took_token {
            st.limiter.take(&requester).map_err(|wait| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many submissions; try again in {} s", wait.as_secs()),
                )
                .retry_after(wait)
            })?;
            took_token = true;
        }
        let id = RequestId::new();
        open.insert(slot.clone(), id.clone());
        let record = outbox_record(new_request(id));
        if let Some(created) = st.store.open(&open, revision, &record).await? {
            return created_answer(&st, record, created).await;
        }
    }
    Err(ApiError::unavailable(
        "too many concurrent submissions; try again",
    ))
}

/// Creates the record of a new request (its index keys, then the record with
/// `request.submitted` in its outbox: the relay publishes it) and answers 202; a record
/// created first by a concurrent retry makes this one a repeat.
async fn create(st: &AppState, step: machine::Step) -> Result<Response, ApiError> {
    let record = outbox_record(step);
    let created = st.store.create(&record).await?;
    created_answer(st, record, created).await
}

/// The record of a new request with `request.submitted` (and any policy decision) in its
/// outbox, for the relay to publish.
fn outbox_record(step: machine::Step) -> RequestRecord {
    super::name_request(&step.record.request_id);
    let at = step.record.created_at;
    let trace = tars_observability::trace::current().map(|t| t.child().header());
    step.into_outbox(0, at, trace).0
}

/// 202 for a request this call created; a record created first by a concurrent retry
/// (`created` false) makes this one a repeat.
async fn created_answer(
    st: &AppState,
    record: RequestRecord,
    created: bool,
) -> Result<Response, ApiError> {
    if !created {
        let rec = st
            .store
            .get(&record.request_id)
            .await?
            .map(|v| v.value)
            .ok_or_else(|| ApiError::unavailable("request store inconsistent; try again"))?;
        return Ok((StatusCode::OK, Json(answer(&rec, already_open(&rec)))).into_response());
    }
    fail::fail_point!("submit.after_write");
    st.metrics
        .requests
        .with_label_values(&[record.status.as_str()])
        .inc();
    let msg = if record.status == RequestStatus::Approved {
        format!(
            "Request {} for {} access to {} was approved by the approval policy and is being \
             applied. Follow it with GET /requests/{}.",
            record.request_id, record.permission, record.tenant_name, record.request_id
        )
    } else {
        format!(
            "Request {} for {} access to {} submitted; an approver has been notified. \
             Follow it with GET /requests/{}.",
            record.request_id, record.permission, record.tenant_name, record.request_id
        )
    };
    Ok((StatusCode::ACCEPTED, Json(answer(&record, msg))).into_response())
}

/// The message of a repeated submission.
fn already_open(rec: &RequestRecord) -> String {
    let (id, permission, tenant) = (&rec.request_id, rec.permission, &rec.tenant_name);
    format!(
        "You already have an open request {id} for {permission} access to {tenant}; \
         it is waiting for an approver. Follow it with GET /requests/{id}."
    )
}

/// A requested access duration: humantime, more than zero, at most `max`.
fn access_duration(raw: &str, max: std::time::Duration) -> Result<std::time::Duration, ApiError> {
    let invalid = |m: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("duration: {m}"),
        )
    };
    let d = parse_duration(raw).map_err(invalid)?;
    if d.is_zero() || d > max {
        return Err(invalid(format!(
            "must be more than 0 and at most {}",
            format_duration(max)
        )));
    }
    Ok(d)
}

/// Spends one of `user`'s reads (429 with `Retry-After` when none is left): every read
/// costs the store something, so one user's loop cannot crowd out everyone else.
fn spend_read(st: &AppState, user: &Username) -> Result<(), ApiError> {
    st.read_limiter.take(user).map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many reads; try again in {} s", wait.as_secs()),
        )
        .retry_after(wait)
    })
}

/// Loads a record the caller may see (requester or admin); anything else is 404.
pub async fn visible(
    st: &AppState,
    caller: &tars_kbase::AuthUser,
    raw_id: &str,
) -> Result<(RequestRecord, u64), ApiError> {
    let id =
        RequestId::parse(raw_id).map_err(|_| ApiError::not_found(format!("request {raw_id}")))?;
    super::name_request(&id);
    match st.store.get(&id).await? {
        Some(v) if caller.is_admin || v.value.requester == caller.username => {
            Ok((v.value, v.revision))
        }
        _ => Err(ApiError::not_found(format!("request {id}"))),
    }
}

/// `GET /requests/{id}`: the record and its history from the audit stream.
pub async fn get_one(
    State(st): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    spend_read(&st, &user.username)?;
    let (rec, _) = visible(&st, &user, &id).await?;
    let history = history::of(&st.events, &rec.request_id).await?;
    let mut v = serde_json::to_value(&rec).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("slack_claim");
        o.remove("outbox");
        o.insert("history".into(), Value::Array(history));
    }
    Ok(Json(v))
}

/// `GET /requests` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    requester: Option<String>,
    /// The last request id of the previous page.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /requests?status=&requester=&cursor=&limit=`: own requests; admins see anyone's
/// (by `requester` or `status`; with neither, every request not finished yet).
pub async fn list(
    State(st): State<AppState>,
    Caller(user): Caller,
    StrictQuery(q): StrictQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    spend_read(&st, &user.username)?;
    let status: Option<RequestStatus> = q.status.as_deref().map(str::parse).transpose()?;
    let requester = match q.requester.as_deref() {
        Some(r) => {
            let r = Username::parse(r)?;
            if !user.is_admin && r != user.username {
                return Err(ApiError::forbidden(
                    "only admins may list other users' requests",
                ));
            }
            Some(r)
        }
        None if user.is_admin => None,
        None => Some(user.username.clone()),
    };
    let cursor = q.cursor.as_deref().map(RequestId::parse).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let page = st
        .store
        .list(requester.as_ref(), status, cursor.as_ref(), limit)
        .await?;
    let next = page.next.map(|id| id.to_string());
    let page = page.records;
    Ok(Json(json!({"requests": page, "next": next})))
}

/// `POST /requests/{id}/cancel`: the requester withdraws a pending request.
pub async fn cancel(
    State(st): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (rec, _) = visible(&st, &user, &id).await?;
    let cmd = Command::Cancel {
        by: user.username.clone(),
    };
    let (step, at) = step_now(&st, &rec.request_id, &cmd).await?;
    fail::fail_point!("cancel.after_write");
    // A repeat (cancelled already) publishes again in case the first publish was lost;
    // the stream keeps one copy.
    st.publisher
        .emit_all(&rec.request_id, &step.effects, 0, at)
        .await?;
    if !step.changed {
        return Err(ApiError::conflict(format!(
            "request {} is already cancelled",
            rec.request_id
        )));
    }
    st.metrics.requests.with_label_values(&["cancelled"]).inc();
    Ok(Json(json!({
        "request_id": rec.request_id,
        "status": "cancelled",
        "message": format!("Request {} cancelled.", rec.request_id),
    })))
}

/// Steps `cmd` on the stored record of `id` now (one compare-and-set, its events in the
/// outbox); a refusal is 409, or 403 when only the requester may do this.
async fn step_now(
    st: &AppState,
    id: &RequestId,
    cmd: &Command,
) -> Result<(machine::Step, time::OffsetDateTime), ApiError> {
    let at = now();
    match st.store.step(id, cmd, at, 0, &st.policy).await? {
        Ok(step) => Ok((step, at)),
        Err(Refusal::NotRequester) => Err(ApiError::forbidden(
            "only the requester may cancel a request",
        )),
        Err(refusal) => Err(ApiError::conflict(format!("request {id}: {refusal}"))),
    }
}

/// `POST /requests/{id}/revoke` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /requests/{id}/revoke`: an admin, or the requester giving up their own access,
/// ends applied access now. 202 while applied (the governance-applier removes the
/// membership), 409 otherwise, the uniform 404 for anybody else.
pub async fn revoke(
    State(st): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<RevokeBody>,
) -> Result<Response, ApiError> {
    let (rec, _) = visible(&st, &user, &id).await?;
    let reason =
        Justification::parse(body.reason.as_deref().unwrap_or(""))?.map(|r| r.as_str().to_owned());
    let cmd = Command::Revoke {
        by: user.username.clone(),
        reason,
    };
    let (step, at) = step_now(&st, &rec.request_id, &cmd).await?;
    fail::fail_point!("revoke.after_write");
    // A repeat (this caller's revocation is under way) publishes again in case the first
    // publish was lost; the stream keeps one copy.
    st.publisher
        .emit_all(&rec.request_id, &step.effects, 0, at)
        .await?;
    if step.changed {
        st.metrics.requests.with_label_values(&["revoking"]).inc();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": rec.request_id,
            "status": step.record.status,
            "message": format!(
                "Access of request {} is being removed; GET /requests/{} shows when it is done.",
                rec.request_id, rec.request_id
            ),
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;
    use proptest::prelude::*;

    const MAX: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            "\\PC{0,80}".prop_map(Value::from),
            "[a-z][a-z0-9_]{0,70}".prop_map(Value::from),
            prop_oneof![
                Just("read_only"),
                Just("read_write"),
                Just("1d"),
                Just("90d"),
                Just("91d"),
                Just("0s")
            ]
            .prop_map(Value::from),
        ]
    }

    fn body() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            prop_oneof![
                Just("tenant_name".to_owned()),
                Just("permission".to_owned()),
                Just("justification".to_owned()),
                Just("duration".to_owned()),
                "[a-z_]{1,12}",
            ],
            field(),
            0..6,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn status_of(bytes: &[u8]) -> Result<Submission, StatusCode> {
        parse_json::<SubmitBody>(bytes)
            .and_then(|b| b.validate(MAX))
            .map_err(|e| e.status)
    }

    proptest! {
        /// Any bytes: a submission, 400 (not JSON) or 422 (not a valid submission).
        #[test]
        fn arbitrary_bytes_are_a_submission_or_400_or_422(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Err(s) = status_of(&bytes) {
                prop_assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY, "{}", s);
            }
        }

        /// Any object: accepted only with exactly the known fields, a valid tenant and a
        /// duration within the maximum; anything else is 422.
        #[test]
        fn arbitrary_objects_are_accepted_only_when_every_field_is_valid(b in body()) {
            let got = status_of(b.to_string().as_bytes());
            let known = ["tenant_name", "permission", "justification", "duration"];
            let obj = b.as_object().expect("object");
            match got {
                Ok(sub) => {
                    prop_assert!(obj.keys().all(|k| known.contains(&k.as_str())));
                    prop_assert_eq!(Some(sub.tenant.as_str()), obj["tenant_name"].as_str().map(str::trim));
                    if let Some(d) = sub.duration {
                        prop_assert!(!d.is_zero() && d <= MAX);
                    }
                }
                Err(s) => prop_assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY),
            }
        }
    }

    #[test]
    fn a_duration_beyond_the_maximum_is_422() {
        let b = br#"{"tenant_name": "kbase", "duration": "91d"}"#;
        assert_eq!(status_of(b).err(), Some(StatusCode::UNPROCESSABLE_ENTITY));
        let ok = status_of(br#"{"tenant_name": "kbase", "duration": "90d"}"#).expect("valid");
        assert_eq!(ok.duration, Some(MAX));
    }
}
