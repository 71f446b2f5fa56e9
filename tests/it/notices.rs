//! Telling people: the requester's DM for each outcome (applied, denied, failed, expired,
//! revoked, ending soon; once, and nothing fails when their
//! e-mail matches no Slack user), the warning before time-bound access ends, and reminders
//! in the approval message's thread for requests left pending (an injected clock).

use std::time::Duration;

use serde_json::json;

use crate::pipeline::wait_message;
use crate::stack::*;
use crate::support::eventually;

/// Waits until alice has exactly `n` DMs and returns them.
async fn dms_to(s: &Stack, user: &str, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} DMs to {user}"),
        || async {
            let got: Vec<String> = s
                .slack
                .dms()
                .into_iter()
                .filter(|(u, _)| u == user)
                .map(|(_, t)| t)
                .collect();
            (got.len() == n).then_some(got)
        },
    )
    .await
}

#[tokio::test]
async fn the_requester_hears_each_outcome_by_dm_once_and_nothing_fails_without_a_match() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    // alice's KBase e-mail (the stand-in's `<user>@example.org`) is a Slack user; dave's
    // is not.
    s.slack.add_user("alice@example.org", "U_ALICE");
    s.kbase.add_user("token-dave", "dave", &[]);

    let granted = s.submit_for(USER_TOKEN, "lake", Some("1h")).await;
    s.approve(&granted).await;
    wait_status(&s, &granted, "applied").await;
    let dms = dms_to(&s, "U_ALICE", 1).await;
    assert!(dms[0].contains("is granted; it ends at"), "{dms:?}");
    assert!(dms[0].contains(&granted), "{dms:?}");

    let denied = s.submit_for(USER_TOKEN, "pond", None).await;
    let (status, _, _) = s
        .post(
            "/approvals/deny",
            Some(ADMIN_TOKEN),
            json!({"request_id": denied}),
        )
        .await;
    assert_eq!(status, 202);
    let dms = dms_to(&s, "U_ALICE", 2).await;
    assert!(dms[1].contains("denied by bob"), "{dms:?}");

    // Nobody in Slack has dave's e-mail: his outcome is shown in the channel, no DM is
    // sent, and nothing is retried or dead-lettered.
    let daves = s.submit_for("token-dave", "lake", None).await;
    s.approve(&daves).await;
    wait_status(&s, &daves, "applied").await;
    wait_message(&s, &daves, "access granted").await;
    let (_, dead) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(dead["dead_letters"], json!([]), "{dead}");

    // Access ends: one more DM, and the earlier ones are not sent again.
    let (_, rec) = s
        .get(&format!("/requests/{granted}"), Some(USER_TOKEN))
        .await;
    let (sweeper, _) = s.sweeper().await;
    assert_eq!(
        sweeper
            .end_access(time_of(&rec["access_expires_at"]))
            .await
            .unwrap(),
        1
    );
    wait_status(&s, &granted, "revoked").await;
    let dms = dms_to(&s, "U_ALICE", 3).await;
    assert!(dms[2].contains("was removed (its time ran out)"), "{dms:?}");
    assert!(s.slack.dms().iter().all(|(u, _)| u == "U_ALICE"));
    // Each notice is recorded once it is sent (right after the DM lands).
    eventually(Duration::from_secs(30), "both notices recorded", || async {
        let (_, rec) = s
            .get(&format!("/requests/{granted}"), Some(USER_TOKEN))
            .await;
        (rec["notices_sent"] == json!(["request.applied", "request.revoked"])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn failed_and_expired_requests_are_told_too() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.slack.add_user("alice@example.org", "U_ALICE");
    let failing = s.submit_for(USER_TOKEN, "frozen", None).await;
    s.governance.faults().fail_next_with(
        1,
        400,
        json!({"error_type": "ValidationError", "message": "tenant is frozen"}),
    );
    s.approve(&failing).await;
    wait_status(&s, &failing, "failed").await;
    let dms = dms_to(&s, "U_ALICE", 1).await;
    assert!(dms[0].contains("could not be applied"), "{dms:?}");

    let stale = s.submit_for(USER_TOKEN, "stale", None).await;
    let created = tars_domain::RequestId::parse(&stale)
        .unwrap()
        .created_at()
        .unwrap();
    let (sweeper, _) = s.sweeper().await;
    // Past the default REQUEST_TTL of 7 days.
    assert_eq!(
        sweeper
            .expire_stale(created + time::Duration::days(8))
            .await
            .unwrap(),
        1
    );
    wait_status(&s, &stale, "expired").await;
    let dms = dms_to(&s, "U_ALICE", 2).await;
    assert!(dms[1].contains("expired without a decision"), "{dms:?}");
}

#[tokio::test]
async fn the_requester_is_warned_once_before_time_bound_access_ends() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.slack.add_user("alice@example.org", "U_ALICE");
    let id = s.submit_for(USER_TOKEN, "lake", Some("3d")).await;
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    dms_to(&s, "U_ALICE", 1).await;
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    let ends = time_of(&rec["access_expires_at"]);
    let (sweeper, metrics) = s.sweeper().await;
    let warnings = || {
        metrics
            .notifications
            .with_label_values(&["expiry_warning"])
            .get()
    };
    // More than ACCESS_EXPIRY_WARNING (24 h) before the end: nothing yet.
    sweeper
        .end_access(ends - time::Duration::hours(25))
        .await
        .unwrap();
    assert_eq!(warnings(), 0);
    sweeper
        .end_access(ends - time::Duration::hours(23))
        .await
        .unwrap();
    assert_eq!(warnings(), 1);
    let dms = dms_to(&s, "U_ALICE", 2).await;
    assert!(dms[1].contains("ends at"), "{dms:?}");
    sweeper
        .end_access(ends - time::Duration::hours(22))
        .await
        .unwrap();
    assert_eq!(warnings(), 1, "warned once");
    assert_eq!(s.status_of(&id).await, "applied");
}

#[tokio::test]
async fn a_request_left_pending_is_reminded_in_its_thread_once_per_interval() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("slow", "read_only").await;
    let msg = wait_message(&s, &id, r#""action_id":"approve""#).await;
    let created = tars_domain::RequestId::parse(&id)
        .unwrap()
        .created_at()
        .unwrap();
    let (sweeper, _) = s.sweeper().await;
    let replies = |n: usize| {
        let s = &s;
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("{n} reminders"),
                || async {
                    let got = s.slack.replies();
                    (got.len() == n).then_some(got)
                },
            )
            .await
        }
    };
    let hours = |h: i64| created + time::Duration::hours(h);
    sweeper.expire_stale(hours(23)).await.unwrap();
    sweeper.expire_stale(hours(25)).await.unwrap();
    let got = replies(1).await;
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        (CHANNEL, msg.ts.as_str())
    );
    assert!(got[0].2.contains("Reminder 1"), "{got:?}");
    // Within the same interval: no second reminder.
    sweeper.expire_stale(hours(30)).await.unwrap();
    sweeper.expire_stale(hours(49)).await.unwrap();
    let got = replies(2).await;
    assert!(got[1].2.contains("Reminder 2"), "{got:?}");
    assert_eq!(s.status_of(&id).await, "pending");
    // Decided requests are not reminded.
    s.approve(&id).await;
    wait_status(&s, &id, "applied").await;
    sweeper.expire_stale(hours(73)).await.unwrap();
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(rec["reminders"], 2, "{rec}");
    assert_eq!(s.slack.replies().len(), 2);
}
