//! Shows every request in Slack: one message per request, updated as it moves.
//!
//! The message is rendered from the *current* record, never from the event, so repeated
//! or out-of-order events converge on the right message. The first post is claimed in the
//! record with a compare-and-set before Slack is called, so two replicas handling two
//! events of one new request post once.

use std::time::Duration;

use tars_domain::events::Event;
use tars_domain::{RequestId, RequestRecord, RequestStatus, SlackClaim, SlackMessageRef, now};
use tars_jetstream::service::Connected;
use tars_jetstream::store::{Change, RequestStore, StoreError, Versioned};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;
use tars_slack::{SlackClient, SlackError, blocks, notices};

/// How long a Slack user found (or not found) by e-mail is remembered.
const USER_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Numbers this process's posting attempts, so each claim names one attempt.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The notifier's handler.
pub struct Worker {
    store: RequestStore,
    slack: SlackClient,
    channel: String,
    /// This process's identity; each posting attempt claims as `<me>.<n>`.
    me: String,
    /// How long a posting lease lasts: longer than one post can take (the Slack client's
    /// timeout), so a live holder is never taken over; renewed before each retried post.
    lease: Duration,
    /// E-mail → Slack user id (`None`: nobody in the workspace has it).
    users: moka::future::Cache<String, Option<String>>,
    metrics: Metrics,
}

fn slack_outcome(e: SlackError) -> Outcome {
    match e {
        SlackError::Permanent(m) => Outcome::dead_letter(m),
        SlackError::RateLimited(d) => Outcome::Retry {
            reason: "Slack rate limit".into(),
            delay: Some(d),
        },
        SlackError::Transient(m) => Outcome::retry(m),
    }
}

fn store_outcome(e: StoreError) -> Outcome {
    match e {
        // The record is written before its first event is published, so a missing one is
        // a stale read on a replica: try again.
        StoreError::NotFound(id) => Outcome::retry(format!("request {id} not found yet")),
        e if e.is_transient() => Outcome::retry(e.to_string()),
        e => Outcome::dead_letter(e.to_string()),
    }
}

enum Claim {
    /// Ours; `Some(since)` when an earlier lease may have posted since then.
    Ours(Option<time::OffsetDateTime>),
    Posted,
    Busy(Duration),
}

impl Worker {
    /// Builds the handler from a connected process, the Slack client, the channel and
    /// the posting lease (three times the Slack client's timeout).
    pub fn new(conn: &Connected, slack: SlackClient, channel: String, lease: Duration) -> Self {
        Self {
            store: RequestStore::new(&conn.topology, &conn.metrics),
            slack,
            channel,
            me: replica_id(),
            lease,
            users: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(USER_CACHE_TTL)
                .build(),
            metrics: conn.metrics.clone(),
        }
    }

    /// Sends the notice `key` once: `send` runs unless the record already lists `key` in
    /// `notices_sent`, and the key is recorded after it succeeds (a crash between the two
    /// sends it again: at least once, never silently lost).
    async fn once<F, Fut>(&self, id: &RequestId, key: &str, kind: &str, send: F) -> Outcome
    where
        F: FnOnce(RequestRecord) -> Fut,
        Fut: std::future::Future<Output = Result<bool, SlackError>>,
    {
        let rec = match self.store.get(id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => return Outcome::Ack,
            Err(e) => return store_outcome(e),
        };
        if rec.notices_sent.iter().any(|k| k == key) {
            return Outcome::Ack;
        }
        match send(rec).await {
            Ok(false) => return Outcome::Ack,
            Ok(true) => {}
            Err(e) => return slack_outcome(e),
        }
        self.metrics.notifications.with_label_values(&[kind]).inc();
        let noted = self
            .store
            .modify(id, |r| {
                if r.notices_sent.iter().any(|k| k == key) {
                    Change::Keep(())
                } else {
                    r.notices_sent.push(key.to_owned());
                    Change::Write(())
                }
            })
            .await;
        match noted {
            Ok(_) => Outcome::Ack,
            Err(e) => store_outcome(e),
        }
    }

    /// The Slack user of `email`, cached; `None` when nobody has it.
    async fn slack_user(&self, email: &str) -> Result<Option<String>, SlackError> {
        self.users
            .try_get_with(email.to_owned(), self.slack.user_by_email(email))
            .await
            .map_err(|e| (*e).clone())
    }

    /// The message of `rec`, mentioning the stewards who can approve it while it waits (a
    /// steward whose e-mail Slack does not know, or a failed lookup, is left out).
    async fn render(&self, rec: &RequestRecord) -> (String, serde_json::Value) {
        let mut mentions = Vec::new();
        if rec.status == RequestStatus::Pending {
            for email in &rec.steward_emails {
                if let Ok(Some(id)) = self.slack_user(email).await {
                    mentions.push(id);
                }
            }
        }
        blocks::render_mentioning(rec, &mentions)
    }

    /// DMs the requester about event `kind`, when their KBase e-mail maps to a Slack user.
    async fn tell_requester(&self, id: &RequestId, kind: &'static str) -> Outcome {
        self.once(id, kind, "dm", |rec| async move {
            let (Some(email), Some(text)) = (rec.requester_email.clone(), notices::dm(&rec, kind))
            else {
                return Ok(false);
            };
            let found = self.slack_user(&email).await?;
            let Some(user) = found else {
                tracing::debug!("the requester's e-mail matches no Slack user: no DM");
                return Ok(false);
            };
            self.slack.post_text(&user, &text, None).await?;
            Ok(true)
        })
        .await
    }

    /// Replies reminder `n` in the thread of a still-pending request's message.
    async fn remind(&self, id: &RequestId, n: u32) -> Outcome {
        self.once(
            id,
            &format!("request.reminded.{n}"),
            "thread",
            |rec| async move {
                let Some(msg) = rec
                    .slack
                    .clone()
                    .filter(|_| rec.status == RequestStatus::Pending)
                else {
                    return Ok(false);
                };
                let text = notices::reminder(&rec, n);
                self.slack
                    .post_text(&msg.channel, &text, Some(&msg.ts))
                    .await?;
                Ok(true)
            },
        )
        .await
    }

    async fn show(&self, id: &RequestId, delivered: u64) -> Outcome {
        let read = match self.store.get(id).await {
            Ok(Some(v)) => v,
            Ok(None) => return store_outcome(StoreError::NotFound(id.clone())),
            Err(e) => return store_outcome(e),
        };
        if let Some(msg) = &read.value.slack {
            return self.update(msg, &read.value).await;
        }
        // The policy may send this tenant's requests to their own channel.
        let channel = read
            .value
            .approval_channel
            .clone()
            .unwrap_or_else(|| self.channel.clone());
        // Wait out a rate-limit pause first: the claim then covers only the post (and its
        // pacing slot), so it never ages past its lease while the channel is paused.
        self.slack.wait_turn(&channel).await;
        // One lease per attempt, not per process: two events of one request handled at
        // once by the same replica must not both post.
        let me = format!(
            "{}.{}",
            self.me,
            ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let lease = self.lease;
        // The claim starts from the record just read (no second read; a record that moved
        // on meanwhile fails the compare-and-set and is read again).
        let claimed = self
            .store
            .modify_from(id, Some(read), |r| {
                if r.slack.is_some() {
                    return Change::Keep(Claim::Posted);
                }
                let at = now();
                let mut look_since = None;
                if let Some(c) = &r.slack_claim {
                    let age = (at - c.at).unsigned_abs();
                    if age < lease && !c.unsure {
                        // Usually the holder finishes in moments; if it died, the growing
                        // waits reach the lease's end within a few deliveries.
                        let wait = Duration::from_secs(delivered.max(1)).min(lease);
                        return Change::Keep(Claim::Busy(lease.saturating_sub(age).min(wait)));
                    }
                    // Expired or unsure: the earlier holder may have posted.
                    look_since = Some(c.since.unwrap_or(c.at));
                }
                r.slack_claim = Some(SlackClaim {
                    by: me.clone(),
                    at,
                    since: look_since.or(Some(at)),
                    unsure: false,
                });
                Change::Write(Claim::Ours(look_since))
            })
            .await;
        let (claim, look_since) = match claimed {
            Ok((Claim::Ours(since), v)) => (v, since),
            Ok((Claim::Posted, v)) => {
                return match &v.value.slack {
                    Some(msg) => self.update(msg, &v.value).await,
                    None => Outcome::retry("posted without a reference"),
                };
            }
            Ok((Claim::Busy(wait), _)) => {
                return Outcome::Retry {
                    reason: "another notifier is posting".into(),
                    delay: Some(wait),
                };
            }
            Err(e) => return store_outcome(e),
        };
        if let Some(since) = look_since {
            // A minute of slack for clocks that disagree.
            let oldest = since.unix_timestamp() - 60;
            match self.slack.find_posted(&channel, id.as_str(), oldest).await {
                Ok(Some(found)) => {
                    tracing::info!(ts = %found.ts, "the earlier post had landed: keeping it");
                    let shown = self.render(&claim.value).await;
                    return self.keep(id, claim, shown, &me, found).await;
                }
                Ok(None) => {}
                Err(e) => {
                    self.mark_unsure(id, &me).await;
                    return slack_outcome(e);
                }
            }
        }
        let shown = self.render(&claim.value).await;
        let (text, blocks) = &shown;
        let posted = loop {
            fail::fail_point!("notify.before_post");
            let posted = self
                .slack
                .post_message(&channel, text, blocks, id.as_str())
                .await;
            fail::fail_point!("notify.after_post");
            match posted {
                // Not posted: wait for the channel in place (a rate limit never uses up a
                // delivery attempt), then renew the lease and try again. A lease lost
                // meanwhile belongs to an attempt that looks before it posts.
                Err(SlackError::RateLimited(_)) => {
                    self.slack.wait_turn(&channel).await;
                    if !self.renew(id, &me).await {
                        return Outcome::Ack;
                    }
                }
                other => break other,
            }
        };
        match posted {
            Ok(p) => self.keep(id, claim, shown, &me, p).await,
            Err(SlackError::RateLimited(_)) => {
                Outcome::retry("unreachable: rate limits are waited out")
            }
            Err(e @ SlackError::Permanent(_)) => {
                self.release(id, &me).await;
                slack_outcome(e)
            }
            // A timeout or a lost answer may have posted: the next attempt looks first.
            Err(e) => {
                self.mark_unsure(id, &me).await;
                slack_outcome(e)
            }
        }
    }

    /// Stores where the message lives and drops the lease, starting from `claim` (the
    /// record as this attempt's claim wrote it: no read when nothing wrote since); then
    /// shows the current state if it renders other than `shown`, what was posted.
    async fn keep(
        &self,
        id: &RequestId,
        claim: Versioned<RequestRecord>,
        shown: (String, serde_json::Value),
        me: &str,
        posted: tars_slack::Posted,
    ) -> Outcome {
        let msg = SlackMessageRef {
            channel: posted.channel,
            ts: posted.ts,
        };
        let stored = self
            .store
            .modify_from(id, Some(claim), |r| {
                if r.slack.is_some() {
                    return Change::Keep(());
                }
                r.slack = Some(msg.clone());
                if r.slack_claim.as_ref().is_some_and(|c| c.by == me) {
                    r.slack_claim = None;
                }
                Change::Write(())
            })
            .await;
        match stored {
            Ok((_, now_rec)) if self.render(&now_rec.value).await != shown => {
                self.update(&msg, &now_rec.value).await
            }
            Ok(_) => Outcome::Ack,
            Err(e) => store_outcome(e),
        }
    }

    /// Marks this attempt's lease unsure after a post that may have landed, so the next
    /// attempt looks for the message before posting (and need not wait for the lease to
    /// expire). Best effort: a lease left unmarked is looked behind once it expires.
    async fn mark_unsure(&self, id: &RequestId, me: &str) {
        let _ = self
            .store
            .modify(id, |r| match &mut r.slack_claim {
                Some(c) if c.by == me => {
                    c.unsure = true;
                    Change::Write(())
                }
                _ => Change::Keep(()),
            })
            .await;
    }

    /// Renews this attempt's lease before it posts again; `false` if the lease is no
    /// longer ours (another attempt took it over, or the message is stored).
    async fn renew(&self, id: &RequestId, me: &str) -> bool {
        let renewed = self
            .store
            .modify(id, |r| match &mut r.slack_claim {
                Some(c) if c.by == me && r.slack.is_none() => {
                    c.at = now();
                    Change::Write(true)
                }
                _ => Change::Keep(false),
            })
            .await;
        matches!(renewed, Ok((true, _)))
    }

    /// Gives up a lease after a post that certainly did not land, so the retry (by any
    /// replica) need not wait for it to expire. Best effort: a lease left behind only
    /// delays the retry.
    async fn release(&self, id: &RequestId, claim: &str) {
        let _ = self
            .store
            .modify(id, |r| match &r.slack_claim {
                Some(c) if c.by == claim => {
                    r.slack_claim = None;
                    Change::Write(())
                }
                _ => Change::Keep(()),
            })
            .await;
    }

    async fn update(&self, msg: &SlackMessageRef, rec: &RequestRecord) -> Outcome {
        let mut shown = self.render(rec).await;
        // Each round follows a newer state; a request has a handful of states.
        for _ in 0..8 {
            // Tests hold one update back (`return(<ms>)`) so two finish out of order.
            let held: Option<u64> = (|| {
                fail::fail_point!("notify.before_update", |ms| ms.and_then(|m| m.parse().ok()));
                None
            })();
            if let Some(ms) = held {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let (text, blocks) = &shown;
            if let Err(e) = self
                .slack
                .update_message(&msg.channel, &msg.ts, text, blocks)
                .await
            {
                return slack_outcome(e);
            }
            let latest = match self.store.get(&rec.request_id).await {
                Ok(Some(v)) => self.render(&v.value).await,
                // The message shows what this handler was asked to show; the next event
                // of the request renders again.
                _ => return Outcome::Ack,
            };
            if latest == shown {
                return Outcome::Ack;
            }
            shown = latest;
        }
        Outcome::Ack
    }
}

/// Tells this process's posting claims apart from other replicas'.
fn replica_id() -> String {
    format!(
        "notifier-{}-{}",
        std::process::id(),
        now().unix_timestamp_nanos()
    )
}

impl Handler for Worker {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let id = &delivery.envelope.request_id;
        let shown = self.show(id, delivery.delivered).await;
        if !matches!(shown, Outcome::Ack) {
            return shown;
        }
        let event = &delivery.envelope.event;
        match event {
            Event::RequestReminded { n } => self.remind(id, *n).await,
            e => match notices::TOLD_TO_REQUESTER.iter().find(|k| **k == e.kind()) {
                Some(kind) => self.tell_requester(id, kind).await,
                None => Outcome::Ack,
            },
        }
    }
}
