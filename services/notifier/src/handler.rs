//! Shows every request in Slack: one message per request, updated as it moves.
//!
//! The message is rendered from the *current* record, never from the event, so repeated
//! or out-of-order events converge on the right message. The first post is claimed in the
//! record with a compare-and-set before Slack is called, so two replicas handling two
//! events of one new request post once.

use std::time::Duration;

use tars_domain::{RequestId, RequestRecord, SlackClaim, SlackMessageRef, now};
use tars_jetstream::service::Connected;
use tars_jetstream::store::{Change, RequestStore, StoreError};
use tars_jetstream::worker::{Delivery, Handler, Outcome};
use tars_slack::{SlackClient, SlackError, blocks};

/// A claim older than this is taken over (its holder probably crashed mid-post); longer
/// than a post can take (the Slack client's timeout plus an in-place rate-limit wait).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Numbers this process's posting attempts, so each claim names one attempt.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The notifier's handler.
pub struct Worker {
    store: RequestStore,
    slack: SlackClient,
    channel: String,
    /// This process's identity; each posting attempt claims as `<me>.<n>`.
    me: String,
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
    Ours,
    Posted,
    Busy(Duration),
}

impl Worker {
    /// Builds the handler from a connected process, the Slack client and the channel.
    pub fn new(conn: &Connected, slack: SlackClient, channel: String) -> Self {
        Self {
            store: RequestStore::new(conn.topology.requests.clone()),
            slack,
            channel,
            me: replica_id(),
        }
    }

    async fn show(&self, id: &RequestId, delivered: u64) -> Outcome {
        let rec = match self.store.get(id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => return store_outcome(StoreError::NotFound(id.clone())),
            Err(e) => return store_outcome(e),
        };
        if let Some(msg) = &rec.slack {
            return self.update(msg, &rec).await;
        }
        // Queue for the channel first (pacing, a rate-limit pause): the claim then covers
        // only the call, so it never ages past CLAIM_TIMEOUT while waiting its turn.
        self.slack.wait_turn(&self.channel).await;
        // One claim per attempt, not per process: two events of one request handled at
        // once by the same replica must not both post.
        let me = format!(
            "{}.{}",
            self.me,
            ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let claimed = self
            .store
            .modify(id, |r| {
                if r.slack.is_some() {
                    return Change::Keep(Claim::Posted);
                }
                if let Some(c) = &r.slack_claim {
                    let age = (now() - c.at).unsigned_abs();
                    if age < CLAIM_TIMEOUT {
                        // Usually the holder finishes in moments; if it crashed, the
                        // growing waits reach the claim's end within a few deliveries.
                        let wait = Duration::from_secs(2 * delivered.max(1));
                        return Change::Keep(Claim::Busy(
                            CLAIM_TIMEOUT.saturating_sub(age).min(wait),
                        ));
                    }
                }
                r.slack_claim = Some(SlackClaim {
                    by: me.clone(),
                    at: now(),
                });
                Change::Write(Claim::Ours)
            })
            .await;
        let rec = match claimed {
            Ok((Claim::Ours, v)) => v.value,
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
        let (text, blocks) = blocks::render(&rec);
        let posted = match self.slack.post_message(&self.channel, &text, &blocks).await {
            Ok(p) => p,
            Err(e) => {
                self.release(id, &me).await;
                return slack_outcome(e);
            }
        };
        let msg = SlackMessageRef {
            channel: posted.channel,
            ts: posted.ts,
        };
        let stored = self
            .store
            .modify(id, |r| {
                r.slack = Some(msg.clone());
                r.slack_claim = None;
                Change::Write(())
            })
            .await;
        match stored {
            // The request may have moved on while we posted: show where it is now.
            Ok((_, now_rec)) if now_rec.value.status != rec.status => {
                self.update(&msg, &now_rec.value).await
            }
            Ok(_) => Outcome::Ack,
            Err(e) => store_outcome(e),
        }
    }

    /// Gives up a claim after a failed post, so the retry (by any replica) need not wait
    /// for it to time out. Best effort: a claim left behind only delays the retry.
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

    /// Shows `rec` in the message, then makes sure the message is not left on an older
    /// state: Slack has no conditional update, so two updates of one message may finish in
    /// either order. After its own update lands, a handler reads the record again and, if
    /// it has moved on to something that renders differently, renders that too. Whichever
    /// update lands last is followed by such a check, so the message ends on the latest
    /// state.
    async fn update(&self, msg: &SlackMessageRef, rec: &RequestRecord) -> Outcome {
        let mut shown = blocks::render(rec);
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
                Ok(Some(v)) => blocks::render(&v.value),
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
        self.show(&delivery.envelope.request_id, delivery.delivered)
            .await
    }
}
