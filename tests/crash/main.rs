//! Crash tests: a fail point stops a step between two durable writes, or right after an
//! external call, exactly there and every time (a panic in the step: nothing after it
//! runs, as if the process died), and the request must still end where it should.
//!
//! Fail points are process-global, so this binary holds only these tests and each runs
//! inside a `FailScenario`, which serialises them.
#![allow(clippy::unwrap_used, missing_docs)]

#[allow(dead_code)]
#[path = "../it/stack.rs"]
mod stack;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::time::Duration;

use fail::FailScenario;
use serde_json::json;
use stack::*;
use support::{LONG, eventually};
use tars_testkit::standin::slack::SlackMessage;

/// The one Slack message about `tenant`, once it shows `containing`.
async fn message_about(s: &Stack, tenant: &str, containing: &str) -> SlackMessage {
    eventually(LONG, &format!("the message about {tenant}"), || async {
        let found: Vec<SlackMessage> = s
            .slack
            .messages()
            .into_iter()
            .filter(|m| m.blocks.to_string().contains(tenant))
            .collect();
        match &found[..] {
            [m] if m.blocks.to_string().contains(containing) => Some(m.clone()),
            _ => None,
        }
    })
    .await
}

/// The request id a message's Approve button carries.
fn id_in(m: &SlackMessage) -> String {
    let text = m.blocks.to_string();
    let at = text.find("\"value\":\"").unwrap() + 9;
    text[at..at + 36].to_owned()
}

/// POSTs `body` to `path` as the user while a fail point is set to panic in the call: the
/// caller hears a 500 in the API's error shape (the router catches the panic; a real crash
/// would close the connection, which no client takes for 2xx either), and what the call
/// wrote before it died must be enough.
async fn post_that_dies(s: &Stack, path: &str, body: serde_json::Value) {
    let answer = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(USER_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 500, "the crashed call's status");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], 500, "{body}");
    assert_eq!(body["error_type"], "internal_error", "{body}");
}

/// Waits until `consumer` has nothing pending or unacknowledged: every redelivery a
/// crash caused has been handled.
async fn consumer_idle(s: &Stack, consumer: &str) {
    eventually(LONG, &format!("the {consumer} consumer idle"), || async {
        (tars_tests::consumer_backlog(&s.nats.topology.events, consumer).await == Some(0))
            .then_some(())
    })
    .await;
}

async fn workers() -> Stack {
    Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_submission_that_dies_after_its_write_still_reaches_the_approvers() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    fail::cfg("submit.after_write", "1*panic").unwrap();
    let body = json!({"tenant_name": "crashed", "permission": "read_only"});
    post_that_dies(&s, "/requests/", body).await;
    // Nobody retries (the notebook client does not): the record alone must be enough.
    let m = message_about(&s, "crashed", "\"approve\"").await;
    let id = id_in(&m);
    assert_eq!(s.status_of(&id).await, "pending");
    s.interactor
        .click(SLACK_APPROVER, "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    wait_status(&s, &id, "applied").await;
    assert_eq!(
        s.wait_count(&format!("tars.request.submitted.{id}"), 1)
            .await,
        1
    );
    scenario.teardown();
}

/// The keys of the request bucket under `prefix` that hold a value now.
async fn live_keys(s: &Stack, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let keys: Vec<String> = s
        .nats
        .topology
        .requests
        .keys()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut live = Vec::new();
    for k in keys.into_iter().filter(|k| k.starts_with(prefix)) {
        if s.nats.topology.requests.get(&k).await.unwrap().is_some() {
            live.push(k);
        }
    }
    live
}

#[tokio::test]
async fn a_submission_that_dies_after_its_index_write_is_finished_by_the_retry() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    fail::cfg("submit.after_index", "1*panic").unwrap();
    let body = json!({"tenant_name": "halfway", "permission": "read_write"});
    post_that_dies(&s, "/requests/", body.clone()).await;
    let (status, answer, _) = s.post("/requests/", Some(USER_TOKEN), body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["request_id"].as_str().unwrap();
    let m = message_about(&s, "halfway", "\"approve\"").await;
    assert_eq!(id_in(&m), id);
    scenario.teardown();
}

#[tokio::test]
async fn a_submission_that_dies_after_its_index_keys_shows_no_phantom_and_the_retry_succeeds() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    fail::cfg("store.after_index_keys", "1*return").unwrap();
    let body = json!({"tenant_name": "phantom", "permission": "read_only"});
    let (status, answer, _) = s.post("/requests/", Some(USER_TOKEN), body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    // The keys were written before the record that never was: nobody sees a request.
    assert_eq!(live_keys(&s, "s.pending.").await.len(), 1);
    let (_, list) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(list["requests"], json!([]), "{list}");
    let (_, list) = s.get("/requests?status=pending", Some(ADMIN_TOKEN)).await;
    assert_eq!(list["requests"], json!([]), "{list}");
    // The retry creates it under the id the open index holds, and the keys name it.
    let (status, answer, _) = s.post("/requests/", Some(USER_TOKEN), body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["request_id"].as_str().unwrap();
    assert_eq!(
        live_keys(&s, "s.pending.").await,
        vec![format!("s.pending.alice.{id}")]
    );
    let m = message_about(&s, "phantom", "\"approve\"").await;
    assert_eq!(id_in(&m), id);
    scenario.teardown();
}

#[tokio::test]
async fn a_decision_that_dies_after_its_write_is_applied_once() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let id = s.submit("decided", "read_only").await;
    message_about(&s, "decided", "\"approve\"").await;
    fail::cfg("decide.after_write", "1*panic").unwrap();
    approve_and_see_it_granted(&s, &id, "decided").await;
    assert_eq!(s.governance.add_calls(), 1, "one governance change");
    // The redelivered decision is handled (a repeat) before counting: it re-publishes
    // the approval under the same message id, so the stream keeps one.
    consumer_idle(&s, "decision").await;
    assert_eq!(
        s.count_subject(&format!("tars.request.approved.{id}"))
            .await,
        1
    );
    scenario.teardown();
}

#[tokio::test]
async fn an_event_published_by_a_relay_that_dies_before_its_ack_is_stored_once() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    fail::cfg("relay.after_publish", "1*panic").unwrap();
    let id = s.submit("relayed", "read_only").await;
    message_about(&s, "relayed", "\"approve\"").await;
    // The dead relay's revision comes back to another relay after ack_wait and is
    // published again: the message id keeps one copy.
    let subject = format!("tars.request.submitted.{id}");
    let stream = s
        .nats
        .topology
        .js
        .get_stream("KV_TARS_REQUESTS")
        .await
        .unwrap();
    eventually(LONG, "the revision redelivered and acked", || async {
        let mut relay: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("relay").await.ok()?;
        let info = relay.info().await.ok()?;
        // Each delivery takes a consumer sequence: more deliveries than revisions means
        // one came back.
        let revisions: usize = {
            use futures::TryStreamExt;
            let subjects = stream
                .info_with_subjects("$KV.TARS_REQUESTS.*")
                .await
                .ok()?;
            let counts: Vec<(String, usize)> = subjects.try_collect().await.ok()?;
            counts.iter().map(|(_, n)| n).sum()
        };
        let redelivered = info.delivered.consumer_sequence > revisions as u64;
        (redelivered && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert_eq!(s.count_subject(&subject).await, 1);
    scenario.teardown();
}

#[tokio::test]
async fn an_expiry_that_dies_after_its_write_still_tells_slack() {
    let scenario = FailScenario::setup();
    let s = Stack::start(Options {
        workers: true,
        request_ttl: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    fail::cfg("expire.after_write", "1*panic").unwrap();
    let id = s.submit("stale", "read_only").await;
    wait_status(&s, &id, "expired").await;
    message_about(&s, "stale", "Expired unanswered").await;
    assert_eq!(
        s.wait_count(&format!("tars.request.expired.{id}"), 1).await,
        1
    );
    scenario.teardown();
}

#[tokio::test]
async fn a_cancel_that_dies_after_its_index_keys_changes_nothing_until_retried() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let id = s.submit("leaky", "read_only").await;
    message_about(&s, "leaky", "\"approve\"").await;
    fail::cfg("store.after_index_keys", "1*return").unwrap();
    let (status, body, _) = s
        .post(
            &format!("/requests/{id}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    // The record is still pending; the key written ahead names a change that did not
    // happen, and no listing shows it.
    assert_eq!(s.status_of(&id).await, "pending");
    let (_, cancelled) = s.get("/requests?status=cancelled", Some(ADMIN_TOKEN)).await;
    assert_eq!(cancelled["requests"], json!([]), "{cancelled}");
    let (_, pending) = s.get("/requests?status=pending", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        pending["requests"].as_array().unwrap().len(),
        1,
        "{pending}"
    );
    let (status, body, _) = s
        .post(
            &format!("/requests/{id}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The status keys moved with the record, and the open slot is free again.
    eventually(LONG, "the pending key gone", || async {
        (live_keys(&s, "s.").await == vec![format!("s.cancelled.alice.{id}")]).then_some(())
    })
    .await;
    let again = s.submit("leaky", "read_only").await;
    assert_ne!(again, id, "a new request, not the cancelled one");
    scenario.teardown();
}

#[tokio::test]
async fn a_cancel_that_dies_after_its_write_is_announced_once() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let id = s.submit("withdrawn", "read_only").await;
    fail::cfg("cancel.after_write", "1*panic").unwrap();
    post_that_dies(&s, &format!("/requests/{id}/cancel"), json!({})).await;
    // No retry: the requester saw a 500 and may never call again. The write carried its
    // event in the record's outbox, so the relay announces it all the same.
    message_about(&s, "withdrawn", "Cancelled by the requester").await;
    assert_eq!(
        s.count_subject(&format!("tars.request.cancelled.{id}"))
            .await,
        1
    );
    assert_eq!(s.status_of(&id).await, "cancelled");
    scenario.teardown();
}

#[tokio::test]
async fn a_grant_that_dies_after_the_governance_call_never_calls_again() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let id = s.submit("granted", "read_write").await;
    message_about(&s, "granted", "\"approve\"").await;
    fail::cfg("grant.after_call", "1*panic").unwrap();
    approve_and_see_it_granted(&s, &id, "granted").await;
    // The redelivered grant order read the tenant, found the member, and added nothing.
    assert_eq!(s.governance.add_calls(), 1, "one governance change");
    assert_eq!(
        s.governance.members_of("granted"),
        vec![("alice".to_owned(), "read_write".to_owned())]
    );
    scenario.teardown();
}

#[tokio::test]
async fn a_grant_that_dies_before_or_after_recording_ends_applied_with_one_call() {
    for point in ["grant.before_call", "grant.after_record"] {
        let scenario = FailScenario::setup();
        let s = workers().await;
        let tenant = point.replace(['.', '_'], "-");
        let id = s.submit(&tenant, "read_only").await;
        message_about(&s, &tenant, "\"approve\"").await;
        let before = s.governance.calls().len();
        fail::cfg(point, "1*panic").unwrap();
        approve_and_see_it_granted(&s, &id, &tenant).await;
        assert_eq!(
            s.governance.add_calls(),
            1,
            "{point}: one governance change"
        );
        // One read of the tenant and one add in all: before the call nothing was called;
        // after the record, the redelivered order finds the request applied and calls
        // nothing (a machine that granted again would read the tenant once more).
        consumer_idle(&s, "governance-applier").await;
        assert_eq!(
            s.governance.calls().len() - before,
            2,
            "{point}: the tenant read once, the member added once"
        );
        assert_eq!(
            s.wait_count(&format!("tars.request.applied.{id}"), 1).await,
            1,
            "{point}"
        );
        scenario.teardown();
    }
}

#[tokio::test]
async fn two_updates_finishing_out_of_order_leave_the_newer_state() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let id = s.submit("ordered", "read_only").await;
    message_about(&s, "ordered", "\"approve\"").await;
    // The grant takes a moment, so the notifier renders "approved" first; that update is
    // held back until the "applied" update has landed, and then lands over it.
    s.governance
        .faults()
        .set_latency(Duration::from_millis(300));
    fail::cfg("notify.before_update", "1*return(1500)").unwrap();
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    // Wait until the notifier has settled everything, then look.
    let events = s.nats.topology.events.clone();
    eventually(LONG, "the notifier idle with both updates done", || async {
        let mut notifier: async_nats::jetstream::consumer::PullConsumer =
            events.get_consumer("notifier").await.ok()?;
        let info = notifier.info().await.ok()?;
        let m = s
            .slack
            .messages()
            .into_iter()
            .find(|m| m.blocks.to_string().contains(&id))?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && m.updates >= 2).then_some(())
    })
    .await;
    let m = message_about(&s, "ordered", "ordered").await;
    assert!(
        m.blocks.to_string().contains("access granted"),
        "the message was left on an older state: {}",
        m.blocks
    );
    scenario.teardown();
}

async fn quick_slack() -> Stack {
    Stack::start(Options {
        workers: true,
        slack_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await
}

/// Approves `id` and waits until its one message shows the grant (the message reference
/// was stored, or the update could not have found it).
async fn approve_and_see_it_granted(s: &Stack, id: &str, tenant: &str) {
    s.approve(id).await;
    wait_status(s, id, "applied").await;
    message_about(s, tenant, "access granted").await;
}

#[tokio::test]
async fn a_post_whose_answer_was_lost_is_not_posted_again() {
    let scenario = FailScenario::setup();
    let s = quick_slack().await;
    // Slack posts the message but the answer outlasts the client's timeout.
    s.slack.lose_next_post_answers(1, Duration::from_secs(2));
    let id = s.submit("unanswered", "read_only").await;
    message_about(&s, "unanswered", "\"approve\"").await;
    approve_and_see_it_granted(&s, &id, "unanswered").await;
    assert_eq!(s.slack.messages().len(), 1, "one message per request");
    scenario.teardown();
}

#[tokio::test]
async fn a_notifier_that_dies_after_posting_leaves_one_message() {
    let scenario = FailScenario::setup();
    let s = quick_slack().await;
    fail::cfg("notify.after_post", "1*panic").unwrap();
    let id = s.submit("orphaned", "read_only").await;
    message_about(&s, "orphaned", "\"approve\"").await;
    approve_and_see_it_granted(&s, &id, "orphaned").await;
    assert_eq!(s.slack.messages().len(), 1, "one message per request");
    scenario.teardown();
}

#[tokio::test]
async fn a_store_outage_while_renewing_the_posting_lease_still_posts() {
    let scenario = FailScenario::setup();
    let s = quick_slack().await;
    // The first post meets a 429 (Retry-After 2 s): the post waits its turn for longer
    // than its 1.5 s lease, and the store refuses its first five renewals (the extension
    // over the foreseen pause, then those due every half second). Read as "the lease is
    // not ours", the request was never posted (until its next event, typically a day
    // later: here never, since it is not approved before its message shows).
    fail::cfg("notify.renew", "5*return").unwrap();
    s.slack.faults().method_next(
        "chat.postMessage",
        1,
        tars_testkit::standin::faults::Fault::RateLimited(2),
    );
    let id = s.submit("renewing", "read_only").await;
    message_about(&s, "renewing", "\"approve\"").await;
    approve_and_see_it_granted(&s, &id, "renewing").await;
    assert_eq!(s.slack.messages().len(), 1, "one message per request");
    scenario.teardown();
}

/// Alice's read_only request on `tenant` for one hour, approved and applied; returns its
/// id and when its access ends.
async fn time_bound_grant(s: &Stack, tenant: &str) -> (String, time::OffsetDateTime) {
    let (id, rec) = s.applied(tenant, Some("1h")).await;
    message_about(s, tenant, "access granted").await;
    (id, time_of(&rec["access_expires_at"]))
}

#[tokio::test]
async fn a_grant_that_dies_after_the_governance_call_still_ends_when_its_time_runs_out() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    fail::cfg("grant.after_call", "1*panic").unwrap();
    // The redelivered order finds the membership its own first call added.
    let (id, ends) = time_bound_grant(&s, "crashgrant").await;
    let (sweeper, _) = s.sweeper().await;
    assert_eq!(sweeper.end_access(ends).await.unwrap(), 1);
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("crashgrant").is_empty());
    assert_eq!(s.governance_deletes(), 1);
    scenario.teardown();
}

#[tokio::test]
async fn an_access_sweep_that_dies_after_its_write_still_removes_the_access() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let (id, ends) = time_bound_grant(&s, "crashsweep").await;
    let (sweeper, _) = s.sweeper().await;
    fail::cfg("end_access.after_write", "1*panic").unwrap();
    let died = tokio::spawn(async move { sweeper.end_access(ends).await }).await;
    assert!(died.is_err(), "the sweep was stopped after its write");
    // The revocation and its event were one write: the relay announces it.
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("crashsweep").is_empty());
    assert_eq!(s.governance_deletes(), 1);
    scenario.teardown();
}

#[tokio::test]
async fn a_revocation_that_dies_before_or_after_the_governance_call_removes_the_access_once() {
    for point in ["revoke.before_call", "revoke.after_call"] {
        let scenario = FailScenario::setup();
        let s = workers().await;
        let tenant = point.replace(['.', '_'], "-");
        let (id, _) = time_bound_grant(&s, &tenant).await;
        fail::cfg(point, "1*panic").unwrap();
        let (status, body, _) = s
            .post(
                &format!("/requests/{id}/revoke"),
                Some(ADMIN_TOKEN),
                json!({}),
            )
            .await;
        assert_eq!(status, 202, "{point}: {body}");
        wait_status(&s, &id, "revoked").await;
        assert!(s.governance.members_of(&tenant).is_empty(), "{point}");
        assert_eq!(s.governance_deletes(), 1, "{point}: one removal");
        assert_eq!(
            s.wait_count(&format!("tars.request.revoked.{id}"), 1).await,
            1,
            "{point}"
        );
        scenario.teardown();
    }
}

#[tokio::test]
async fn a_revoke_that_dies_after_its_write_is_carried_out() {
    let scenario = FailScenario::setup();
    let s = workers().await;
    let (id, _) = time_bound_grant(&s, "crashrevoke").await;
    fail::cfg("revoke.after_write", "1*panic").unwrap();
    post_that_dies(&s, &format!("/requests/{id}/revoke"), json!({})).await;
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("crashrevoke").is_empty());
    scenario.teardown();
}

/// A service binary run as its own process, as deployed, which a fail point named in
/// `TARS_DIE_AT` ends with `abort` (a real death: no drain, no ack, no in-memory state
/// left for a retry). `make test` builds the binaries beside this test, with fail points.
struct Service(std::process::Child);

impl Service {
    fn start(s: &Stack, bin: &str, die_at: Option<&str>, env: &[(&str, String)]) -> Self {
        let path = tars_tests::service_binary(bin);
        let port = tars_testkit::nats_server::free_port();
        let mut cmd = std::process::Command::new(path);
        cmd.env_clear()
            .env("NATS_URL", s.nats.server.url())
            .env("TARS_ACK_WAIT", "3s")
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_LEVEL", "warn")
            .env("LOG_FORMAT", "text")
            .env("WORKER_RETRY_BASE", "50ms")
            .env("WORKER_RETRY_MAX", "1s")
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(point) = die_at {
            cmd.env("TARS_DIE_AT", point);
        }
        Self(cmd.spawn().unwrap())
    }

    /// Waits for the process to die of its fail point (SIGABRT), not exit on its own.
    async fn died(mut self) {
        use std::os::unix::process::ExitStatusExt;
        let status = eventually(LONG, "the process to die at its fail point", || {
            let polled = self.0.try_wait().unwrap();
            async move { polled }
        })
        .await;
        assert_eq!(
            status.signal(),
            Some(6),
            "aborted at the fail point: {status}"
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn applier_env(s: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("GOVERNANCE_API_URL", s.governance.url()),
        ("GOVERNANCE_TOKEN", GOV_TOKEN.to_owned()),
    ]
}

#[tokio::test]
async fn an_applier_killed_after_the_governance_call_is_finished_once_by_a_fresh_process() {
    let mut s = Stack::start(Options::default()).await;
    s.start_notifier();
    s.start_decision(Duration::from_secs(86_400));
    let dying = Service::start(
        &s,
        "tars-governance-applier",
        Some("grant.after_call"),
        &applier_env(&s),
    );
    let id = s.submit_for(USER_TOKEN, "killed", Some("1h")).await;
    s.approve(&id).await;
    dying.died().await;
    assert_eq!(
        s.governance.add_calls(),
        1,
        "the call was made before the death"
    );
    assert_eq!(s.status_of(&id).await, "approved", "not recorded yet");
    // A fresh process gets the grant order again once its ack wait has passed.
    let _fresh = Service::start(&s, "tars-governance-applier", None, &applier_env(&s));
    wait_status(&s, &id, "applied").await;
    assert_eq!(s.governance.add_calls(), 1, "granted once");
    // It found the access in place; the record says an attempt was made before, so the
    // access is TARS's and ends when its hour does.
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(ADMIN_TOKEN)).await;
    let history = rec["history"].to_string();
    assert!(
        history.contains("\"membership_added\":true"),
        "the access counts as TARS's: {history}"
    );
    assert!(rec["access_expires_at"].is_string(), "{rec}");
}

#[tokio::test]
async fn a_notifier_killed_after_posting_leaves_one_message_finished_by_a_fresh_process() {
    let mut s = Stack::start(Options::default()).await;
    s.start_decision(Duration::from_secs(86_400));
    let _applier = s.spawn_applier(
        s.shutdown_token(),
        tars_observability::metrics::Metrics::new(),
    );
    let env = [
        ("SLACK_BOT_TOKEN", BOT_TOKEN.to_owned()),
        ("SLACK_API_URL", s.slack.url()),
        ("SLACK_CHANNEL_ID", CHANNEL.to_owned()),
        ("SLACK_TIMEOUT", "500ms".to_owned()),
    ];
    let dying = Service::start(&s, "tars-notifier", Some("notify.after_post"), &env);
    let id = s.submit("posthumous", "read_only").await;
    dying.died().await;
    assert_eq!(s.slack.messages().len(), 1, "posted before the death");
    let _fresh = Service::start(&s, "tars-notifier", None, &env);
    approve_and_see_it_granted(&s, &id, "posthumous").await;
    assert_eq!(s.slack.messages().len(), 1, "one message per request");
}
