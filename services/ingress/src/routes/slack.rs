//! `POST /slack/interact`: button clicks and modal submissions, signed by Slack.
//!
//! The signature is checked on the raw body before anything is parsed. Slack wants an
//! answer within 3 s, so nothing slow happens before answering: a decision is one
//! publish; telling a refused clicker why goes through `response_url` in the background.
//! A click's `Nats-Msg-Id` is a hash of the action itself, so Slack's retries
//! (`X-Slack-Retry-Num`) and replays of a signed body produce no second decision.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use tars_domain::events::Decision;
use tars_domain::machine::{Command, Refusal};
use tars_domain::{RequestId, Source, Username};
use tars_jetstream::store::StoreError;
use tars_slack::signature;

use crate::error::ApiError;
use crate::routes::approvals::{may_decide, policy_allows, publish_decision};
use crate::routes::slack_payload::{
    self, Click, ClickAction, Interaction, ModalMeta, ModalSubmit, Origin,
};
use crate::state::{AppState, ApprovalMode};

pub use super::slack_payload::{MODAL_CALLBACK_ID, TOKEN_ACTION_ID, TOKEN_BLOCK_ID};

/// Refuses a payload from another workspace, or a click in another channel, when the
/// ingress knows which ones are TARS's: a signing secret shared by several workspaces (an
/// org-wide app), or a copied button, must not decide anything.
fn check_origin(st: &AppState, origin: &Origin) -> Result<(), ApiError> {
    let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m.to_owned());
    if let Some(want) = &st.slack.team_id
        && origin.team.as_ref() != Some(want)
    {
        return Err(forbidden(
            "this interaction comes from another Slack workspace",
        ));
    }
    if let (Some(want), Some(channel)) = (&st.slack.channel_id, &origin.channel)
        && channel != want
    {
        return Err(forbidden("this button is not in the approval channel"));
    }
    Ok(())
}

fn msg_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("slack.{}", hex::encode(&h.finalize()[..16]))
}

/// Verifies, parses and dispatches one interaction.
pub async fn interact(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(secret) = st.slack.signing_secret.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Slack is not configured",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    signature::verify(
        secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()))?;
    let (origin, interaction) = slack_payload::parse(&body)?;
    match interaction {
        Interaction::Click(c) => {
            check_origin(&st, &origin)?;
            click(&st, c).await
        }
        Interaction::Modal(m) => {
            check_origin(&st, &origin)?;
            submit_token(&st, m).await
        }
        // Block actions with nothing TARS acts on still have to come from TARS's
        // workspace and channel; other payload types are answered and dropped.
        Interaction::Ignored if origin != Origin::default() => {
            check_origin(&st, &origin)?;
            Ok(StatusCode::OK.into_response())
        }
        Interaction::Ignored => Ok(StatusCode::OK.into_response()),
    }
}

fn tell(st: &AppState, response_url: Option<String>, text: String) {
    if let (Some(client), Some(url)) = (st.slack.client.clone(), response_url) {
        tokio::spawn(async move {
            if let Err(e) = client.respond(&url, &text).await {
                tracing::warn!(error = %e, "could not answer the clicker");
            }
        });
    }
}

/// The KBase user an allowlisted Slack user decides as, or `None` (and the clicker told
/// why) when they are not an approver or the list is overdue for review.
fn allowlisted<'a>(
    st: &AppState,
    approvers: &'a std::collections::HashMap<String, Username>,
    slack_user: &str,
    id: &RequestId,
    response_url: &Option<String>,
) -> Option<&'a Username> {
    let Some(kbase_user) = approvers.get(slack_user) else {
        tracing::info!(%slack_user, request_id = %id, "click by a Slack user who is not an approver");
        tell(
            st,
            response_url.clone(),
            "You are not an approver for TARS access requests; your click changed nothing.".into(),
        );
        return None;
    };
    if let Some(due) = st.slack.approvers_review_due
        && tars_domain::now() >= due
    {
        tracing::warn!(%slack_user, request_id = %id, "click refused: the approver list is overdue for review (SLACK_APPROVERS_REVIEWED)");
        tell(
            st,
            response_url.clone(),
            "The TARS approver list is overdue for its review (SLACK_APPROVERS_REVIEWED), so Slack clicks decide nothing until an operator confirms it; decide over the REST API meanwhile."
                .into(),
        );
        return None;
    }
    Some(kbase_user)
}

/// A click on Revoke: an allowlisted approver ends the grant now (one compare-and-set,
/// like `POST /requests/{id}/revoke`). In kbase-token mode the clicker is pointed to REST.
async fn revoke_click(
    st: &AppState,
    slack_user: String,
    id: RequestId,
    response_url: Option<String>,
) -> Result<Response, ApiError> {
    let ApprovalMode::Allowlist(approvers) = &st.slack.mode else {
        tell(
            st,
            response_url,
            format!(
                "Revoking from Slack needs allowlist approval mode; use POST /requests/{id}/revoke."
            ),
        );
        return Ok(StatusCode::OK.into_response());
    };
    let Some(by) = allowlisted(st, approvers, &slack_user, &id, &response_url) else {
        return Ok(StatusCode::OK.into_response());
    };
    let cmd = Command::Revoke {
        by: by.clone(),
        reason: Some("revoked in Slack".into()),
    };
    let at = tars_domain::now();
    match st.store.step(&id, &cmd, at, 0, &st.policy).await {
        Ok(Ok(step)) => {
            st.publisher.emit_all(&id, &step.effects, 0, at).await?;
            tracing::info!(%slack_user, approver = %by, request_id = %id, "access revoked from Slack");
        }
        Ok(Err(refusal)) => tell(st, response_url, format!("Request {id}: {refusal}.")),
        Err(StoreError::NotFound(_)) => {
            tell(st, response_url, format!("Request {id} does not exist."))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(StatusCode::OK.into_response())
}

async fn click(st: &AppState, c: Click) -> Result<Response, ApiError> {
    let Click {
        slack_user,
        action,
        request_id: id,
        action_ts,
        trigger_id,
        response_url,
    } = c;
    super::name_request(&id);
    let decision = match action {
        ClickAction::Decide(d) => d,
        ClickAction::Revoke => return revoke_click(st, slack_user, id, response_url).await,
    };
    match &st.slack.mode {
        ApprovalMode::Allowlist(approvers) => {
            let Some(kbase_user) = allowlisted(st, approvers, &slack_user, &id, &response_url)
            else {
                return Ok(StatusCode::OK.into_response());
            };
            // An allowlisted Slack user counts as an admin (the list is the operator's
            // grant); the tenant's policy may still name other approvers.
            let roles = st.auth.admin_roles().to_vec();
            if let Some(why) = refusal(st, &id, decision, kbase_user, &roles, true).await? {
                tell(st, response_url, why);
                return Ok(StatusCode::OK.into_response());
            }
            let kind = format!("{decision:?}");
            let key = msg_id(&[
                &slack_user,
                &kind,
                id.as_str(),
                action_ts.as_deref().unwrap_or(""),
            ]);
            publish_decision(
                st,
                id,
                decision,
                kbase_user.clone(),
                Source::Slack,
                None,
                &key,
            )
            .await?;
            Ok(StatusCode::OK.into_response())
        }
        ApprovalMode::KbaseToken => {
            let (Some(client), Some(trigger)) = (st.slack.client.clone(), trigger_id) else {
                return Err(ApiError::unavailable(
                    "the token modal needs SLACK_BOT_TOKEN",
                ));
            };
            let meta = serde_json::to_string(&ModalMeta {
                request_id: id.clone(),
                decision,
            })
            .unwrap_or_default();
            let verb = if decision == Decision::Approve {
                "Approve"
            } else {
                "Deny"
            };
            let view = json!({
                "type": "modal",
                "callback_id": MODAL_CALLBACK_ID,
                "private_metadata": meta,
                "title": {"type": "plain_text", "text": format!("{verb} request")},
                "submit": {"type": "plain_text", "text": verb},
                "close": {"type": "plain_text", "text": "Cancel"},
                "blocks": [{
                    "type": "input", "block_id": TOKEN_BLOCK_ID,
                    "label": {"type": "plain_text", "text": "Your KBase token (admin role required)"},
                    "element": {"type": "plain_text_input", "action_id": TOKEN_ACTION_ID},
                }],
            });
            // The trigger is valid for 3 s and Slack wants our answer within 3 s: give
            // views.open 2.5 s of it, then answer regardless.
            let opened = tokio::time::timeout(
                std::time::Duration::from_millis(2500),
                client.open_view(&trigger, &view),
            )
            .await;
            let failure = match opened {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("views.open took longer than 2.5 s".to_owned()),
            };
            if let Some(e) = failure {
                tracing::warn!(error = %e, request_id = %id, "views.open failed");
                tell(
                    st,
                    response_url,
                    "TARS could not open the approval dialog; try again.".into(),
                );
            }
            Ok(StatusCode::OK.into_response())
        }
    }
}

/// Why a click cannot decide `id` (decided already, or the approver's own request), to
/// tell the clicker at once; the decision worker enforces the same rules authoritatively.
async fn refusal(
    st: &AppState,
    id: &RequestId,
    decision: Decision,
    by: &Username,
    roles: &[String],
    is_admin: bool,
) -> Result<Option<String>, ApiError> {
    let Some(rec) = st.store.get(id).await? else {
        return Ok(Some(format!("Request {id} does not exist.")));
    };
    if !policy_allows(st, &rec.value, by, roles, is_admin).await? {
        return Ok(Some(format!(
            "You are not an approver of tenant {}; your click changed nothing.",
            rec.value.tenant_name
        )));
    }
    Ok(
        match may_decide(st, &rec.value, decision, by, Source::Slack) {
            Ok(()) => None,
            Err(Refusal::OwnRequest) => Some("You may not decide your own request.".into()),
            Err(Refusal::Settled { status, by }) => Some(format!(
                "Request {id} is already {status} (by {}); your click changed nothing.",
                by.as_deref().unwrap_or("TARS")
            )),
            Err(other) => Some(format!("Request {id}: {other}.")),
        },
    )
}

fn modal_error(text: &str) -> Response {
    Json(json!({"response_action": "errors", "errors": {TOKEN_BLOCK_ID: text}})).into_response()
}

async fn submit_token(st: &AppState, m: ModalSubmit) -> Result<Response, ApiError> {
    let ModalSubmit {
        slack_user,
        view_id,
        meta,
        token,
    } = m;
    if token.is_empty() {
        return Ok(modal_error("Enter your KBase token."));
    }
    let user = match st.auth.authenticate(&token).await {
        Ok(u) => u,
        Err(tars_kbase::AuthError::Unavailable(_)) => {
            return Ok(modal_error(
                "The KBase auth service is unavailable; try again shortly.",
            ));
        }
        Err(_) => return Ok(modal_error("That KBase token is not valid.")),
    };
    drop(token);
    super::name_request(&meta.request_id);
    // The same refusals a click gets (own request, decided already), shown in the modal
    // instead of closing it as if the decision had been taken.
    if let Some(why) = refusal(
        st,
        &meta.request_id,
        meta.decision,
        &user.username,
        &user.roles,
        user.is_admin,
    )
    .await?
    {
        return Ok(modal_error(&why));
    }
    let kind = format!("{:?}", meta.decision);
    let key = msg_id(&[&view_id, &kind, meta.request_id.as_str()]);
    tracing::info!(%slack_user, approver = %user.username, request_id = %meta.request_id, "decision from the token modal");
    let by: Username = user.username;
    publish_decision(
        st,
        meta.request_id,
        meta.decision,
        by,
        Source::Slack,
        None,
        &key,
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}
