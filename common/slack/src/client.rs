//! The Slack Web API calls TARS makes: `chat.postMessage`, `chat.update`, `views.open`.
//!
//! Slack answers most failures with HTTP 200 and `{"ok": false, "error": "<code>"}`; those
//! codes are sorted here into permanent (fix the configuration: dead-letter) and transient
//! (retry). A 429 pauses every call to that channel until `Retry-After` has passed, so a
//! burst of requests waits together instead of each message failing on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use tars_observability::metrics::Metrics;

/// Longest pause a call waits out in place; longer pauses go back to the caller as
/// [`SlackError::RateLimited`] so the message is retried later instead of holding a slot.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(5);

/// Why a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack will refuse this again until someone fixes the configuration or the input.
    #[error("Slack refused: {0}")]
    Permanent(String),
    /// Slack asked us to slow down.
    #[error("Slack rate limit: retry after {0:?}")]
    RateLimited(Duration),
    /// Slack or the network failed; trying again may work.
    #[error("Slack unavailable: {0}")]
    Transient(String),
}

/// Where a posted message lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// Channel id.
    pub channel: String,
    /// Message timestamp (its id).
    pub ts: String,
}

/// The Slack Web API client; cheap to clone (the pause gate is shared).
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
    metrics: Metrics,
    paused_until: Arc<Mutex<HashMap<String, Instant>>>,
    /// Optional proactive pacing of posts (`SLACK_MAX_POSTS_PER_SECOND`): the time
    /// between two posts to one channel, and the next free slot per channel.
    post_interval: Option<Duration>,
    next_post: Arc<Mutex<HashMap<String, Instant>>>,
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

fn is_permanent(code: &str) -> bool {
    matches!(
        code,
        "channel_not_found"
            | "invalid_auth"
            | "not_authed"
            | "account_inactive"
            | "token_revoked"
            | "token_expired"
            | "no_permission"
            | "missing_scope"
            | "not_in_channel"
            | "is_archived"
            | "invalid_blocks"
            | "invalid_arguments"
            | "msg_too_long"
            | "message_not_found"
            | "cant_update_message"
            | "edit_window_closed"
            | "invalid_trigger_id"
            | "expired_trigger_id"
            | "exchanged_trigger_id"
            | "view_too_large"
    )
}

impl SlackClient {
    /// A client for `base` (e.g. `https://slack.com/api`) with the bot `token`.
    pub fn new(http: reqwest::Client, base: &str, token: &str, metrics: Metrics) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').into(),
            token: token.into(),
            metrics,
            paused_until: Arc::default(),
            post_interval: None,
            next_post: Arc::default(),
        }
    }

    /// Spaces posts to one channel at most `per_second` apart, so a burst waits its turn
    /// instead of meeting Slack's 429s.
    pub fn with_pacing(mut self, per_second: Option<f64>) -> Self {
        self.post_interval = per_second
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        self
    }

    /// Waits for this post's slot under the pacing, or says how long to retry after when
    /// the queue is longer than a handler should wait in place.
    async fn pace(&self, channel: &str) -> Result<(), SlackError> {
        let Some(interval) = self.post_interval else {
            return Ok(());
        };
        let wait = {
            let mut next = self.next_post.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.get(channel).copied().unwrap_or(now).max(now);
            let wait = slot - now;
            if wait > MAX_INLINE_WAIT {
                return Err(SlackError::RateLimited(wait - MAX_INLINE_WAIT));
            }
            next.insert(channel.to_owned(), slot + interval);
            wait
        };
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Posts a new message; returns where it lives.
    pub async fn post_message(
        &self,
        channel: &str,
        text: &str,
        blocks: &Value,
    ) -> Result<Posted, SlackError> {
        self.pace(channel).await?;
        let body =
            json!({"channel": channel, "text": text, "blocks": blocks, "unfurl_links": false});
        let a = self.call("chat.postMessage", Some(channel), &body).await?;
        match (a.channel, a.ts) {
            (Some(channel), Some(ts)) => Ok(Posted { channel, ts }),
            _ => Err(SlackError::Transient(
                "postMessage answer without channel/ts".into(),
            )),
        }
    }

    /// Replaces a message's text and blocks.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &Value,
    ) -> Result<(), SlackError> {
        let body = json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks});
        self.call("chat.update", Some(channel), &body)
            .await
            .map(|_| ())
    }

    /// Opens a modal for the user who clicked (needs the interaction's `trigger_id`,
    /// valid for 3 s).
    pub async fn open_view(&self, trigger_id: &str, view: &Value) -> Result<(), SlackError> {
        let body = json!({"trigger_id": trigger_id, "view": view});
        self.call("views.open", None, &body).await.map(|_| ())
    }

    /// Posts to an interaction's `response_url` (an ephemeral answer to the clicker).
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackError> {
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        let resp = self
            .http
            .post(response_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        self.metrics.external("slack", resp.status().as_str());
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SlackError::Transient(format!(
                "response_url HTTP {}",
                resp.status()
            )))
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> SlackError {
        let kind = self.metrics.transport_failure("slack", e.is_timeout());
        SlackError::Transient(format!("{kind}: {e}"))
    }

    async fn wait_for_gate(&self, channel: &str) -> Result<(), SlackError> {
        let until = {
            let gate = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            gate.get(channel).copied()
        };
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                let left = until - now;
                if left > MAX_INLINE_WAIT {
                    return Err(SlackError::RateLimited(left));
                }
                tokio::time::sleep(left).await;
            }
        }
        Ok(())
    }

    fn pause(&self, channel: &str, wait: Duration) {
        let mut gate = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + wait;
        let slot = gate.entry(channel.to_owned()).or_insert(until);
        if *slot < until {
            *slot = until;
        }
    }

    async fn call(
        &self,
        method: &str,
        channel: Option<&str>,
        body: &Value,
    ) -> Result<Answer, SlackError> {
        if let Some(c) = channel {
            self.wait_for_gate(c).await?;
        }
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(&*self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            self.metrics.external("slack", "429");
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1));
            if let Some(c) = channel {
                self.pause(c, wait);
            }
            return Err(SlackError::RateLimited(wait));
        }
        if !status.is_success() {
            self.metrics.external("slack", status.as_str());
            return Err(SlackError::Transient(format!("{method}: HTTP {status}")));
        }
        let answer: Answer = resp.json().await.map_err(|e| {
            self.metrics.external("slack", "bad_answer");
            SlackError::Transient(format!("{method}: unreadable answer: {e}"))
        })?;
        if answer.ok {
            self.metrics.external("slack", "ok");
            return Ok(answer);
        }
        let code = answer.error.unwrap_or_else(|| "unknown_error".into());
        self.metrics.external("slack", &code);
        if code == "ratelimited" {
            return Err(SlackError::RateLimited(Duration::from_secs(1)));
        }
        if is_permanent(&code) {
            Err(SlackError::Permanent(format!("{method}: {code}")))
        } else {
            Err(SlackError::Transient(format!("{method}: {code}")))
        }
    }
}
