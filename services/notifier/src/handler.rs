//! Shows every request in Slack: one message per request, updated as it moves.
//!
//! The message is rendered from the *current* record, never from the event, so repeated
//! or out-of-order events converge on the right message. The first post is claimed in the
//! record with a compare-and-set before Slack is called, so two replicas handling two
//! events of one new request post once.

use std::time::{Duration, Instant};

use tars_domain::events::Event;
use tars_domain::lease::{self, Claimed, Held, Kept};
use tars_domain::{RequestId, RequestRecord, RequestStatus, SlackMessageRef, now};
use tars_jetstream::service::Connected;
use tars_jetstream::store::{Change, RequestStore, StoreError, Versioned};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_observability::metrics::Metrics;
use tars_slack::{Lookup, SlackClient, SlackError, blocks, notices};

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

/// A refusal dead-letters; Slack not answering (or asking to slow down) is an outage,
/// waited out without spending deliveries (Guarantees 1 and 2).
fn slack_outcome(e: SlackError) -> Outcome {
    match e {
        SlackError::Permanent(m) => Outcome::dead_letter(m),
        SlackError::RateLimited(d) => {
            Outcome::outage("slack", format!("Slack rate limit: retry after {d:?}"))
        }
        SlackError::Transient(m) => Outcome::outage("slack", m),
    }
}

/// What an event whose posting lease another attempt took over does: nothing more for
/// the post (the holder posts and shows the current record).
fn lost_lease() -> Outcome {
    tracing::info!("the posting lease was taken over: its holder posts");
    Outcome::Ack
}

fn store_outcome(e: StoreError) -> Outcome {
    // The record is written before its first event is published, so a missing one is a
    // stale read on a replica: try again.
    Outcome::of_store_error(e, |id| {
        Outcome::retry(format!("request {id} not found yet"))
    })
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
        // Sent: note it. (The store rides out an election or a reconnect itself; past
        // that, the event is handed back and a crash-like repeat may send it again: at
        // least once.)
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

    /// Shows the request in Slack: posts its message once (under the posting lease), or
    /// updates the message already posted.
    async fn show(&self, id: &RequestId) -> Outcome {
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
        // Wait out a rate-limit pause before claiming, so the lease is not held through it.
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
                match lease::claim(r, &me, now(), lease) {
                    c @ Claimed::Ours { .. } => Change::Write(c),
                    other => Change::Keep(other),
                }
            })
            .await;
        match claimed {
            Ok((Claimed::Ours { look_since }, claim)) => {
                self.post(id, &channel, claim, &me, look_since).await
            }
            Ok((Claimed::Posted(msg), v)) => self.update(&msg, &v.value).await,
            // The request's later events wait for its post without spending deliveries,
            // then show the record by an update.
            Ok((Claimed::Busy(left), _)) => {
                Outcome::wait_turn(left, "another notifier is posting this request")
            }
            Err(e) => store_outcome(e),
        }
    }

    /// Posts the message under `me`'s lease (looking first when an earlier holder may have
    /// posted), renewing the lease while it waits for the channel and right before it
    /// sends, so a post always goes out inside a live lease.
    async fn post(
        &self,
        id: &RequestId,
        channel: &str,
        claim: Versioned<RequestRecord>,
        me: &str,
        look_since: Option<time::OffsetDateTime>,
    ) -> Outcome {
        // Until when the lease is live, as this attempt last wrote it.
        let mut live_until = Instant::now() + self.lease;
        if let Some(since) = look_since {
            // A minute of slack for clocks that disagree.
            let oldest = since.unix_timestamp() - 60;
            let looked = self
                .renewing(
                    id,
                    me,
                    &mut live_until,
                    channel,
                    self.slack.find_posted(channel, id.as_str(), oldest),
                )
                .await;
            match looked {
                Err(lost) => return lost,
                Ok(Ok(Lookup::Found(found))) => {
                    tracing::info!(ts = %found.ts, "the earlier post had landed: keeping it");
                    let shown = self.render(&claim.value).await;
                    return self.keep(id, claim, shown, me, found).await;
                }
                Ok(Ok(Lookup::NotFound)) => {}
                Ok(Ok(Lookup::Refused(why))) => {
                    // A duplicate is recoverable, a request nobody sees is not.
                    self.metrics.slack_duplicate_risk.inc();
                    tracing::warn!(%why, "Slack refused the look-up for an earlier post (does the app have channels:history and is it in the channel?); posting again, which may duplicate it");
                }
                Ok(Err(e)) => {
                    self.settle_lease(id, me, lease::mark_unsure).await;
                    return slack_outcome(e);
                }
            }
        }
        let shown = self.render(&claim.value).await;
        let (text, blocks) = &shown;
        let posted = loop {
            let turn = match self
                .renewing(
                    id,
                    me,
                    &mut live_until,
                    channel,
                    self.slack.post_turn(channel),
                )
                .await
            {
                Ok(turn) => turn,
                Err(lost) => return lost,
            };
            // The fence: the call goes out only inside a lease that outlasts it (the Slack
            // client's timeout is a third of the lease): live for two thirds more, or
            // renewed now (which also proves it is still ours).
            if self.renewal_due(live_until) {
                if let Err(lost) = self.renew(id, me).await {
                    return lost;
                }
                live_until = Instant::now() + self.lease;
            }
            fail::fail_point!("notify.before_post");
            let posted = turn.post(text, blocks, id.as_str()).await;
            fail::fail_point!("notify.after_post");
            match posted {
                // Not posted: the channel is paused; take a new turn (a rate limit never
                // uses up a delivery).
                Err(SlackError::RateLimited(_)) => continue,
                other => break other,
            }
        };
        match posted {
            Ok(p) => self.keep(id, claim, shown, me, p).await,
            Err(e @ SlackError::Permanent(_)) => {
                self.settle_lease(id, me, lease::release).await;
                slack_outcome(e)
            }
            // A timeout or a lost answer may have posted: the next attempt looks first.
            Err(e) => {
                self.settle_lease(id, me, lease::mark_unsure).await;
                slack_outcome(e)
            }
        }
    }

    /// Whether a lease live until `live_until` must be renewed before a call: it has less
    /// than two thirds of a lease left (a call takes at most one third).
    fn renewal_due(&self, live_until: Instant) -> bool {
        live_until.saturating_duration_since(Instant::now()) < self.lease * 2 / 3
    }

    /// Runs `work`, a wait for `channel`'s turn (a pause, the pacing slot, the single-file
    /// queue, a look-up), while keeping `me`'s lease live; `Err` (the outcome to return)
    /// when the lease turns out to be another's. The lease is first extended once over the
    /// wait the channel's gate foresees (one write for an hour's pause, so that renewals
    /// never push a revision the relay has not read yet out of the record's history),
    /// then renewed every third of a lease only when less than two thirds are left. A
    /// renewal the store cannot make now is tried again at the next tick: only an answer
    /// can say the lease is lost.
    async fn renewing<T>(
        &self,
        id: &RequestId,
        me: &str,
        live_until: &mut Instant,
        channel: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Outcome> {
        let foreseen = self.slack.expected_wait(channel);
        if Instant::now() + foreseen + self.lease * 2 / 3 > *live_until {
            match self.try_renew(id, me, foreseen).await {
                Ok(Held::Ours) => *live_until = Instant::now() + foreseen + self.lease,
                Ok(Held::Lost) => return Err(lost_lease()),
                Err(_) => {}
            }
        }
        tokio::pin!(work);
        let every = (self.lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                // Checked at each tick (a select! guard would be read once, on entry).
                _ = tick.tick() => if self.renewal_due(*live_until) {
                    match self.try_renew(id, me, Duration::ZERO).await {
                        Ok(Held::Ours) => *live_until = Instant::now() + self.lease,
                        Err(_) => {}
                        Ok(Held::Lost) => return Err(lost_lease()),
                    }
                }
            }
        }
    }

    /// Renews `me`'s lease. A store that does not answer (after riding it out, as every
    /// store call does) hands the message back to wait like any outage: the next attempt
    /// waits for this lease to lapse, then looks before it posts.
    async fn renew(&self, id: &RequestId, me: &str) -> Result<(), Outcome> {
        match self.try_renew(id, me, Duration::ZERO).await {
            Ok(Held::Ours) => Ok(()),
            Ok(Held::Lost) => Err(lost_lease()),
            Err(e) => Err(store_outcome(e)),
        }
    }

    /// One renewal, live for `ahead` more than a lease from now.
    async fn try_renew(
        &self,
        id: &RequestId,
        me: &str,
        ahead: Duration,
    ) -> Result<Held, StoreError> {
        fail::fail_point!("notify.renew", |_| Err(StoreError::Unavailable(
            "fail point notify.renew".into()
        )));
        let at = now() + time::Duration::try_from(ahead).unwrap_or(time::Duration::ZERO);
        let renewed = self
            .store
            .modify(id, |r| match lease::renew(r, me, at) {
                Held::Ours => Change::Write(Held::Ours),
                Held::Lost => Change::Keep(Held::Lost),
            })
            .await;
        renewed.map(|(held, _)| held)
    }

    /// Marks or releases `me`'s lease after a failed post (`rule` is
    /// [`lease::mark_unsure`] or [`lease::release`]). Best effort (the store rides out
    /// an election itself): a lease left as it was only delays the next attempt until it
    /// expires, and that attempt looks before it posts.
    async fn settle_lease(
        &self,
        id: &RequestId,
        me: &str,
        rule: fn(&mut RequestRecord, &str) -> bool,
    ) {
        let _ = self
            .store
            .modify(id, |r| {
                if rule(r, me) {
                    Change::Write(())
                } else {
                    Change::Keep(())
                }
            })
            .await;
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
            .modify_from(id, Some(claim), |r| match lease::keep(r, me, &msg) {
                Kept::Stored => Change::Write(Kept::Stored),
                other => Change::Keep(other),
            })
            .await;
        match stored {
            Ok((Kept::Lost, _)) => {
                tracing::warn!(ts = %msg.ts, "posted, but the lease was taken over meanwhile: the new holder looks and finds this message");
                Outcome::Ack
            }
            Ok((_, now_rec)) if self.render(&now_rec.value).await != shown => {
                let shown_in = now_rec.value.slack.clone().unwrap_or(msg);
                self.update(&shown_in, &now_rec.value).await
            }
            Ok(_) => Outcome::Ack,
            Err(e) => store_outcome(e),
        }
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
        let shown = self.show(id).await;
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
