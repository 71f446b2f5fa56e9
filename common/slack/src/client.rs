//! The Slack Web API calls TARS makes: `chat.postMessage`, `chat.update`, `views.open`.
//!
//! Slack answers most failures with HTTP 200 and `{"ok": false, "error": "<code>"}`; those
//! codes are sorted here into permanent (fix the configuration: dead-letter) and transient
//! (retry).
//!
//! **Rate limits are waiting, not failure.** A call to a channel that meets a 429 (or
//! `ratelimited`) pauses every call to that channel until `Retry-After` has passed, then
//! tries again itself: it never returns the limit to its caller, so a burst never uses up
//! delivery attempts and never dead-letters. After a limit the channel's calls go single
//! file for a while, so when a pause ends one call meets Slack, not every waiting task at
//! once (no thundering herd). Waits carry a little jitter, and show in
//! `tars_slack_rate_limited_total` and `tars_slack_wait_seconds_total`.
//!
//! Each HTTP call runs in a span of its own (`call`, peer `slack`, operation = the method)
//! and sends a W3C `traceparent`, so Slack-side delays show in the request's trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use tars_observability::metrics::Metrics;
use tars_observability::trace;

/// The Slack metadata `event_type` of TARS's request messages.
pub const METADATA_EVENT: &str = "tars_access_request";

/// How many pages of channel history a lookup reads at most (200 messages each).
const HISTORY_PAGES: usize = 3;

/// The longest `Retry-After` honoured: Slack's are seconds to a minute; a larger one is
/// read as this many seconds, so no answer can overflow time arithmetic.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// The most jitter added to a wait, so calls released by one pause do not arrive at once.
const MAX_JITTER: Duration = Duration::from_millis(200);

/// Why a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack will refuse this again until someone fixes the configuration or the input.
    #[error("Slack refused: {0}")]
    Permanent(String),
    /// Slack asked us to slow down (only for calls with no channel to wait on, such as
    /// `views.open`; channel calls wait instead).
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

/// A post's turn at its channel ([`SlackClient::post_turn`]).
pub struct PostTurn<'a> {
    client: &'a SlackClient,
    channel: String,
    _single_file: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PostTurn<'_> {
    /// Posts the message of request `request_id`, one call; returns where it lives.
    ///
    /// The message carries Slack `metadata` naming the request, so that after an ambiguous
    /// failure [`SlackClient::find_posted`] can tell whether it landed. A rate limit pauses
    /// the channel and is returned ([`SlackError::RateLimited`]: nothing was posted), so
    /// the caller takes a new turn.
    pub async fn post(
        self,
        text: &str,
        blocks: &Value,
        request_id: &str,
    ) -> Result<Posted, SlackError> {
        let body = json!({
            "channel": self.channel, "text": text, "blocks": blocks, "unfurl_links": false,
            "metadata": {"event_type": METADATA_EVENT, "event_payload": {"request_id": request_id}},
        });
        let a = self.client.send("chat.postMessage", &body).await;
        if let Err(SlackError::RateLimited(wait)) = &a {
            self.client
                .limited("chat.postMessage", &self.channel, *wait);
        }
        let a = a?;
        match (a.channel, a.ts) {
            (Some(channel), Some(ts)) => Ok(Posted { channel, ts }),
            _ => Err(SlackError::Transient(
                "postMessage answer without channel/ts".into(),
            )),
        }
    }
}

/// What a look for a request's message in a channel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The message is there.
    Found(Posted),
    /// It is not (in the pages read).
    NotFound,
    /// Slack refused the look-up (the app lacks `channels:history`, is not in the channel,
    /// ...): whether the message is there cannot be known.
    Refused(String),
}

/// The Slack Web API client; cheap to clone (the pause gate is shared).
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
    metrics: Metrics,
    /// The rate-limit gate of each channel, shared by every task of the process.
    gates: Arc<Mutex<HashMap<String, Gate>>>,
    /// Optional proactive pacing of posts (`SLACK_MAX_POSTS_PER_SECOND`): the time
    /// between two posts to one channel, and when each channel's last post went.
    post_interval: Option<Duration>,
    next_post: Arc<Mutex<HashMap<String, Instant>>>,
}

/// After a rate limit, calls to the channel go one at a time for this long, so the limit
/// is met by one call at a time rather than by every waiting task at once.
const COOLDOWN: Duration = Duration::from_secs(10);

/// One channel's gate.
#[derive(Default)]
struct Gate {
    /// No call to the channel before this.
    paused_until: Option<Instant>,
    /// When the channel last met a rate limit.
    limited_at: Option<Instant>,
    /// Held by the one call in flight while the channel cools down.
    single_file: Arc<tokio::sync::Mutex<()>>,
}

impl Gate {
    fn cooling(&self, now: Instant) -> bool {
        self.limited_at
            .is_some_and(|t| now.duration_since(t) < COOLDOWN)
    }
}

/// A small random wait, from the clock's low bits (good enough to spread wake-ups).
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    MAX_JITTER.mul_f64(f64::from(nanos % 1000) / 1000.0)
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
    /// `conversations.history`: the page of messages.
    #[serde(default)]
    messages: Vec<Value>,
    /// `users.lookupByEmail`: the user found.
    #[serde(default)]
    user: Option<Value>,
    #[serde(default)]
    response_metadata: Option<ResponseMetadata>,
}

#[derive(Deserialize)]
struct ResponseMetadata {
    #[serde(default)]
    next_cursor: Option<String>,
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
            | "users_not_found"
            | "message_not_found"
            | "cant_update_message"
            | "edit_window_closed"
            | "invalid_trigger_id"
            | "expired_trigger_id"
            | "exchanged_trigger_id"
            | "view_too_large"
            | "unknown_method"
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
            gates: Arc::default(),
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

    /// Waits until no rate limit pauses `channel`. The notifier waits here *before* it
    /// claims the posting, so a claim covers the post, not a pause in front of it. (The
    /// optional pacing slot is taken at the post itself, so that posts are spaced when they
    /// are sent, whatever the claim in between took.)
    pub async fn wait_turn(&self, channel: &str) {
        loop {
            let until = {
                let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
                gates.get(channel).and_then(|g| g.paused_until)
            };
            match until.map(|u| u.saturating_duration_since(Instant::now())) {
                Some(left) if !left.is_zero() => self.wait(left + jitter(), "paused").await,
                _ => return,
            }
        }
    }

    /// How long a post to `channel` would wait for its turn now, as far as the gate knows:
    /// a pause after a rate limit, or the next pacing slot (the single-file queue after a
    /// limit is not foreseen). The notifier extends its lease over it in one write.
    pub fn expected_wait(&self, channel: &str) -> Duration {
        let now = Instant::now();
        let paused = {
            let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            gates
                .get(channel)
                .and_then(|g| g.paused_until)
                .map(|u| u.saturating_duration_since(now))
                .unwrap_or_default()
        };
        let paced = match self.post_interval {
            Some(interval) => {
                let last = self.next_post.lock().unwrap_or_else(|p| p.into_inner());
                last.get(channel)
                    .map(|sent| (*sent + interval).saturating_duration_since(now))
                    .unwrap_or_default()
            }
            None => Duration::ZERO,
        };
        paused.max(paced)
    }

    /// Waits until this post may go under the pacing: at least one interval after the
    /// channel's previous post *was sent* (not after it was scheduled, so a task woken late
    /// never sends two posts close together).
    async fn pace(&self, channel: &str) {
        let Some(interval) = self.post_interval else {
            return;
        };
        loop {
            let wait = {
                let mut last = self.next_post.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match last.get(channel) {
                    Some(sent) if now.duration_since(*sent) < interval => {
                        interval - now.duration_since(*sent)
                    }
                    _ => {
                        last.insert(channel.to_owned(), now);
                        return;
                    }
                }
            };
            self.wait(wait, "paced").await;
        }
    }

    async fn wait(&self, d: Duration, reason: &str) {
        if d.is_zero() {
            return;
        }
        tokio::time::sleep(d).await;
        self.metrics
            .slack_wait_seconds
            .with_label_values(&[reason])
            .inc_by(d.as_secs_f64());
    }

    /// Waits for a post's turn at `channel`: until no rate limit pauses it, the optional
    /// pacing slot is taken and, while the channel cools down after a limit, the single
    /// file place is held. The caller sends with [`PostTurn::post`]; in between it may
    /// renew a lease, so that the post goes out within it however long the wait was.
    pub async fn post_turn(&self, channel: &str) -> PostTurn<'_> {
        self.pace(channel).await;
        let single_file = self.pass_gate(channel).await;
        PostTurn {
            client: self,
            channel: channel.to_owned(),
            _single_file: single_file,
        }
    }

    /// The Slack user id of whoever has `email` (`users.lookupByEmail`), `None` when
    /// nobody in the workspace has it: the requester simply gets no DM.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<String>, SlackError> {
        let req = self
            .http
            .get(format!("{}/users.lookupByEmail", self.base))
            .query(&[("email", email)]);
        match self.answer("users.lookupByEmail", req).await {
            Ok(a) => Ok(a.user.and_then(|u| u["id"].as_str().map(str::to_owned))),
            Err(SlackError::Permanent(e)) if e.ends_with("users_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `text` to a user (a DM: `chat.postMessage` to their user id) or as a reply
    /// in the thread of message `thread_ts` of `channel`.
    pub async fn post_text(
        &self,
        channel: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> Result<(), SlackError> {
        let mut body = json!({"channel": channel, "text": text, "unfurl_links": false});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call("chat.postMessage", Some(channel), &body)
            .await
            .map(|_| ())
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
        let call = trace::outgoing("slack", "response_url");
        let mut req = self.http.post(response_url).json(&body);
        if let Some(tp) = call.traceparent() {
            req = req.header(trace::TRACEPARENT, tp);
        }
        let resp = call
            .run(req.send())
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

    /// The URL is left out of the text: a `response_url` is as good as a bearer token for
    /// the interaction it belongs to, and the method is named by the caller.
    fn transport_error(&self, e: reqwest::Error) -> SlackError {
        let kind = self.metrics.transport_failure("slack", e.is_timeout());
        SlackError::Transient(format!("{kind}: {}", e.without_url()))
    }

    /// Waits while `channel` is paused; returns the single-file guard when the channel is
    /// cooling down after a rate limit (calls then go one at a time).
    async fn pass_gate(&self, channel: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        loop {
            let (until, cooling, single_file) = {
                let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
                let g = gates.entry(channel.to_owned()).or_default();
                (
                    g.paused_until,
                    g.cooling(Instant::now()),
                    g.single_file.clone(),
                )
            };
            let now = Instant::now();
            if let Some(until) = until.filter(|u| *u > now) {
                self.wait(until - now + jitter(), "paused").await;
                continue;
            }
            if !cooling {
                return None;
            }
            let guard = single_file.lock_owned().await;
            // The call ahead may have met the limit again while this one queued.
            let paused = {
                let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
                gates
                    .get(channel)
                    .and_then(|g| g.paused_until)
                    .is_some_and(|u| u > Instant::now())
            };
            if !paused {
                return Some(guard);
            }
        }
    }

    fn pause(&self, channel: &str, wait: Duration) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let g = gates.entry(channel.to_owned()).or_default();
        let now = Instant::now();
        if g.paused_until.is_none_or(|u| u < now + wait) {
            g.paused_until = Some(now + wait);
        }
        g.limited_at = Some(now);
    }

    /// Looks in `channel`'s history since `oldest` (Unix seconds) for the message of
    /// `request_id`, by its metadata: the answer to "did the post whose reply was lost
    /// land?". Reads at most a few pages, newest first. A rate-limited page is waited for
    /// and read again (a limit is no answer); a refused look-up says so
    /// ([`Lookup::Refused`]); an outage is an error.
    pub async fn find_posted(
        &self,
        channel: &str,
        request_id: &str,
        oldest: i64,
    ) -> Result<Lookup, SlackError> {
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        while pages < HISTORY_PAGES {
            let _single_file = self.pass_gate(channel).await;
            let mut query = vec![
                ("channel", channel.to_owned()),
                ("oldest", oldest.to_string()),
                ("include_all_metadata", "true".to_owned()),
                ("limit", "200".to_owned()),
            ];
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let req = self
                .http
                .get(format!("{}/conversations.history", self.base))
                .query(&query);
            let page = match self.answer("conversations.history", req).await {
                Err(SlackError::RateLimited(wait)) => {
                    self.limited("conversations.history", channel, wait);
                    continue;
                }
                Err(SlackError::Permanent(why)) => return Ok(Lookup::Refused(why)),
                other => other?,
            };
            pages += 1;
            let found = page.messages.iter().find(|m| {
                m["metadata"]["event_type"] == METADATA_EVENT
                    && m["metadata"]["event_payload"]["request_id"] == request_id
            });
            if let Some(m) = found {
                return Ok(match m["ts"].as_str() {
                    Some(ts) => Lookup::Found(Posted {
                        channel: channel.to_owned(),
                        ts: ts.to_owned(),
                    }),
                    None => Lookup::NotFound,
                });
            }
            cursor = page
                .response_metadata
                .and_then(|r| r.next_cursor)
                .filter(|c| !c.is_empty());
            if cursor.is_none() {
                break;
            }
        }
        Ok(Lookup::NotFound)
    }

    fn limited(&self, method: &str, channel: &str, wait: Duration) {
        self.metrics
            .slack_rate_limited
            .with_label_values(&[method])
            .inc();
        tracing::debug!(%channel, ?wait, "Slack rate limit: pausing the channel");
        self.pause(channel, wait);
    }

    /// One call to `channel` through the gate; a rate limit pauses the channel and is
    /// returned.
    async fn call_once(
        &self,
        method: &str,
        channel: &str,
        body: &Value,
    ) -> Result<Answer, SlackError> {
        let _single_file = self.pass_gate(channel).await;
        let answer = self.send(method, body).await;
        if let Err(SlackError::RateLimited(wait)) = &answer {
            self.limited(method, channel, *wait);
        }
        answer
    }

    /// Calls `method`; a call to a channel waits out rate limits (see the module doc).
    async fn call(
        &self,
        method: &str,
        channel: Option<&str>,
        body: &Value,
    ) -> Result<Answer, SlackError> {
        let Some(channel) = channel else {
            return self.send(method, body).await;
        };
        loop {
            match self.call_once(method, channel, body).await {
                Err(SlackError::RateLimited(_)) => continue,
                other => return other,
            }
        }
    }

    /// One HTTP call to the Web API with a JSON body, its answer classified.
    async fn send(&self, method: &str, body: &Value) -> Result<Answer, SlackError> {
        let req = self.http.post(format!("{}/{method}", self.base)).json(body);
        self.answer(method, req).await
    }

    /// Sends `req` with the bot token (and the `traceparent` of its span) and classifies
    /// Slack's answer.
    async fn answer(
        &self,
        method: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer, SlackError> {
        let call = trace::outgoing("slack", method);
        let req = match call.traceparent() {
            Some(tp) => req.header(trace::TRACEPARENT, tp),
            None => req,
        };
        call.run(self.classify(method, req)).await
    }

    async fn classify(
        &self,
        method: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer, SlackError> {
        let resp = req
            .bearer_auth(&*self.token)
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
                // Bounded, so that no answer can overflow the gate's clock arithmetic.
                .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_SECS)))
                .unwrap_or(Duration::from_secs(1));
            return Err(SlackError::RateLimited(wait));
        }
        if !status.is_success() {
            self.metrics.external("slack", status.as_str());
            return Err(SlackError::Transient(format!("{method}: HTTP {status}")));
        }
        let answer: Answer = resp.json().await.map_err(|e| {
            self.metrics.external("slack", "bad_answer");
            SlackError::Transient(format!("{method}: unreadable answer: {}", e.without_url()))
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
