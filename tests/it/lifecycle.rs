//! Time-bound access and revocation: access ends at its time (an injected clock, never
//! slept on), once; the requester, an admin or a Slack approver ends it early; everyone
//! else is refused; access that ended while everything was down ends when it returns.

use std::time::Duration;

use serde_json::{Value, json};

use crate::pipeline::wait_message;
use crate::stack::*;
use crate::support::{LONG, eventually};

fn history_types(rec: &Value) -> Vec<String> {
    rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap().to_owned())
        .collect()
}

fn alice_read_only() -> Vec<(String, String)> {
    vec![("alice".to_owned(), "read_only".to_owned())]
}

#[tokio::test]
async fn time_bound_access_ends_at_its_time_and_is_removed_once() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let (id, rec) = s.applied("lake", Some("1h")).await;
    let ends = time_of(&rec["access_expires_at"]);
    assert_eq!(ends - time_of(&rec["applied_at"]), time::Duration::hours(1));
    assert_eq!(s.governance.members_of("lake"), alice_read_only());
    wait_message(&s, &id, "it ends at").await;

    let (sweeper, _) = s.sweeper().await;
    let early = ends - time::Duration::seconds(1);
    assert_eq!(sweeper.end_access(early).await.unwrap(), 0);
    assert_eq!(s.status_of(&id).await, "applied");
    assert_eq!(sweeper.end_access(ends).await.unwrap(), 1);
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("lake").is_empty());
    // Later sweeps find nothing left to do.
    assert_eq!(
        sweeper
            .end_access(ends + time::Duration::days(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.governance_deletes(), 1, "{:?}", s.governance.calls());

    let msg = wait_message(&s, &id, "Access removed").await;
    let blocks = msg.blocks.to_string();
    assert!(blocks.contains("its time ran out"), "{blocks}");
    assert!(!blocks.contains(r#""action_id":"revoke""#), "{blocks}");
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert_eq!(rec["revoked_reason"], "expired");
    assert_eq!(rec["revoked_by"], "tars");
    let types = history_types(&rec);
    assert_eq!(
        &types[types.len() - 2..],
        ["request.revoking", "request.revoked"],
        "{types:?}"
    );
}

#[tokio::test]
async fn the_requester_or_an_admin_revokes_early_and_everyone_else_is_refused() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.kbase.add_user("token-dave", "dave", &[]);
    let (id, _) = s.applied("lake", None).await;
    let revoke = |id: &str| format!("/requests/{id}/revoke");

    // Somebody else's grant: the uniform 404.
    let (status, body, _) = s.post(&revoke(&id), Some("token-dave"), json!({})).await;
    assert_eq!(status, 404, "{body}");
    // Unknown fields are refused before anything changes.
    let (status, body, _) = s
        .post(&revoke(&id), Some(USER_TOKEN), json!({"why": "x"}))
        .await;
    assert_eq!(status, 422, "{body}");
    // A pending request has no access to revoke.
    let pending = s.submit("other", "read_only").await;
    let (status, body, _) = s.post(&revoke(&pending), Some(USER_TOKEN), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(s.status_of(&id).await, "applied");
    assert_eq!(s.governance_deletes(), 0);

    // The requester gives up her own access.
    let (status, body, _) = s
        .post(
            &revoke(&id),
            Some(USER_TOKEN),
            json!({"reason": "project finished"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "revoking");
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("lake").is_empty());
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert_eq!(rec["revoked_by"], "alice");
    assert_eq!(rec["revoked_reason"], "project finished");
    let (status, body, _) = s.post(&revoke(&id), Some(USER_TOKEN), json!({})).await;
    assert_eq!(status, 409, "revoked is final: {body}");

    // An admin revokes somebody else's.
    let (other, _) = s.applied("pond", None).await;
    let (status, body, _) = s.post(&revoke(&other), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    wait_status(&s, &other, "revoked").await;
    let (_, rec) = s
        .get(&format!("/requests/{other}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(rec["revoked_by"], "bob");
    assert!(s.governance.members_of("pond").is_empty());
    assert_eq!(s.governance_deletes(), 2);
}

#[tokio::test]
async fn a_membership_the_user_already_had_is_left_in_place_when_access_ends() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.governance.set_member("shared", "alice", "read_write");
    let (id, rec) = s.applied("shared", Some("2h")).await;
    assert_eq!(rec["membership_added"], false, "{rec}");
    let (sweeper, _) = s.sweeper().await;
    assert_eq!(
        sweeper
            .end_access(time_of(&rec["access_expires_at"]))
            .await
            .unwrap(),
        1
    );
    wait_status(&s, &id, "revoked").await;
    assert_eq!(
        s.governance.members_of("shared"),
        vec![("alice".to_owned(), "read_write".to_owned())]
    );
    assert_eq!(s.governance_deletes(), 0);
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert!(
        rec["revoke_note"]
            .as_str()
            .unwrap_or_default()
            .contains("before TARS granted it"),
        "{rec}"
    );
}

#[tokio::test]
async fn a_level_changed_after_the_grant_is_left_and_the_record_says_why() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let (id, rec) = s.applied("raised", None).await;
    assert_eq!(rec["membership_added"], true, "{rec}");
    // An operator raises alice to read_write outside TARS.
    s.governance.set_member("raised", "alice", "read_write");
    let (status, body, _) = s
        .post(
            &format!("/requests/{id}/revoke"),
            Some(ADMIN_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_status(&s, &id, "revoked").await;
    assert_eq!(
        s.governance.members_of("raised"),
        vec![("alice".to_owned(), "read_write".to_owned())],
        "TARS never lowers access it did not grant"
    );
    assert_eq!(s.governance_deletes(), 0);
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(ADMIN_TOKEN)).await;
    assert!(
        rec["revoke_note"]
            .as_str()
            .unwrap_or_default()
            .contains("another access level"),
        "{rec}"
    );
}

#[tokio::test]
async fn an_approver_revokes_from_slack_and_nobody_else_can() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let (id, _) = s.applied("lake", None).await;
    wait_message(&s, &id, r#""action_id":"revoke""#).await;
    let url = s.slack.response_url();
    let r = s
        .interactor
        .click("U_STRANGER", "revoke", &id, &url)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(LONG, "the stranger is told", || async {
        s.slack
            .responses()
            .iter()
            .any(|r| r["text"].as_str().unwrap_or("").contains("not an approver"))
            .then_some(())
    })
    .await;
    assert_eq!(s.status_of(&id).await, "applied");
    assert_eq!(s.governance.members_of("lake"), alice_read_only());

    let r = s
        .interactor
        .click(SLACK_APPROVER, "revoke", &id, &url)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("lake").is_empty());
    let (_, rec) = s.get(&format!("/requests/{id}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(rec["revoked_by"], "bob");
    wait_message(&s, &id, "revoked by bob").await;
}

#[tokio::test]
async fn access_that_ended_while_everything_was_down_is_removed_when_it_returns() {
    let mut s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let (id, rec) = s.applied("lake", Some("1h")).await;
    let ends = time_of(&rec["access_expires_at"]);
    s.stop_services().await;
    s.nats.server.restart().unwrap();

    // Everything comes back after the access ended: the first sweep starts the
    // revocation and a new governance-applier carries it out.
    let (sweeper, _) = s.sweeper().await;
    let back = ends + time::Duration::hours(5);
    assert_eq!(sweeper.end_access(back).await.unwrap(), 1);
    assert_eq!(s.governance.members_of("lake"), alice_read_only());
    let stop = tokio_util::sync::CancellationToken::new();
    let _applier = s.spawn_applier(stop.clone(), tars_observability::metrics::Metrics::new());
    eventually(
        Duration::from_secs(30),
        "the membership removed",
        || async { s.governance.members_of("lake").is_empty().then_some(()) },
    )
    .await;
    let store = {
        let conn = tars_jetstream::service::connect(
            &common(&s.nats.server.url()),
            "test-reader",
            tars_observability::metrics::Metrics::new(),
        )
        .await
        .unwrap();
        tars_jetstream::store::RequestStore::new(&conn.topology, &conn.metrics)
    };
    let rid = tars_domain::RequestId::parse(&id).unwrap();
    eventually(Duration::from_secs(30), "the record revoked", || async {
        let rec = store.get(&rid).await.unwrap()?.value;
        (rec.status == tars_domain::RequestStatus::Revoked).then_some(rec)
    })
    .await;
    assert_eq!(s.governance_deletes(), 1);
    stop.cancel();
}

#[tokio::test]
async fn a_refused_revocation_is_dead_lettered_stays_revoking_and_replays() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let (id, _) = s.applied("locked", None).await;
    // The governance API refuses the next call (the tenant read before the removal).
    s.governance.faults().fail_next_with(
        1,
        403,
        json!({"error_type": "Forbidden", "message": "tenant is locked"}),
    );
    let (status, body, _) = s
        .post(
            &format!("/requests/{id}/revoke"),
            Some(ADMIN_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let dead = eventually(LONG, "the revocation dead-lettered", || async {
        let (_, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
        let list = body["dead_letters"].as_array().cloned().unwrap_or_default();
        (list.len() == 1).then(|| list[0].clone())
    })
    .await;
    assert_eq!(dead["worker"], "governance-applier");
    assert!(
        dead["reason"].as_str().unwrap().contains("revoking"),
        "{dead}"
    );
    // The access is still there, and the record says it is being removed.
    assert_eq!(s.status_of(&id).await, "revoking");
    assert_eq!(
        s.governance.members_of("locked"),
        vec![("alice".to_owned(), "read_only".to_owned())]
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
    wait_status(&s, &id, "revoked").await;
    assert!(s.governance.members_of("locked").is_empty());
    assert_eq!(s.governance_deletes(), 1);
}
