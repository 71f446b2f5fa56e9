//! The whole pipeline: ingress + notifier + decision + governance-applier, real nats-server,
//! stand-ins for Slack, KBase and the governance API.

use std::time::Duration;

use serde_json::json;

use crate::stack::*;
use crate::support::eventually;

const E2E: Duration = Duration::from_secs(60);

pub(crate) fn message_for(
    s: &Stack,
    id: &str,
) -> Option<tars_testkit::standin::slack::SlackMessage> {
    s.slack
        .messages()
        .into_iter()
        .find(|m| m.blocks.to_string().contains(id))
}

pub(crate) async fn wait_message(
    s: &Stack,
    id: &str,
    containing: &str,
) -> tars_testkit::standin::slack::SlackMessage {
    eventually(
        E2E,
        &format!("Slack message of {id} showing {containing:?}"),
        || async { message_for(s, id).filter(|m| m.blocks.to_string().contains(containing)) },
    )
    .await
}

#[tokio::test]
async fn approved_in_slack_and_applied_for_both_permissions() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    for (permission, group) in [("read_only", "lakero"), ("read_write", "lake")] {
        let id = s.submit("lake", permission).await;
        wait_message(&s, &id, "\"approve\"").await;
        let r = s
            .interactor
            .click(SLACK_APPROVER, "approve", &id, &s.slack.response_url())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        wait_status(&s, &id, "applied").await;
        assert_eq!(s.governance.members(group), vec!["alice"]);
        let msg = wait_message(&s, &id, "access granted").await;
        assert!(msg.blocks.to_string().contains("bob"), "shows who approved");
        let (_, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
        let types: Vec<&str> = rec["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "request.submitted",
                "decision.requested",
                "request.approved",
                "request.applied"
            ]
        );
        assert_eq!(rec["decided_by"], "bob");
        assert_eq!(rec["decision_source"], "slack");
    }
    assert_eq!(s.slack.messages().len(), 2, "one Slack post per request");
    assert_eq!(s.governance.add_calls(), 2);
}

#[tokio::test]
async fn denied_cancelled_and_expired_requests_are_never_applied() {
    let s = Stack::start(Options {
        workers: true,
        request_ttl: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let denied = s.submit("t-deny", "read_only").await;
    let cancelled = s.submit("t-cancel", "read_only").await;
    let (status, _, _) = s
        .post(
            "/approvals/deny",
            Some(ADMIN_TOKEN),
            json!({"request_id": denied}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _, _) = s
        .post(
            &format!("/requests/{cancelled}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    wait_status(&s, &denied, "denied").await;
    wait_message(&s, &denied, "Denied by bob").await;
    wait_message(&s, &cancelled, "Cancelled").await;
    let expiring = s.submit("t-expire", "read_only").await;
    wait_status(&s, &expiring, "expired").await;
    wait_message(&s, &expiring, "Expired").await;
    // Deciding a request that is no longer pending is refused and changes nothing; a
    // Slack clicker is told why.
    s.interactor
        .click(SLACK_APPROVER, "approve", &denied, &s.slack.response_url())
        .await
        .unwrap();
    eventually(E2E, "the clicker told it is decided", || async {
        s.slack
            .responses()
            .iter()
            .any(|r| r["text"].as_str().unwrap_or("").contains("already denied"))
            .then_some(())
    })
    .await;
    let (status, body, _) = s
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"request_id": denied}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("already denied"));
    assert_eq!(s.governance.add_calls(), 0, "no membership asked for");
}

#[tokio::test]
async fn concurrent_approvals_from_slack_and_rest_apply_once() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("race", "read_write").await;
    let response_url = s.slack.response_url();
    let slack = s
        .interactor
        .click(SLACK_APPROVER, "approve", &id, &response_url);
    let rest = s.post(
        "/approvals/approve",
        Some(ADMIN2_TOKEN),
        json!({"request_id": id}),
    );
    let (slack, rest) = tokio::join!(slack, rest);
    assert_eq!(slack.unwrap().status(), 200);
    assert!(rest.0 == 202 || rest.0 == 409, "{:?}", rest.1);
    wait_status(&s, &id, "applied").await;
    // The losing decision is recorded in the audit trail, never applied.
    if rest.0 == 202 {
        eventually(E2E, "the losing decision recorded", || async {
            (s.count_subject(&format!("tars.decision.rejected.{id}"))
                .await
                == 1)
                .then_some(())
        })
        .await;
    }
    assert_eq!(s.governance.add_calls(), 1);
    assert_eq!(
        s.count_subject(&format!("tars.request.approved.{id}"))
            .await,
        1
    );
}

#[tokio::test]
async fn governance_outages_are_retried_and_refusals_fail_then_replay() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("flaky", "read_only").await;
    let before = s.governance.calls().len();
    s.governance.faults().fail_next(3, 500);
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    assert_eq!(s.governance.add_calls(), 1);
    assert_eq!(
        s.governance.calls().len() - before,
        5,
        "three 500s reading the tenant, then a read and the add"
    );

    let id = s.submit("frozen", "read_only").await;
    s.governance.faults().fail_next_with(
        1,
        400,
        json!({"error_type": "ValidationError", "message": "tenant is frozen"}),
    );
    s.post(
        "/approvals/approve",
        Some(ADMIN_TOKEN),
        json!({"request_id": id}),
    )
    .await;
    wait_status(&s, &id, "failed").await;
    // Slack shows the plain reason; the dead letter keeps what the service said.
    wait_message(&s, &id, "refused this change as invalid").await;
    let dead = eventually(E2E, "one dead letter", || async {
        let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
        let list = body["dead_letters"].as_array().cloned().unwrap_or_default();
        (list.len() == 1).then(|| list[0].clone())
    })
    .await;
    assert_eq!(dead["worker"], "governance-applier");
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("tenant is frozen")
    );
    let seq = dead["seq"].as_u64().unwrap();
    let (status, _, _) = s
        .post(
            &format!("/admin/dead-letters/{seq}/replay"),
            Some(ADMIN_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    wait_status(&s, &id, "applied").await;
    assert_eq!(s.governance.members("frozenro"), vec!["alice"]);
    let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(body["dead_letters"], json!([]));
}

#[tokio::test]
async fn slack_outages_and_rate_limits_still_give_exactly_one_message() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.slack.faults().rate_limit_next(1, 1);
    s.slack.faults().fail_next(5, 500);
    let id = s.submit("noisy", "read_only").await;
    wait_message(&s, &id, "\"approve\"").await;
    s.interactor
        .click(SLACK_APPROVER, "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    wait_status(&s, &id, "applied").await;
    wait_message(&s, &id, "access granted").await;
    assert_eq!(s.slack.messages().len(), 1);
    let posts = s
        .slack
        .calls()
        .iter()
        .filter(|(m, _)| m == "chat.postMessage")
        .count();
    let lookups = s
        .slack
        .calls()
        .iter()
        .filter(|(m, _)| m == "conversations.history")
        .count();
    // A 429 is waited out and tried again; a 500 may have posted, so every later attempt
    // first looks for the message (the remaining four 500s meet those lookups), then posts.
    assert_eq!(
        (posts, lookups),
        (3, 5),
        "post: 429, post: 500, four failed lookups, a lookup, the post"
    );
}

async fn all_applied(s: &Stack, ids: &[String]) {
    eventually(E2E, "every request applied", || async {
        for id in ids {
            if s.status_of(id).await != "applied" {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test]
async fn stopping_the_applier_mid_run_loses_nothing_and_applies_nothing_twice() {
    let mut s = Stack::start(Options::default()).await;
    s.start_decision(Duration::from_secs(86_400));
    s.governance.faults().set_latency(Duration::from_millis(40));
    let stop = tokio_util::sync::CancellationToken::new();
    let first = s.spawn_applier(stop.clone(), tars_observability::metrics::Metrics::new());
    let ids = s.submit_and_approve_many(50).await;
    eventually(E2E, "some grants", || async {
        (s.governance.add_calls() >= 5).then_some(())
    })
    .await;
    stop.cancel();
    first.await.unwrap();
    let done_before_restart = s.governance.add_calls();
    assert!(
        done_before_restart < 50,
        "stopped mid-run ({done_before_restart} done)"
    );
    let _second = s.spawn_applier(s_shutdown(&s), tars_observability::metrics::Metrics::new());
    all_applied(&s, &ids).await;
    let posts: Vec<_> = s
        .governance
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect();
    assert_eq!(
        posts.len(),
        50,
        "one governance call per request, none repeated"
    );
    assert!(posts.iter().all(|c| c.status == 200));
}

#[tokio::test]
async fn two_applier_replicas_share_two_hundred_approvals() {
    let mut s = Stack::start(Options::default()).await;
    s.start_decision(Duration::from_secs(86_400));
    s.governance.faults().set_latency(Duration::from_millis(5));
    let (ma, mb) = (
        tars_observability::metrics::Metrics::new(),
        tars_observability::metrics::Metrics::new(),
    );
    let _a = s.spawn_applier(s_shutdown(&s), ma.clone());
    let _b = s.spawn_applier(s_shutdown(&s), mb.clone());
    let ids = s.submit_and_approve_many(200).await;
    all_applied(&s, &ids).await;
    let acks = |m: &tars_observability::metrics::Metrics| {
        m.worker_messages
            .with_label_values(&["governance-applier", "ack"])
            .get()
    };
    let (a, b) = (acks(&ma), acks(&mb));
    assert!(a > 0 && b > 0, "both replicas worked: {a} and {b}");
    assert_eq!(a + b, 200);
    assert_eq!(
        s.governance
            .calls()
            .iter()
            .filter(|c| c.method == "POST")
            .count(),
        200
    );
}

fn s_shutdown(s: &Stack) -> tokio_util::sync::CancellationToken {
    s.shutdown_token()
}

#[tokio::test]
async fn a_killed_applier_loses_nothing_and_grants_each_request_once() {
    let mut s = Stack::start(Options::default()).await;
    s.start_decision(Duration::from_secs(86_400));
    s.governance.faults().set_latency(Duration::from_millis(40));
    // The applier runs on its own runtime, so shutting that down kills every task and its
    // NATS connection at once, as SIGKILL would: nothing is acked or nak-ed on the way out.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let args = s.applier_args();
    doomed.spawn(async move {
        let never = tokio_util::sync::CancellationToken::new();
        let _ =
            tars_governance_applier::run(args, tars_observability::metrics::Metrics::new(), never)
                .await;
    });
    let ids = s.submit_and_approve_many(50).await;
    eventually(E2E, "some grants", || async {
        (s.governance.add_calls() >= 5).then_some(())
    })
    .await;
    doomed.shutdown_background();
    assert!(s.governance.add_calls() < 50, "killed mid-run");
    let _again = s.spawn_applier(s_shutdown(&s), tars_observability::metrics::Metrics::new());
    all_applied(&s, &ids).await;
    assert_eq!(s.governance.add_calls(), 50, "each membership granted once");
    for i in 0..50 {
        assert_eq!(
            s.governance.members(&format!("t{i}ro")),
            vec![format!("user{i}")]
        );
    }
    // A grant recorded just before the kill has its event published when the message
    // comes back (after ack_wait), once.
    eventually(E2E, "one applied event per request", || async {
        for id in &ids {
            let n = s.count_subject(&format!("tars.request.applied.{id}")).await;
            assert!(n <= 1, "{id} has {n} applied events");
            if n == 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test]
async fn a_discarded_dead_letter_changes_no_request() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("locked", "read_write").await;
    s.governance.faults().fail_next_with(
        1,
        403,
        json!({"detail": "Not allowed to manage this group"}),
    );
    s.post(
        "/approvals/approve",
        Some(ADMIN_TOKEN),
        json!({"request_id": id}),
    )
    .await;
    wait_status(&s, &id, "failed").await;
    let seq = eventually(E2E, "the dead letter", || async {
        let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
        body["dead_letters"][0]["seq"].as_u64()
    })
    .await;
    let del = |seq: u64| {
        s.http
            .delete(format!("{}/admin/dead-letters/{seq}", s.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(del(seq).await.unwrap().status(), 204);
    assert_eq!(del(seq).await.unwrap().status(), 404);
    let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(body["dead_letters"], json!([]));
    assert_eq!(s.status_of(&id).await, "failed");
    let (_, failed) = s.get("/requests?status=failed", Some(ADMIN_TOKEN)).await;
    assert_eq!(failed["requests"].as_array().unwrap().len(), 1);
    assert_eq!(
        failed["requests"][0]["failure_reason"],
        "the governance service did not allow TARS to make this change; an admin has been told"
    );
}

#[tokio::test]
async fn finding_7_users_see_a_plain_reason_and_only_the_dead_letter_keeps_the_detail() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("plain", "read_write").await;
    let detail = "token gov-s3cr3t refused by http://minio-manager.internal:8000/tenants";
    s.governance
        .faults()
        .fail_next_with(1, 403, json!({ "detail": detail }));
    s.approve(&id).await;
    wait_status(&s, &id, "failed").await;
    let (_, record) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    let shown = record.to_string();
    assert!(
        !shown.contains("internal") && !shown.contains("s3cr3t"),
        "{shown}"
    );
    assert_eq!(
        record["failure_reason"],
        "the governance service did not allow TARS to make this change; an admin has been told"
    );
    let message = eventually(E2E, "the message shows the failure", || async {
        s.slack
            .messages()
            .into_iter()
            .find(|m| m.blocks.to_string().contains("did not allow TARS"))
    })
    .await;
    let posted = message.blocks.to_string();
    assert!(
        !posted.contains("internal") && !posted.contains("s3cr3t"),
        "{posted}"
    );
    let reason = eventually(E2E, "the dead letter", || async {
        let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
        body["dead_letters"][0]["reason"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(reason.contains(detail), "{reason}");
}

/// Submits one request for each of `n` distinct users at once; returns the ids.
async fn burst(s: &Stack, n: usize) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let token = format!("burst-{i}");
        s.kbase.add_user(&token, &format!("burst{i}"), &[]);
        async move {
            let (status, body, _) = s
                .post(
                    "/requests/",
                    Some(&token),
                    json!({"tenant_name": "workshop"}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            body["request_id"].as_str().unwrap().to_owned()
        }
    });
    futures::future::join_all(calls).await
}

async fn one_message_each(s: &Stack, ids: &[String]) {
    // Each message rendered once per look (not once per id: with 200 ids that was 40,000
    // renderings a poll, CPU taken from the services being waited for).
    eventually(E2E, "a Slack message for every request", || async {
        let rendered: Vec<String> = s
            .slack
            .messages()
            .iter()
            .map(|m| m.blocks.to_string())
            .collect();
        ids.iter()
            .all(|id| rendered.iter().filter(|b| b.contains(id.as_str())).count() == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        s.slack.messages().len(),
        ids.len(),
        "exactly one message per request"
    );
}

#[tokio::test]
async fn a_workshop_burst_meets_slack_rate_limits_and_still_posts_once_each() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.slack.faults().limit_rate(10);
    let ids = burst(&s, 40).await;
    one_message_each(&s, &ids).await;
    assert!(
        s.slack.faults().rate_limited() > 0,
        "the burst did meet 429s"
    );
}

#[tokio::test]
async fn paced_posting_avoids_slack_rate_limits() {
    let s = Stack::start(Options {
        workers: true,
        slack_pacing: Some(5.0),
        ..Options::default()
    })
    .await;
    // Slack's token bucket at 10 posts a second (bursts of 2) against posts paced 200 ms
    // apart: a post could only meet the limit if pacing let two through closer than the
    // bucket refills, by more than a whole token.
    s.slack.limit_posts(10.0, 2);
    let ids = burst(&s, 20).await;
    one_message_each(&s, &ids).await;
    assert_eq!(s.slack.posts_refused(), 0, "paced under the limit, no 429");
}

#[tokio::test]
async fn events_racing_the_first_post_still_give_one_message() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    // Slack is slow, so the approval's events arrive while the first post is in flight.
    s.slack.faults().set_latency(Duration::from_millis(700));
    let id = s.submit("racing", "read_only").await;
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    wait_message(&s, &id, "access granted").await;
    let posts = s
        .slack
        .calls()
        .iter()
        .filter(|(m, _)| m == "chat.postMessage")
        .count();
    assert_eq!(posts, 1, "one post for one request");
    assert_eq!(s.slack.messages().len(), 1);
}

/// The trace id in the `traceparent` header of the last message on `subject`.
async fn trace_of(s: &Stack, subject: &str) -> Option<String> {
    let stream = s.nats.topology.js.get_stream("TARS_EVENTS").await.ok()?;
    let msg = stream.get_last_raw_message_by_subject(subject).await.ok()?;
    let header = msg.headers.get("traceparent")?.as_str().to_owned();
    header.split('-').nth(1).map(str::to_owned)
}

/// POSTs `body` as a call that belongs to `trace`; returns the status and JSON body.
async fn post_in_trace(
    s: &Stack,
    path: &str,
    token: &str,
    trace: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn one_trace_id_follows_a_call_through_every_worker() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let submit_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"tenant_name": "traced", "permission": "read_only"});
    let (status, answer) = post_in_trace(&s, "/requests/", USER_TOKEN, submit_trace, body).await;
    assert_eq!(status, 202);
    let id = answer["request_id"].as_str().unwrap().to_owned();
    assert_eq!(
        trace_of(&s, &format!("tars.request.submitted.{id}"))
            .await
            .as_deref(),
        Some(submit_trace)
    );
    // An approval is a new call with its own trace: the decision worker and the applier
    // carry it on to the events they publish.
    let approve_trace = "0af7651916cd43dd8448eb211c80319c";
    let body = json!({"request_id": id});
    let (status, _) =
        post_in_trace(&s, "/approvals/approve", ADMIN_TOKEN, approve_trace, body).await;
    assert_eq!(status, 202);
    wait_status(&s, &id, "applied").await;
    for kind in ["decision.requested", "request.approved", "request.applied"] {
        assert_eq!(
            trace_of(&s, &format!("tars.{kind}.{id}")).await.as_deref(),
            Some(approve_trace),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn read_only_for_a_read_write_member_changes_nothing() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.governance.set_member("owned", "alice", "read_write");
    let id = s.submit("owned", "read_only").await;
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    assert_eq!(
        s.governance.add_calls(),
        0,
        "never a demotion, never a call"
    );
    assert_eq!(
        s.governance.members_of("owned"),
        vec![("alice".to_owned(), "read_write".to_owned())]
    );
}

#[tokio::test]
async fn a_burst_longer_than_the_retry_budget_waits_and_posts_every_request_once() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    // Slack's shape of limit, scaled up so the test runs in seconds: 20 posts a second
    // per channel, bursts of 20. 200 requests take about 10 s of posting, far longer than
    // the test workers' whole retry budget (10 deliveries, 50 ms doubling to 1 s).
    s.slack.limit_posts(20.0, 20);
    let ids = burst(&s, 200).await;
    one_message_each(&s, &ids).await;
    let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        body["dead_letters"],
        json!([]),
        "a rate limit never dead-letters"
    );
    let posts = s
        .slack
        .calls()
        .iter()
        .filter(|(m, _)| m == "chat.postMessage")
        .count();
    let refused = s.slack.posts_refused();
    assert!(refused > 0, "the burst did meet the limit");
    assert_eq!(posts, 200 + refused);
    assert!(
        refused <= 40,
        "{refused} refused posts: waiting tasks rushed Slack when a pause ended"
    );
}
