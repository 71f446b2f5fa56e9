//! Slack Web API stand-in: `chat.postMessage`, `chat.update`, `views.open`, response URLs,
//! and a small web page of the channel where a person clicks Approve/Deny (the page sends
//! properly signed interactions to the ingress, as Slack would).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::faults::Faults;
use super::interact::SlackInteractor;

/// One message in the stand-in channel.
#[derive(Debug, Clone)]
pub struct SlackMessage {
    /// Channel id.
    pub channel: String,
    /// Message id.
    pub ts: String,
    /// Fallback text.
    pub text: String,
    /// Block Kit blocks.
    pub blocks: Value,
    /// How many times `chat.update` changed it.
    pub updates: usize,
    /// When it was posted (for latency measurements).
    pub posted_at: std::time::Instant,
    /// The Slack `metadata` it was posted with.
    pub metadata: Value,
}

#[derive(Default)]
struct Inner {
    token: String,
    channels: Vec<String>,
    messages: Mutex<Vec<SlackMessage>>,
    calls: Mutex<Vec<(String, Value)>>,
    views: Mutex<Vec<Value>>,
    responses: Mutex<Vec<Value>>,
    target: Mutex<Option<SlackInteractor>>,
    faults: Faults,
    /// Slack's per-channel limit on `chat.postMessage`, when set.
    post_limit: Mutex<Option<PostLimit>>,
    /// The next this many posts land, but their answer is held this long (the client
    /// times out not knowing the post went through).
    lost_answers: Mutex<(usize, std::time::Duration)>,
    /// The workspace's members: e-mail → user id (`users.lookupByEmail`, DMs).
    users: Mutex<HashMap<String, String>>,
    /// Direct messages: (user id, text).
    dms: Mutex<Vec<(String, String)>>,
    /// Replies in threads: (channel, thread ts, text).
    replies: Mutex<Vec<(String, String, String)>>,
    /// Whom the page's visitor may click as: (Slack user id, label).
    approvers: Mutex<Vec<(String, String)>>,
    /// Bumped after every Web API call is answered.
    changes: super::Changes,
}

/// A token bucket per channel, as Slack limits posting: `per_second` tokens a second, up
/// to `burst` saved; a post with no token left gets 429 with `Retry-After` (whole seconds
/// until the next token, at least 1).
#[derive(Debug, Clone)]
struct PostLimit {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, (f64, std::time::Instant)>,
    refused: usize,
}

impl PostLimit {
    /// `None` if the post may go, else the `Retry-After` seconds.
    fn take(&mut self, channel: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let (tokens, at) = self
            .buckets
            .entry(channel.to_owned())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        self.refused += 1;
        Some(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
    }
}

/// The Slack stand-in.
pub struct FakeSlack {
    inner: Arc<Inner>,
    served: super::Served,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn api(s: &Inner, method: &str, headers: &HeaderMap, body: Value) -> Response {
    lock(&s.calls).push((method.to_owned(), body.clone()));
    if let Some(r) = s
        .faults
        .apply_to(method, json!({"ok": false, "error": "ratelimited"}))
        .await
    {
        return r;
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    match auth {
        None => return axum::Json(json!({"ok": false, "error": "not_authed"})).into_response(),
        Some(a) if a != format!("Bearer {}", s.token) => {
            return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
        }
        _ => {}
    }
    let channel = body["channel"].as_str().unwrap_or_default().to_owned();
    if method == "chat.postMessage"
        && let Some(retry_after) = lock(&s.post_limit).as_mut().and_then(|l| l.take(&channel))
    {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after.to_string())],
            axum::Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    let is_user = lock(&s.users).values().any(|u| *u == channel);
    let answer = match method {
        "users.lookupByEmail" => {
            let email = body["email"].as_str().unwrap_or_default();
            match lock(&s.users).get(email) {
                Some(id) => json!({"ok": true, "user": {"id": id, "profile": {"email": email}}}),
                None => json!({"ok": false, "error": "users_not_found"}),
            }
        }
        "chat.postMessage" if is_user => {
            let text = body["text"].as_str().unwrap_or_default().to_owned();
            lock(&s.dms).push((channel.clone(), text));
            json!({"ok": true, "channel": format!("D{channel}"), "ts": "1.000001"})
        }
        "chat.postMessage" if body["thread_ts"].is_string() => {
            let ts = body["thread_ts"].as_str().unwrap_or_default().to_owned();
            if lock(&s.messages)
                .iter()
                .any(|m| m.channel == channel && m.ts == ts)
            {
                let text = body["text"].as_str().unwrap_or_default().to_owned();
                lock(&s.replies).push((channel.clone(), ts.clone(), text));
                json!({"ok": true, "channel": channel, "ts": format!("{ts}1")})
            } else {
                json!({"ok": false, "error": "thread_not_found"})
            }
        }
        "chat.postMessage" => {
            if !s.channels.contains(&channel) {
                json!({"ok": false, "error": "channel_not_found"})
            } else {
                let mut msgs = lock(&s.messages);
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let ts = format!("{secs}.{:06}", msgs.len() + 1);
                msgs.push(SlackMessage {
                    channel: channel.clone(),
                    ts: ts.clone(),
                    text: body["text"].as_str().unwrap_or_default().to_owned(),
                    blocks: body["blocks"].clone(),
                    updates: 0,
                    posted_at: std::time::Instant::now(),
                    metadata: body["metadata"].clone(),
                });
                json!({"ok": true, "channel": channel, "ts": ts, "message": {"text": body["text"], "blocks": body["blocks"]}})
            }
        }
        "chat.update" => {
            let ts = body["ts"].as_str().unwrap_or_default();
            let mut msgs = lock(&s.messages);
            match msgs.iter_mut().find(|m| m.channel == channel && m.ts == ts) {
                Some(m) => {
                    m.text = body["text"].as_str().unwrap_or_default().to_owned();
                    m.blocks = body["blocks"].clone();
                    m.updates += 1;
                    json!({"ok": true, "channel": channel, "ts": ts, "text": m.text})
                }
                None => json!({"ok": false, "error": "message_not_found"}),
            }
        }
        "conversations.history" => {
            // Newest first, from `oldest` on, a page of `limit` from the `cursor` (an
            // offset); metadata only with `include_all_metadata`.
            let oldest: f64 = body["oldest"]
                .as_str()
                .and_then(|o| o.parse().ok())
                .unwrap_or(0.0);
            let limit: usize = body["limit"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let from: usize = body["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let with_meta = body["include_all_metadata"] == "true";
            let msgs = lock(&s.messages);
            let matching: Vec<&SlackMessage> = msgs
                .iter()
                .rev()
                .filter(|m| m.channel == channel)
                .filter(|m| m.ts.parse::<f64>().unwrap_or(0.0) >= oldest)
                .collect();
            let page: Vec<Value> = matching
                .iter()
                .skip(from)
                .take(limit)
                .map(|m| {
                    let mut v = json!({"type": "message", "ts": m.ts, "text": m.text});
                    if with_meta && !m.metadata.is_null() {
                        v["metadata"] = m.metadata.clone();
                    }
                    v
                })
                .collect();
            let next = if from + limit < matching.len() {
                (from + limit).to_string()
            } else {
                String::new()
            };
            json!({"ok": true, "messages": page, "has_more": !next.is_empty(),
                   "response_metadata": {"next_cursor": next}})
        }
        "views.open" => {
            let mut views = lock(&s.views);
            views.push(body["view"].clone());
            let mut view = body["view"].clone();
            view["id"] = json!(format!("V{}", views.len()));
            json!({"ok": true, "view": view})
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    if method == "chat.postMessage" && answer["ok"] == true {
        let hold = {
            let mut lost = lock(&s.lost_answers);
            (lost.0 > 0).then(|| {
                lost.0 -= 1;
                lost.1
            })
        };
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
    }
    axum::Json(answer).into_response()
}

/// The page of the stand-in: a shell that renders `/feed.json` once a second (no
/// full-page refresh), the way Slack shows messages: mrkdwn bold, code and links, context
/// blocks, replies in a thread under their message, a DM pane per user, and the buttons
/// clicked as the approver picked in the select.
async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html><meta charset=utf-8><title>#approvals (Slack stand-in)</title>
<style>
body{font-family:sans-serif;margin:0;display:flex;gap:1em;padding:1em}
main{flex:3}aside{flex:1;border-left:1px solid #ddd;padding-left:1em}
.msg{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.8em 0}
.ctx{color:#666;font-size:.85em}.thread{margin:.5em 0 0 1.5em;border-left:3px solid #ddd;padding-left:.8em}
.dm{border:1px solid #ddd;border-radius:6px;padding:.5em;margin:.5em 0}
button{margin-right:.4em}code{background:#f4f4f4;padding:0 .2em}
</style>
<main><h1>#approvals</h1>
<label>Click as <select id=as></select></label>
<div id=messages><p>No messages yet. Submit a request (see the terminal for a curl line).</p></div></main>
<aside><h2>Direct messages</h2><div id=dms><p>None yet.</p></div></aside>
<script>
function esc(t){return t.replace(/&(?!(amp|lt|gt);)/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;')}
function unesc(t){return t.replace(/&lt;/g,'<').replace(/&gt;/g,'>').replace(/&amp;/g,'&')}
// Slack mrkdwn: <url|text> links, *bold*, `code`, _italic_; the text arrives with & < > escaped.
function mrkdwn(t){
  let h=esc(unesc(t));
  h=h.replace(/&lt;(https?:[^|&]+)\|([^&]+)&gt;/g,(m,u,l)=>'<a href="'+u+'">'+l+'</a>');
  h=h.replace(/`([^`]+)`/g,'<code>$1</code>').replace(/\*([^*\n]+)\*/g,'<b>$1</b>').replace(/(^|\s)_([^_\n]+)_/g,'$1<i>$2</i>');
  return h.replace(/\n/g,'<br>');
}
function block(b){
  if(b.type==='header')return '<h3>'+esc(b.text.text)+'</h3>';
  if(b.type==='section'){let parts=(b.fields||[]).concat(b.text?[b.text]:[]);return '<p>'+parts.map(f=>mrkdwn(f.text)).join('<br>')+'</p>'}
  if(b.type==='context')return '<div class=ctx>'+b.elements.map(e=>mrkdwn(e.text||'')).join(' ')+'</div>';
  if(b.type==='actions')return '<div>'+b.elements.map(e=>'<button data-action="'+esc(e.action_id)+'" data-value="'+esc(e.value)+'">'+esc(e.text.text)+'</button>').join('')+'</div>';
  return '';
}
let shown='';
async function refresh(){
  const f=await (await fetch('/feed.json')).json();
  const sel=document.getElementById('as');
  if(sel.options.length!==f.approvers.length){sel.innerHTML=f.approvers.map(a=>'<option value="'+esc(a.id)+'">'+esc(a.label)+'</option>').join('')}
  const key=JSON.stringify([f.messages,f.replies,f.dms]);
  if(key===shown)return; shown=key;
  if(f.messages.length){document.getElementById('messages').innerHTML=f.messages.slice().reverse().map(m=>
    '<div class=msg data-ts="'+esc(m.ts)+'">'+m.blocks.map(block).join('')+
    f.replies.filter(r=>r.channel===m.channel&&r.thread_ts===m.ts).map(r=>'<div class=thread>'+mrkdwn(r.text)+'</div>').join('')+'</div>').join('')}
  const users=[...new Set(f.dms.map(d=>d.user))];
  if(users.length){document.getElementById('dms').innerHTML=users.map(u=>'<div class=dm data-user="'+esc(u)+'"><b>'+esc(u)+'</b>'+
    f.dms.filter(d=>d.user===u).map(d=>'<p>'+mrkdwn(d.text)+'</p>').join('')+'</div>').join('')}
}
document.addEventListener('click',async e=>{const b=e.target.closest('button[data-action]');if(!b)return;
  const body=new URLSearchParams({action_id:b.dataset.action,value:b.dataset.value,user_id:document.getElementById('as').value});
  await fetch('/click',{method:'POST',body});refresh()});
refresh();setInterval(refresh,1000);
</script>"#;

/// What the page shows, as JSON.
async fn feed(State(s): State<Arc<Inner>>) -> axum::Json<Value> {
    let messages: Vec<Value> = lock(&s.messages)
        .iter()
        .map(|m| json!({"channel": m.channel, "ts": m.ts, "text": m.text, "blocks": m.blocks}))
        .collect();
    let replies: Vec<Value> = lock(&s.replies)
        .iter()
        .map(|(c, ts, t)| json!({"channel": c, "thread_ts": ts, "text": t}))
        .collect();
    let dms: Vec<Value> = lock(&s.dms)
        .iter()
        .map(|(u, t)| json!({"user": u, "text": t}))
        .collect();
    let approvers: Vec<Value> = lock(&s.approvers)
        .iter()
        .map(|(id, label)| json!({"id": id, "label": label}))
        .collect();
    axum::Json(
        json!({"messages": messages, "replies": replies, "dms": dms, "approvers": approvers}),
    )
}

#[derive(serde::Deserialize)]
struct Click {
    action_id: String,
    value: String,
    user_id: String,
}

async fn click(State(s): State<Arc<Inner>>, Form(c): Form<Click>) -> Response {
    let target = lock(&s.target).clone();
    if let Some(i) = target
        && let Err(e) = i.click(&c.user_id, &c.action_id, &c.value, "").await
    {
        tracing::warn!(error = %e, "forwarding the click failed");
    }
    axum::http::StatusCode::NO_CONTENT.into_response()
}

impl FakeSlack {
    /// Starts on a free port, accepting `bot_token`, with `channels` existing.
    pub async fn start(bot_token: &str, channels: &[&str]) -> Self {
        Self::start_on(bot_token, channels, 0).await
    }

    /// Starts on loopback `port` (0: any).
    pub async fn start_on(bot_token: &str, channels: &[&str], port: u16) -> Self {
        Self::start_at(bot_token, channels, super::loopback(port)).await
    }

    /// Starts at `addr` (port 0: any).
    pub async fn start_at(bot_token: &str, channels: &[&str], addr: std::net::SocketAddr) -> Self {
        let inner = Arc::new(Inner {
            token: bot_token.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        });
        let method = |name: &'static str| {
            post(
                move |State(s): State<Arc<Inner>>,
                      headers: HeaderMap,
                      axum::Json(body): axum::Json<Value>| async move {
                    let answer = api(&s, name, &headers, body).await;
                    s.changes.bump();
                    answer
                },
            )
        };
        let router = axum::Router::new()
            .route(
                "/api/conversations.history",
                get(
                    |State(s): State<Arc<Inner>>,
                     headers: HeaderMap,
                     axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                        api(&s, "conversations.history", &headers, json!(q)).await
                    },
                ),
            )
            .route(
                "/api/users.lookupByEmail",
                get(
                    |State(s): State<Arc<Inner>>,
                     headers: HeaderMap,
                     axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                        api(&s, "users.lookupByEmail", &headers, json!(q)).await
                    },
                ),
            )
            .route("/api/chat.postMessage", method("chat.postMessage"))
            .route("/api/chat.update", method("chat.update"))
            .route("/api/views.open", method("views.open"))
            .route(
                "/api/response_url",
                post(
                    |State(s): State<Arc<Inner>>, axum::Json(body): axum::Json<Value>| async move {
                        lock(&s.responses).push(body);
                        "ok"
                    },
                ),
            )
            .route("/", get(page))
            .route("/feed.json", get(feed))
            .route("/click", post(click))
            .with_state(inner.clone());
        let served = super::serve(router, addr)
            .await
            .unwrap_or_else(|e| panic!("Slack stand-in: {e}"));
        Self { inner, served }
    }

    /// Web API base URL (`…/api`).
    pub fn url(&self) -> String {
        format!("http://{}/api", self.served.addr)
    }

    /// The stand-in itself: take it down (connections refused) and bring it back.
    pub fn served(&self) -> &super::Served {
        &self.served
    }

    /// Changes after every Web API call is answered: wait on it instead of polling.
    pub fn changes(&self) -> &super::Changes {
        &self.inner.changes
    }

    /// The channel page for people.
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.served.addr)
    }

    /// The next `n` posts land, but their answers are held for `hold`: a client with a
    /// shorter timeout gives up not knowing the message was posted.
    pub fn lose_next_post_answers(&self, n: usize, hold: std::time::Duration) {
        *lock(&self.inner.lost_answers) = (n, hold);
    }

    /// Limits `chat.postMessage` per channel as Slack does: `per_second` posts a second,
    /// bursts of up to `burst` pass, then 429 with `Retry-After`.
    pub fn limit_posts(&self, per_second: f64, burst: usize) {
        *lock(&self.inner.post_limit) = Some(PostLimit {
            per_second,
            burst: burst as f64,
            buckets: HashMap::new(),
            refused: 0,
        });
    }

    /// Posts the per-channel limit refused so far.
    pub fn posts_refused(&self) -> usize {
        lock(&self.inner.post_limit)
            .as_ref()
            .map_or(0, |l| l.refused)
    }

    /// A `response_url` to put in interactions.
    pub fn response_url(&self) -> String {
        format!("http://{}/api/response_url", self.served.addr)
    }

    /// Where the page's buttons send signed interactions.
    pub fn set_interaction_target(&self, ingress_url: &str, signing_secret: &str) {
        *lock(&self.inner.target) = Some(SlackInteractor::new(signing_secret, ingress_url));
    }

    /// Messages in the channel.
    pub fn messages(&self) -> Vec<SlackMessage> {
        lock(&self.inner.messages).clone()
    }

    /// Runs `f` over the messages in place: a check run after every change (a benchmark
    /// waiting for thousands of messages) must not copy every Block Kit tree each time.
    pub fn with_messages<R>(&self, f: impl FnOnce(&[SlackMessage]) -> R) -> R {
        f(&lock(&self.inner.messages))
    }

    /// Every API call (method, body), failed ones included.
    pub fn calls(&self) -> Vec<(String, Value)> {
        lock(&self.inner.calls).clone()
    }

    /// The Slack users the page lets its visitor click as, with a label each.
    pub fn set_approvers(&self, approvers: &[(&str, &str)]) {
        *lock(&self.inner.approvers) = approvers
            .iter()
            .map(|(id, label)| ((*id).to_owned(), (*label).to_owned()))
            .collect();
    }

    /// Makes `email` a member of the workspace with user id `id`.
    pub fn add_user(&self, email: &str, id: &str) {
        lock(&self.inner.users).insert(email.to_owned(), id.to_owned());
    }

    /// Direct messages sent, as (user id, text).
    pub fn dms(&self) -> Vec<(String, String)> {
        lock(&self.inner.dms).clone()
    }

    /// Replies posted in threads, as (channel, thread ts, text).
    pub fn replies(&self) -> Vec<(String, String, String)> {
        lock(&self.inner.replies).clone()
    }

    /// Opened modals.
    pub fn views(&self) -> Vec<Value> {
        lock(&self.inner.views).clone()
    }

    /// Bodies posted to the response URL.
    pub fn responses(&self) -> Vec<Value> {
        lock(&self.inner.responses).clone()
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
