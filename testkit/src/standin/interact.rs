//! Sends Slack interactions exactly as Slack does: form-encoded `payload=<JSON>`, signed
//! with `X-Slack-Signature` (v0) and `X-Slack-Request-Timestamp`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tars_slack::signature::sign;

static CLICKS: AtomicU64 = AtomicU64::new(1);

/// Signs and sends interactions to an ingress.
#[derive(Clone)]
pub struct SlackInteractor {
    secret: String,
    ingress: String,
    http: reqwest::Client,
    channel: String,
}

/// The form body of a `block_actions` click on a button in workspace `T1`, channel `C1`.
pub fn block_actions_body(
    user_id: &str,
    action_id: &str,
    request_id: &str,
    response_url: &str,
) -> String {
    block_actions_body_in("T1", "C1", user_id, action_id, request_id, response_url)
}

/// The form body of a `block_actions` click in workspace `team`, channel `channel`.
pub fn block_actions_body_in(
    team: &str,
    channel: &str,
    user_id: &str,
    action_id: &str,
    request_id: &str,
    response_url: &str,
) -> String {
    let n = CLICKS.fetch_add(1, Ordering::Relaxed);
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.to_lowercase(), "team_id": team},
        "api_app_id": "A1", "token": "legacy",
        "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": channel},
        "trigger_id": format!("trigger.{n}"),
        "team": {"id": team}, "channel": {"id": channel},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "decision",
                     "value": request_id, "action_ts": format!("1700000000.{n:06}")}],
    });
    form(&payload)
}

/// The form body of a `view_submission` of the KBase-token modal.
pub fn token_modal_body(user_id: &str, request_id: &str, decision: &str, token: &str) -> String {
    let n = CLICKS.fetch_add(1, Ordering::Relaxed);
    let meta = json!({"request_id": request_id, "decision": decision}).to_string();
    let payload = json!({
        "type": "view_submission",
        "user": {"id": user_id, "team_id": "T1"},
        "team": {"id": "T1"},
        "view": {"id": format!("V{n}"), "callback_id": "tars_kbase_token", "private_metadata": meta,
                 "state": {"values": {"kbase_token": {"token": {"type": "plain_text_input", "value": token}}}}},
    });
    form(&payload)
}

fn form(payload: &serde_json::Value) -> String {
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap_or_default()
}

impl SlackInteractor {
    /// Sends to `{ingress}/slack/interact` signed with `secret`.
    pub fn new(secret: &str, ingress: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            ingress: ingress.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            channel: "C1".into(),
        }
    }

    /// Clicks as if the buttons were in `channel` (default `C1`).
    pub fn in_channel(mut self, channel: &str) -> Self {
        self.channel = channel.to_owned();
        self
    }

    /// Sends `body` signed for `timestamp` (tests forge, replay and age bodies with this).
    pub async fn send_signed(
        &self,
        body: String,
        timestamp: i64,
        retry_num: Option<u32>,
    ) -> reqwest::Result<reqwest::Response> {
        let ts = timestamp.to_string();
        let mut req = self
            .http
            .post(format!("{}/slack/interact", self.ingress))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", &ts)
            .header(
                "x-slack-signature",
                sign(&self.secret, &ts, body.as_bytes()),
            );
        if let Some(n) = retry_num {
            req = req
                .header("x-slack-retry-num", n.to_string())
                .header("x-slack-retry-reason", "http_timeout");
        }
        req.body(body).send().await
    }

    /// A button click by `user_id`, signed now.
    pub async fn click(
        &self,
        user_id: &str,
        action_id: &str,
        request_id: &str,
        response_url: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.send_signed(
            block_actions_body_in(
                "T1",
                &self.channel,
                user_id,
                action_id,
                request_id,
                response_url,
            ),
            now(),
            None,
        )
        .await
    }

    /// A token-modal submission, signed now.
    pub async fn submit_token_modal(
        &self,
        user_id: &str,
        request_id: &str,
        decision: &str,
        token: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.send_signed(
            token_modal_body(user_id, request_id, decision, token),
            now(),
            None,
        )
        .await
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
