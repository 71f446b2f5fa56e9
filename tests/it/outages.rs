//! Outages and bursts are waiting, never failure (Guarantees 1–3): Slack or the governance
//! API down for longer than the whole retry budget, an auto-approved burst against Slack's
//! per-channel limit, a post held past its lease, look-ups that Slack limits or refuses.

use std::time::Duration;

use serde_json::json;
use tars_testkit::standin::faults::Fault;

use crate::pipeline::message_for;
use crate::stack::*;
use crate::support::eventually;

const E2E: Duration = Duration::from_secs(90);

/// Longer than the test workers' whole retry budget: 10 deliveries, 50 ms doubling to
/// 1 s between them, about 5.6 s in all. Before waiting was a state, every message that
/// met the outage was dead-lettered within it.
const LONGER_THAN_THE_RETRY_BUDGET: Duration = Duration::from_secs(9);

fn calls_of(s: &Stack, method: &str) -> usize {
    s.slack.calls().iter().filter(|(m, _)| m == method).count()
}

async fn no_dead_letters(s: &Stack) {
    let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(body["dead_letters"], json!([]), "nothing dead-lettered");
}

/// Waits until each of `ids` has exactly one message, showing `containing`.
async fn one_message_each_showing(s: &Stack, ids: &[String], containing: &str) {
    eventually(
        E2E,
        &format!("one message each, showing {containing:?}"),
        || async {
            let rendered: Vec<String> = s
                .slack
                .messages()
                .iter()
                .map(|m| m.blocks.to_string())
                .collect();
            ids.iter()
                .all(|id| {
                    let mine: Vec<&String> = rendered
                        .iter()
                        .filter(|b| b.contains(id.as_str()))
                        .collect();
                    mine.len() == 1 && mine[0].contains(containing)
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        s.slack.messages().len(),
        ids.len(),
        "one message per request"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn slack_down_longer_than_the_retry_budget_posts_every_request_once_when_it_returns() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.slack.served().go_down().await;
    let mut ids = Vec::new();
    for tenant in ["down1", "down2", "down3", "down4", "down5"] {
        ids.push(s.submit(tenant, "read_only").await);
    }
    // The notifier says what it waits on, while it waits.
    eventually(E2E, "the notifier waiting on Slack", || async {
        let text = s.notifier_metrics.render();
        (metric(
            &text,
            "tars_dependency_waiting_since_seconds{dependency=\"slack\"",
        ) > 0.0)
            .then_some(())
    })
    .await;
    // The outage itself (what is tested), not a synchronisation.
    tokio::time::sleep(LONGER_THAN_THE_RETRY_BUDGET).await;
    s.slack.served().come_back().await.unwrap();
    one_message_each_showing(&s, &ids, "\"approve\"").await;
    no_dead_letters(&s).await;
    assert_eq!(calls_of(&s, "chat.postMessage"), ids.len(), "one post each");
    let text = s.notifier_metrics.render();
    eventually(E2E, "the gauge back at 0", || async {
        (metric(
            &s.notifier_metrics.render(),
            "tars_dependency_waiting_since_seconds",
        ) == 0.0)
            .then_some(())
    })
    .await;
    assert!(metric(&text, "tars_worker_messages_total{outcome=\"wait\"") > 0.0);
}

#[tokio::test]
async fn grants_during_a_governance_outage_longer_than_the_retry_budget_are_applied_once() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    // Submitted while the API answers (the ingress checks the tenant).
    let mut ids = Vec::new();
    for tenant in ["gov1", "gov2", "gov3"] {
        ids.push(s.submit(tenant, "read_only").await);
    }
    s.governance.served().go_down().await;
    for id in &ids {
        s.approve(id).await;
    }
    tokio::time::sleep(LONGER_THAN_THE_RETRY_BUDGET).await;
    for id in &ids {
        assert_eq!(s.status_of(id).await, "approved", "waiting, not failed");
    }
    s.governance.served().come_back().await.unwrap();
    for id in &ids {
        wait_status(&s, id, "applied").await;
    }
    assert_eq!(s.governance.add_calls(), ids.len(), "one grant each");
    no_dead_letters(&s).await;
}

/// `n` users `<prefix>0…` each submit a read_only request to the auto-approved tenant
/// `public-data` at once; returns the ids. Each user's e-mail maps to Slack user
/// `U_<PREFIX><i>`, so each gets the outcome's DM.
async fn auto_approved_burst(s: &Stack, prefix: &str, n: usize) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let token = format!("{prefix}-{i}");
        let name = format!("{prefix}{i}");
        s.kbase.add_user(&token, &name, &[]);
        s.slack.add_user(
            &format!("{name}@example.org"),
            &format!("U_{}{i}", prefix.to_uppercase()),
        );
        async move {
            let (status, body, _) = s
                .post(
                    "/requests/",
                    Some(&token),
                    json!({"tenant_name": "public-data", "permission": "read_only"}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            body["request_id"].as_str().unwrap().to_owned()
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test]
async fn an_auto_approved_burst_against_the_post_limit_ends_with_one_final_message_and_one_dm_each()
{
    // Leases of 900 ms (three times the Slack timeout) against Slack's shape of limit,
    // scaled so the burst takes about 12 s: 2 posts a second, bursts of 2. Each request's
    // three events (submitted, approved, applied) arrive together, and the later two wait
    // for the first post far longer than the test workers' retry budget (5.6 s).
    let s = Stack::start(Options {
        workers: true,
        slack_timeout: Duration::from_millis(300),
        policy: Some("[tenants.public-data]\nauto_approve = [\"read_only\"]\n"),
        ..Options::default()
    })
    .await;
    s.slack.limit_posts(2.0, 2);
    let n = 24;
    let ids = auto_approved_burst(&s, "auto", n).await;
    one_message_each_showing(&s, &ids, "access granted").await;
    let wrong = tars_tests::until_right(E2E, Duration::from_millis(20), || async {
        let dms = s.slack.dms();
        (0..n)
            .filter_map(|i| {
                let got = dms
                    .iter()
                    .filter(|(u, _)| *u == format!("U_AUTO{i}"))
                    .count();
                (got != 1).then(|| format!("requester {i}: {got} DMs"))
            })
            .collect()
    })
    .await;
    assert!(wrong.is_empty(), "one DM per requester: {wrong:?}");
    assert!(s.slack.posts_refused() > 0, "the burst did meet the limit");
    no_dead_letters(&s).await;
}

#[tokio::test]
async fn posts_queued_past_their_lease_are_posted_once() {
    // Leases of 900 ms (three times the Slack timeout) and posts paced 500 ms apart after
    // a rate limit: the eighth post waits about 4 s for its turn, several leases, while
    // the same requests' approval events arrive, find the leases and would take them
    // over if they lapsed.
    let s = Stack::start(Options {
        workers: true,
        slack_timeout: Duration::from_millis(300),
        slack_pacing: Some(2.0),
        policy: Some("[tenants.public-data]\nauto_approve = [\"read_only\"]\n"),
        ..Options::default()
    })
    .await;
    s.slack
        .faults()
        .method_next("chat.postMessage", 1, Fault::RateLimited(1));
    let ids = auto_approved_burst(&s, "queued", 8).await;
    one_message_each_showing(&s, &ids, "access granted").await;
    no_dead_letters(&s).await;
}

/// A post whose answer is lost makes the next attempt look first; `lookup` is what the
/// look-up meets.
async fn lost_post_then(lookup: Fault, times: usize) -> (Stack, String) {
    let s = Stack::start(Options {
        workers: true,
        slack_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    s.slack
        .lose_next_post_answers(1, Duration::from_millis(1500));
    s.slack
        .faults()
        .method_next("conversations.history", times, lookup);
    let id = s.submit("lookedup", "read_only").await;
    (s, id)
}

#[tokio::test]
async fn three_rate_limited_look_ups_are_waited_out_and_the_post_is_found() {
    let (s, id) = lost_post_then(Fault::RateLimited(1), 3).await;
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    one_message_each_showing(&s, std::slice::from_ref(&id), "access granted").await;
    assert_eq!(calls_of(&s, "chat.postMessage"), 1, "posted once");
    assert!(
        calls_of(&s, "conversations.history") >= 4,
        "looked until answered"
    );
    assert!(message_for(&s, &id).is_some());
}

#[tokio::test]
async fn a_refused_look_up_posts_again_and_counts_the_risk() {
    let (s, id) = lost_post_then(
        Fault::Status(
            200,
            json!({"ok": false, "error": "missing_scope", "needed": "channels:history"}),
        ),
        10,
    )
    .await;
    // The request is posted (a duplicate is recoverable, a request nobody sees is not).
    eventually(E2E, "a second post after the refused look-up", || async {
        (calls_of(&s, "chat.postMessage") == 2).then_some(())
    })
    .await;
    eventually(E2E, "the risk counted", || async {
        (metric(
            &s.notifier_metrics.render(),
            "tars_slack_duplicate_risk_total",
        ) == 1.0)
            .then_some(())
    })
    .await;
    no_dead_letters(&s).await;
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
}

#[tokio::test]
async fn a_long_rate_limit_pause_costs_the_lease_a_write_or_two_not_one_per_third_of_it() {
    // Leases of 900 ms and a first post answered 429 with Retry-After 6 s: renewed every
    // 300 ms through the pause, the record got some twenty revisions in six seconds (an
    // hour's pause: thousands), and the bucket keeps 32 per key, so an event in a revision
    // the relay had not read yet could be lost. Extended once over the foreseen pause,
    // the lease costs a write or two.
    let s = Stack::start(Options {
        workers: true,
        slack_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let client = async_nats::connect(s.nats.server.url()).await.unwrap();
    let mut writes = client.subscribe("$KV.TARS_REQUESTS.*").await.unwrap();
    s.slack
        .faults()
        .method_next("chat.postMessage", 1, Fault::RateLimited(6));
    let id = s.submit("paused", "read_only").await;
    one_message_each_showing(&s, std::slice::from_ref(&id), "\"approve\"").await;
    let subject = format!("$KV.TARS_REQUESTS.{id}");
    let mut count = 0;
    while let Ok(Some(m)) = tokio::time::timeout(
        Duration::from_millis(200),
        futures::StreamExt::next(&mut writes),
    )
    .await
    {
        if m.subject.as_str() == subject {
            count += 1;
        }
    }
    // The record created, the lease claimed, extended over the pause (and once more at
    // most before the send), the reference kept.
    assert!(
        count <= 5,
        "{count} writes of the record during a 6 s pause"
    );
    no_dead_letters(&s).await;
}
