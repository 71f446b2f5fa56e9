//! Upgrades, restarts and replays (Guarantee 9): a relay that loses its consumer finds it
//! again, a consumer declared again resumes where it was, and a replayed dead letter
//! reaches only the worker that dead-lettered it.

use std::time::Duration;

use serde_json::json;
use tars_jetstream::relay::RELAY_CONSUMER;
use tars_jetstream::topology::{DLQ_STREAM, EVENTS_STREAM, GOVERNANCE_APPLIER, NOTIFIER};

use crate::stack::*;
use crate::support::eventually;

const E2E: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_relay_whose_consumer_vanishes_declares_it_again_and_announces_what_was_written() {
    let s = Stack::start(Options::default()).await;
    let first = s.submit("before", "read_only").await;
    s.wait_count(&format!("tars.request.submitted.{first}"), 1)
        .await;
    s.nats
        .topology
        .requests
        .stream
        .delete_consumer(RELAY_CONSUMER)
        .await
        .unwrap();
    // Written while the relay has no consumer: announced once it has one again (the
    // earlier relay retried its pulls forever and published nothing more).
    let second = s.submit("after", "read_only").await;
    eventually(E2E, "the second request announced", || async {
        (s.count_subject(&format!("tars.request.submitted.{second}"))
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        s.count_subject(&format!("tars.request.submitted.{first}"))
            .await,
        1
    );
}

async fn consumer_idle(s: &Stack, name: &str) -> bool {
    tars_tests::consumer_backlog(&s.nats.topology.events, name).await == Some(0)
}

#[tokio::test]
async fn replaying_a_notifier_dead_letter_does_not_grant_a_failed_request_again() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("refusing", "read_only").await;
    s.governance.faults().fail_next_with(
        1,
        400,
        json!({"error_type": "ValidationError", "message": "tenant is frozen"}),
    );
    s.approve(&id).await;
    wait_status(&s, &id, "failed").await;
    let calls = s.governance.calls().len();
    // A dead letter of the notifier's for the request's `approved` event (a Slack refusal
    // while showing it, say), as the runtime writes one.
    let js = &s.nats.topology.js;
    let events = js.get_stream(EVENTS_STREAM).await.unwrap();
    let approved = format!("tars.request.approved.{id}");
    let original = events
        .get_last_raw_message_by_subject(&approved)
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Tars-Dlq-Reason",
        "Slack refused: chat.update: message_not_found",
    );
    headers.insert("Tars-Dlq-Worker", NOTIFIER.name);
    headers.insert("Tars-Dlq-Deliveries", "1");
    headers.insert("Tars-Original-Subject", approved.as_str());
    headers.insert("Tars-Original-Seq", original.sequence.to_string().as_str());
    js.publish_with_headers(format!("tars.dlq.notifier.{id}"), headers, original.payload)
        .await
        .unwrap()
        .await
        .unwrap();
    let dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    let seq = dlq
        .get_last_raw_message_by_subject(&format!("tars.dlq.notifier.{id}"))
        .await
        .unwrap()
        .sequence;
    let (status, body, _) = s
        .post(
            &format!("/admin/dead-letters/{seq}/replay"),
            Some(ADMIN_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["subject"],
        format!("tars.replay.notifier.tars.request.approved.{id}")
    );
    eventually(E2E, "the replay handled and nothing left", || async {
        (consumer_idle(&s, NOTIFIER.name).await && consumer_idle(&s, GOVERNANCE_APPLIER.name).await)
            .then_some(())
    })
    .await;
    assert_eq!(s.status_of(&id).await, "failed", "not granted again");
    assert_eq!(s.governance.calls().len(), calls, "no governance call");
}

#[tokio::test]
async fn a_request_asked_again_after_its_predecessor_was_retired_gets_a_new_id() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let old = s.submit("yearly", "read_only").await;
    let (status, body, _) = s
        .post(
            "/approvals/deny",
            Some(ADMIN_TOKEN),
            json!({"request_id": old}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_status(&s, &old, "denied").await;
    // Retention, 400 days on: the record goes (its open-index entry must go with it).
    let (sweeper, _) = s.sweeper().await;
    let retention = Duration::from_secs(400 * 86_400);
    let later = tars_domain::now() + retention + Duration::from_secs(2 * 86_400);
    assert_eq!(sweeper.retire(later, retention).await.unwrap(), 1);
    let (status, _) = s.get(&format!("/requests/{old}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "retired");
    // Asked again: a new request, never the retired id brought back.
    let new = s.submit("yearly", "read_only").await;
    assert_ne!(new, old, "a retired id is never used again");
    wait_status(&s, &new, "pending").await;
}
