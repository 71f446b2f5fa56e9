//! The ingress against a real nats-server and the KBase stand-in.

use serde_json::json;
use tars_jetstream::topology::EVENTS_STREAM;
use tars_testkit::standin::interact::{block_actions_body_in, now};

use crate::stack::*;

#[tokio::test]
async fn the_notebook_clients_exact_request_is_accepted_and_published() {
    let s = Stack::start(Options::default()).await;
    let resp = s
        .http
        .post(format!("{}/requests/", s.base))
        .header("Authorization", format!("Bearer {USER_TOKEN}"))
        .json(&json!({"tenant_name": "kbase", "permission": "read_only", "justification": "  need data  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    for field in [
        "status",
        "message",
        "requester",
        "tenant_name",
        "permission",
        "request_id",
        "created_at",
    ] {
        assert!(body.get(field).is_some(), "missing {field}: {body}");
    }
    assert_eq!(body["status"], "pending");
    assert_eq!(body["requester"], "alice");
    let id = body["request_id"].as_str().unwrap();
    assert!(
        body["message"].as_str().unwrap().contains(id),
        "the message names the id"
    );
    assert_eq!(
        s.wait_count(&format!("tars.request.submitted.{id}"), 1)
            .await,
        1
    );

    // A repeat returns the open request and publishes nothing.
    let (status, again, _) = s
        .post(
            "/requests",
            Some(USER_TOKEN),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["request_id"], id);
    assert_eq!(s.nats.stream_len(EVENTS_STREAM).await, 1);

    // The requester sees it with its history; another user gets the same 404 as an unknown id.
    let (status, rec) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(rec["justification"], "need data");
    assert_eq!(rec["history"][0]["type"], "request.submitted");
    s.kbase.add_user("eve-token", "eve", &[]);
    let (other, other_body) = s.get(&format!("/requests/{id}"), Some("eve-token")).await;
    let (unknown, unknown_body) = s
        .get(
            "/requests/0190b3a4-0000-7000-8000-000000000000",
            Some("eve-token"),
        )
        .await;
    assert_eq!((other, unknown), (404, 404));
    assert_eq!(other_body["error_type"], unknown_body["error_type"]);
}

#[tokio::test]
async fn a_hundred_concurrent_submissions_make_one_request() {
    let s = Stack::start(Options::default()).await;
    let calls = (0..100).map(|_| {
        s.post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "shared", "permission": "read_write"}),
        )
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids = std::collections::HashSet::new();
    for (status, body, _) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {body}");
        ids.insert(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one request for 100 submissions");
    assert_eq!(answers.iter().filter(|a| a.0 == 202).count(), 1);
    let id = ids.into_iter().next().unwrap();
    assert_eq!(
        s.wait_count(&format!("tars.request.submitted.{id}"), 1)
            .await,
        1
    );
    assert_eq!(
        s.kbase.calls(),
        1,
        "a burst of one token costs one auth call"
    );
}

#[tokio::test]
async fn bad_bodies_get_json_errors_and_publish_nothing() {
    let s = Stack::start(Options::default()).await;
    let raw = |body: String| {
        s.http
            .post(format!("{}/requests", s.base))
            .bearer_auth(USER_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{not json".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error_type"],
        "malformed_json"
    );
    let r = raw(r#"{"tenant_name":"kbase","colour":"red"}"#.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let r = raw(format!(
        r#"{{"tenant_name":"kbase","justification":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], 413);
    for bad in [
        json!({"tenant_name": "Bad Name"}),
        json!({"tenant_name": "kbase", "permission": "admin"}),
        json!({"tenant_name": "kbase", "justification": "x".repeat(2001)}),
    ] {
        let (status, body, _) = s.post("/requests", Some(USER_TOKEN), bad).await;
        assert_eq!(status, 422, "{body}");
    }
    assert_eq!(s.nats.stream_len(EVENTS_STREAM).await, 0);
}

#[tokio::test]
async fn tokens_are_checked_and_never_echoed() {
    let s = Stack::start(Options::default()).await;
    let (status, body, _) = s
        .post("/requests", None, json!({"tenant_name": "kbase"}))
        .await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("Bearer"));
    let r = s
        .http
        .post(format!("{}/requests", s.base))
        .header("Authorization", "Basic c2VjcmV0LXRva2Vu")
        .json(&json!({"tenant_name": "kbase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains("c2VjcmV0LXRva2Vu"));
    let (status, body, _) = s
        .post(
            "/requests",
            Some("forged-token-123"),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains("forged-token-123"));

    // Auth down: 503 with Retry-After, not 500; and the outage is not cached.
    s.kbase.add_user("fresh-token", "dave", &[]);
    s.kbase.faults().fail_next(1, 503);
    let (status, _, headers) = s
        .post(
            "/requests",
            Some("fresh-token"),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());
    let (status, _, _) = s
        .post(
            "/requests",
            Some("fresh-token"),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn rate_and_open_limits_answer_429_with_retry_after() {
    let s = Stack::start(Options {
        submit_rate: 2,
        max_open: 3,
        ..Options::default()
    })
    .await;
    s.submit("t1", "read_only").await;
    s.submit("t2", "read_only").await;
    let (status, body, headers) = s
        .post("/requests", Some(USER_TOKEN), json!({"tenant_name": "t3"}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error_type"], "rate_limited");
    assert!(
        headers
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // A repeat of an open request is not limited.
    let (status, _, _) = s
        .post("/requests", Some(USER_TOKEN), json!({"tenant_name": "t1"}))
        .await;
    assert_eq!(status, 200);

    let s = Stack::start(Options {
        max_open: 2,
        ..Options::default()
    })
    .await;
    let t1 = s.submit("t1", "read_only").await;
    s.submit("t2", "read_only").await;
    let (status, body, _) = s
        .post("/requests", Some(USER_TOKEN), json!({"tenant_name": "t3"}))
        .await;
    assert_eq!(
        (status, body["error_type"].as_str().unwrap()),
        (429, "too_many_open_requests")
    );
    // A decided request no longer counts, though its open-index entry is dropped only
    // now, by the submission that would otherwise be refused.
    let (status, body, _) = s
        .post(
            &format!("/requests/{t1}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = s
        .post("/requests", Some(USER_TOKEN), json!({"tenant_name": "t3"}))
        .await;
    assert_eq!(status, 202, "{body}");
    // The decided request's slot names no open request any more.
    let (status, body, _) = s
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"requester": "alice", "tenant_name": "t2", "permission": "read_only"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body, _) = s
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"requester": "alice", "tenant_name": "t1", "permission": "read_only"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn admins_decide_over_rest_and_others_are_refused() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("kbase", "read_only").await;
    let (status, _, _) = s
        .post(
            "/approvals/approve",
            Some(USER_TOKEN),
            json!({"request_id": id}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s.get("/admin/dead-letters", Some(USER_TOKEN)).await;
    assert_eq!(status, 403);
    let (status, body, _) = s
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"request_id": "0190b3a4-0000-7000-8000-000000000000"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // The older body shape resolves the open request.
    let (status, body, _) = s
        .post("/approvals/approve", Some(ADMIN_TOKEN), json!({"requester": "alice", "tenant_name": "kbase", "permission": "read_only", "channel_id": "C1", "message_ts": "1.2"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        1
    );
    let (status, body) = s.get("/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["dead_letters"], json!([]));
}

#[tokio::test]
async fn the_requester_cancels_once() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("kbase", "read_only").await;
    let (status, _, _) = s
        .post(
            &format!("/requests/{id}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = s
        .post(
            &format!("/requests/{id}/cancel"),
            Some(USER_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(s.status_of(&id).await, "cancelled");
    // A new submission for the same tenant is a new request.
    let again = s.submit("kbase", "read_only").await;
    assert_ne!(again, id);
    let (status, list) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(list["requests"].as_array().unwrap().len(), 2);
    let (status, _) = s.get("/requests?requester=bob", Some(USER_TOKEN)).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn forged_stale_and_unsigned_slack_calls_are_rejected_and_publish_nothing() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("kbase", "read_only").await;
    let body = block_actions_body_in(
        "T1",
        CHANNEL,
        SLACK_APPROVER,
        "approve",
        &id,
        &s.slack.response_url(),
    );
    let forged = tars_testkit::standin::interact::SlackInteractor::new("wrong-secret", &s.base);
    assert_eq!(
        forged
            .send_signed(body.clone(), now(), None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.interactor
            .send_signed(body.clone(), now() - 301, None)
            .await
            .unwrap()
            .status(),
        401
    );
    let unsigned = s
        .http
        .post(format!("{}/slack/interact", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );

    // The real click decides once, however often Slack retries or someone replays it.
    assert_eq!(
        s.interactor
            .send_signed(body.clone(), now(), None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.interactor
            .send_signed(body.clone(), now(), Some(1))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.interactor
            .send_signed(body, now(), Some(2))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        1
    );

    // A Slack user who is not an approver changes nothing and is told why.
    let r = s
        .interactor
        .click("U_STRANGER", "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        1
    );
    crate::support::eventually(crate::support::LONG, "the ephemeral answer", || async {
        s.slack
            .responses()
            .iter()
            .any(|r| r["text"].as_str().unwrap_or("").contains("not an approver"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn kbase_token_mode_opens_a_modal_and_checks_the_token() {
    let s = Stack::start(Options {
        kbase_token_mode: true,
        ..Options::default()
    })
    .await;
    let id = s.submit("kbase", "read_only").await;
    // Slack slower than the 3 s budget: the click is still answered in time, and the
    // clicker is told to try again.
    s.slack
        .faults()
        .set_latency(std::time::Duration::from_secs(4));
    let started = std::time::Instant::now();
    let r = s
        .interactor
        .click("U_ANY", "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "answered within 3 s"
    );
    s.slack.faults().set_latency(std::time::Duration::ZERO);
    crate::support::eventually(crate::support::LONG, "the try-again answer", || async {
        s.slack
            .responses()
            .iter()
            .any(|r| r["text"].as_str().unwrap_or("").contains("try again"))
            .then_some(())
    })
    .await;
    let r = s
        .interactor
        .click("U_ANY", "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let opens = s
        .slack
        .calls()
        .iter()
        .filter(|(m, _)| m == "views.open")
        .count();
    assert_eq!(opens, 2, "views.open called for each click");
    assert_eq!(s.slack.views().len(), 1, "the slow one was abandoned");
    assert_eq!(s.slack.views()[0]["callback_id"], "tars_kbase_token");

    let r = s
        .interactor
        .submit_token_modal("U_ANY", &id, "approve", USER_TOKEN)
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["response_action"], "errors",
        "a non-admin token is refused in the modal"
    );
    assert!(
        body["errors"]["kbase_token"]
            .as_str()
            .unwrap()
            .contains("not an approver"),
        "{body}"
    );
    let r = s
        .interactor
        .submit_token_modal("U_ANY", &id, "approve", "nonsense")
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["response_action"],
        "errors"
    );
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );

    let r = s
        .interactor
        .submit_token_modal("U_ANY", &id, "approve", ADMIN_TOKEN)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        1
    );
    let mut events = s.nats.topology.js.get_stream(EVENTS_STREAM).await.unwrap();
    let msg = events
        .get_last_raw_message_by_subject(&format!("tars.decision.requested.{id}"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&msg.payload);
    assert!(text.contains("\"by\":\"bob\""), "{text}");
    assert!(!text.contains(ADMIN_TOKEN), "the token is never published");
    let _ = events.info().await;
}

#[tokio::test]
async fn probes_metrics_and_openapi_are_served() {
    let s = Stack::start(Options::default()).await;
    s.submit("kbase", "read_only").await;
    assert_eq!(s.get("/readyz", None).await.0, 200);
    assert_eq!(s.get("/livez", None).await.0, 200);
    let r = s
        .http
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("x-request-id").is_some(),
        "every answer carries a request id"
    );
    let (status, doc) = s.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/requests/"]["post"].is_object());
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "tars_http_requests_total{method=\"POST\",route=\"/requests/\",status=\"202\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("tars_external_requests_total{status=\"200\",target=\"kbase\"} 1"));
    // The relay in the ingress published the submission.
    crate::support::eventually(
        crate::support::LONG,
        "the relay's publish counted",
        || async {
            let m = s
                .http
                .get(format!("{}/metrics", s.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.contains("tars_events_published_total{type=\"request.submitted\"} 1")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_nats_outage_answers_503_with_retry_after_and_then_recovers() {
    let mut s = Stack::start(Options::default()).await;
    s.submit("before", "read_only").await;
    s.nats.server.stop();
    let (status, body, headers) = s
        .post(
            "/requests",
            Some(USER_TOKEN),
            json!({"tenant_name": "during"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(s.get("/readyz", None).await.0, 503);
    s.nats.server.start_again().unwrap();
    crate::support::eventually(
        crate::support::LONG,
        "submissions accepted again",
        || async {
            let (status, body, _) = s
                .post(
                    "/requests",
                    Some(USER_TOKEN),
                    json!({"tenant_name": "during"}),
                )
                .await;
            (status == 202 || status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(s.get("/readyz", None).await.0, 200);
}

#[tokio::test]
async fn users_without_a_required_role_are_refused() {
    let s = Stack::start(Options {
        required_roles: "CDM_USER",
        ..Options::default()
    })
    .await;
    let (status, body, _) = s
        .post(
            "/requests",
            Some(USER_TOKEN),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("CDM_USER"));
    s.kbase.add_user("member-token", "erin", &["CDM_USER"]);
    let (status, _, _) = s
        .post(
            "/requests",
            Some("member-token"),
            json!({"tenant_name": "kbase"}),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_duration_is_bounded_and_kept_on_the_record() {
    let s = Stack::start(Options::default()).await;
    for bad in ["0s", "91d", "soon"] {
        let (status, body, _) = s
            .post(
                "/requests",
                Some(USER_TOKEN),
                json!({"tenant_name": "kbase", "duration": bad}),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().starts_with("duration"));
    }
    let (status, body, _) = s
        .post(
            "/requests",
            Some(USER_TOKEN),
            json!({"tenant_name": "kbase", "duration": "30d"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, rec) = s
        .get(
            &format!("/requests/{}", body["request_id"].as_str().unwrap()),
            Some(USER_TOKEN),
        )
        .await;
    assert_eq!(rec["access_duration_secs"], 30 * 86_400);
}

#[tokio::test]
async fn nobody_decides_their_own_request() {
    let s = Stack::start(Options::default()).await;
    // bob is an admin and the Slack approver U_BOB.
    let (status, body, _) = s
        .post(
            "/requests",
            Some(ADMIN_TOKEN),
            json!({"tenant_name": "mine"}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["request_id"].as_str().unwrap().to_owned();
    let (status, body, _) = s
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"request_id": id}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let r = s
        .interactor
        .click(SLACK_APPROVER, "approve", &id, &s.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    crate::support::eventually(crate::support::LONG, "the clicker told why", || async {
        s.slack
            .responses()
            .iter()
            .any(|r| {
                r["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("your own request")
            })
            .then_some(())
    })
    .await;
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let s = Stack::start(Options::default()).await;
    let (_, doc) = s.get("/openapi.json", None).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15);
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "0190b3a4-0000-7000-8000-000000000000")
            .replace("{seq}", "999");
        for method in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s
                .http
                .request(m, format!("{}{concrete}", s.base))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(
                !(status == 404 && body["message"] == "route not found") && status != 405,
                "{method} {path} is documented but not served ({status})"
            );
        }
    }
    let (status, body) = s.get("/no/such/route", None).await;
    assert_eq!(
        (status, body["message"].as_str().unwrap()),
        (404, "route not found")
    );
}

#[tokio::test]
async fn listings_page_with_a_cursor() {
    let s = Stack::start(Options::default()).await;
    let mut ids = Vec::new();
    for t in ["p1", "p2", "p3"] {
        ids.push(s.submit(t, "read_only").await);
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/requests?limit=2&cursor={c}"),
            None => "/requests?limit=2".to_owned(),
        };
        let (status, page) = s.get(&path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{page}");
        for r in page["requests"].as_array().unwrap() {
            seen.push(r["request_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, pending) = s
        .get(
            "/requests?status=pending&requester=alice",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(pending["requests"].as_array().unwrap().len(), 3);
    let (status, _) = s.get("/requests?status=bogus", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn finding_4_request_ids_from_callers_are_short_tokens_or_replaced() {
    let s = Stack::start(Options::default()).await;
    let echoed = |id: String| {
        let req = s
            .http
            .get(format!("{}/health", s.base))
            .header("x-request-id", id);
        async move {
            let r = req.send().await.unwrap();
            r.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(echoed("trace-42.a_b:c".into()).await, "trace-42.a_b:c");
    for hostile in [
        "x".repeat(65),
        "a b".into(),
        "level=error msg=\"forged\"".into(),
        "id;drop".into(),
    ] {
        let got = echoed(hostile.clone()).await;
        assert_ne!(got, hostile);
        assert!(
            uuid::Uuid::parse_str(&got).is_ok(),
            "{hostile:?} replaced by {got:?}"
        );
    }
}

#[tokio::test]
async fn finding_5_odd_uuid_spellings_get_the_uniform_404() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("spelled", "read_only").await;
    let (status, plain) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert_eq!(status, 200, "{plain}");
    let (_, unknown) = s
        .get(
            "/requests/0190b3a4-0000-7000-8000-000000000000",
            Some(USER_TOKEN),
        )
        .await;
    for odd in [
        format!("urn:uuid:{id}"),
        format!("%7B{id}%7D"),
        id.replace('-', ""),
        id.to_ascii_uppercase(),
    ] {
        let (status, body) = s.get(&format!("/requests/{odd}"), Some(USER_TOKEN)).await;
        assert_eq!(status, 404, "{odd}: {body}");
        assert_eq!(body["error_type"], unknown["error_type"], "{odd}");
        assert_eq!(body["error"], unknown["error"], "{odd}");
    }
}

#[tokio::test]
async fn finding_2_a_flood_of_junk_tokens_neither_costs_repeat_calls_nor_evicts_users() {
    use tars_kbase::{AuthConfig, AuthError, KBaseAuth};
    let kbase = tars_testkit::standin::kbase::FakeKbase::start().await;
    kbase.add_user("good-token", "alice", &[]);
    let auth = KBaseAuth::new(
        reqwest::Client::new(),
        AuthConfig {
            url: kbase.url(),
            admin_roles: vec![],
            required_roles: vec![],
            ttl: std::time::Duration::from_secs(300),
            max_entries: 50,
        },
        tars_observability::metrics::Metrics::new(),
    );
    assert_eq!(
        auth.authenticate("good-token")
            .await
            .unwrap()
            .username
            .as_str(),
        "alice"
    );
    assert_eq!(kbase.calls(), 1);
    // Ten times the cache's size in distinct junk: each costs its one refusal...
    for i in 0..500 {
        assert_eq!(
            auth.authenticate(&format!("junk-{i}")).await,
            Err(AuthError::InvalidToken)
        );
    }
    assert_eq!(kbase.calls(), 501);
    // ...a junk token repeated costs nothing more...
    for _ in 0..20 {
        assert_eq!(
            auth.authenticate("junk-7").await,
            Err(AuthError::InvalidToken)
        );
    }
    assert_eq!(kbase.calls(), 501);
    // ...and the working user was never pushed out.
    assert!(auth.authenticate("good-token").await.is_ok());
    assert_eq!(
        kbase.calls(),
        501,
        "the valid user's answer is still cached"
    );
}

#[tokio::test]
async fn finding_1_unknown_tenants_are_refused_at_submit_and_outages_are_503() {
    let s = Stack::start(Options::default()).await;
    s.governance.allow_any_tenant(false);
    s.governance.add_tenant("known");
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "nosuch"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error_type"], "unknown_tenant");
    assert!(
        body["message"].as_str().unwrap().contains("nosuch"),
        "{body}"
    );
    // An outage is never taken as "the tenant exists".
    s.governance.faults().fail_next(1, 503);
    let (status, body, headers) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "known"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.get("retry-after").is_some());
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "known"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // Only the accepted request was stored.
    let (_, list) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(list["requests"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn finding_1_with_the_group_api_read_only_on_neu_is_refused_when_neuro_is_a_tenant() {
    let s = Stack::start(Options {
        governance_api: tars_governance_applier::Api::Groups,
        ..Options::default()
    })
    .await;
    s.governance.allow_any_tenant(false);
    s.governance.add_tenant("neu");
    s.governance.add_tenant("neuro");
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "neu", "permission": "read_only"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error_type"], "ambiguous_tenant");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("neu ") && message.contains("neuro"),
        "{message}"
    );
    // read_write on neu is group neu: unambiguous.
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "neu", "permission": "read_write"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn finding_8_clicks_from_another_workspace_or_channel_are_refused() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("origin", "read_only").await;
    let url = s.slack.response_url();
    for (team, channel) in [("T_OTHER", CHANNEL), ("T1", "C_ELSEWHERE")] {
        let body = block_actions_body_in(team, channel, SLACK_APPROVER, "approve", &id, &url);
        let r = s.interactor.send_signed(body, now(), None).await.unwrap();
        assert_eq!(r.status(), 403, "{team}/{channel}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error_type"], "forbidden", "{body}");
    }
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );
    // The same click from TARS's workspace and channel decides.
    let body = block_actions_body_in("T1", CHANNEL, SLACK_APPROVER, "approve", &id, &url);
    let r = s.interactor.send_signed(body, now(), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.wait_count(&format!("tars.decision.requested.{id}"), 1)
            .await,
        1
    );
}

#[tokio::test]
async fn finding_8_allowlisted_clicks_decide_nothing_once_the_approver_review_is_overdue() {
    let day = |d: time::OffsetDateTime| {
        d.format(time::macros::format_description!("[year]-[month]-[day]"))
            .unwrap()
    };
    let overdue = Stack::start(Options {
        approvers_reviewed: Some(day(
            time::OffsetDateTime::now_utc() - time::Duration::days(91)
        )),
        ..Options::default()
    })
    .await;
    let id = overdue.submit("review", "read_only").await;
    let r = overdue
        .interactor
        .click(
            SLACK_APPROVER,
            "approve",
            &id,
            &overdue.slack.response_url(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    crate::support::eventually(crate::support::LONG, "the clicker is told", || async {
        overdue
            .slack
            .responses()
            .iter()
            .any(|r| r["text"].as_str().unwrap_or("").contains("overdue"))
            .then_some(())
    })
    .await;
    assert_eq!(
        overdue
            .count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );
    // An admin still decides over REST.
    let (status, body, _) = overdue
        .post(
            "/approvals/approve",
            Some(ADMIN_TOKEN),
            json!({"request_id": id}),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");

    // Reviewed within the last 90 days: the same click decides.
    let fresh = Stack::start(Options {
        approvers_reviewed: Some(day(
            time::OffsetDateTime::now_utc() - time::Duration::days(89)
        )),
        ..Options::default()
    })
    .await;
    let id = fresh.submit("review", "read_only").await;
    let r = fresh
        .interactor
        .click(SLACK_APPROVER, "approve", &id, &fresh.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fresh
            .wait_count(&format!("tars.decision.requested.{id}"), 1)
            .await,
        1
    );
}

#[tokio::test]
async fn finding_9_the_token_modal_refuses_an_admins_own_request_in_the_modal() {
    let s = Stack::start(Options {
        kbase_token_mode: true,
        ..Options::default()
    })
    .await;
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(ADMIN_TOKEN),
            json!({"tenant_name": "mine"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap();
    let r = s
        .interactor
        .submit_token_modal("U_BOB", id, "approve", ADMIN_TOKEN)
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert_eq!(
        answer["errors"]["kbase_token"],
        "You may not decide your own request."
    );
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );
    assert_eq!(s.status_of(id).await, "pending");
}

#[tokio::test]
async fn finding_10_with_metrics_addr_set_metrics_leave_the_public_listener() {
    let s = Stack::start(Options {
        separate_metrics: true,
        ..Options::default()
    })
    .await;
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_type"], "not_found");
    let metrics_base = s.metrics_base.as_deref().unwrap();
    let text = reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tars_http_requests_total"), "{text}");
    let ready = reqwest::get(format!("{metrics_base}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Without METRICS_ADDR, as before: on the public listener.
    let plain = Stack::start(Options::default()).await;
    let r = plain
        .http
        .get(format!("{}/metrics", plain.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn finding_11_wrong_methods_bad_queries_and_unknown_dead_letters_get_the_json_error() {
    let s = Stack::start(Options::default()).await;
    for (method, path) in [
        (reqwest::Method::DELETE, "/requests"),
        (reqwest::Method::PUT, "/requests/"),
        (reqwest::Method::POST, "/admin/dead-letters"),
        (reqwest::Method::GET, "/approvals/approve"),
        (reqwest::Method::PATCH, "/slack/interact"),
        (reqwest::Method::POST, "/readyz"),
        (reqwest::Method::DELETE, "/metrics"),
    ] {
        let r = s
            .http
            .request(method.clone(), format!("{}{path}", s.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error_type"], "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert_eq!(body["error"], 405);
    }
    for query in ["limit=abc", "bogus=1", "cursor=not-an-id"] {
        let (status, body) = s.get(&format!("/requests?{query}"), Some(USER_TOKEN)).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    for seq in ["0", "999999", "abc", "18446744073709551615", "-1"] {
        let r = s
            .http
            .post(format!("{}/admin/dead-letters/{seq}/replay", s.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "replay {seq}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error_type"], "not_found", "{body}");
        let r = s
            .http
            .delete(format!("{}/admin/dead-letters/{seq}", s.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "discard {seq}");
    }
    // The document names the path parameters, so clients and fuzzers can fill them.
    let (_, doc) = s.get("/openapi.json", None).await;
    for (path, param) in [
        ("/requests/{id}", "id"),
        ("/requests/{id}/cancel", "id"),
        ("/admin/dead-letters/{seq}/replay", "seq"),
        ("/admin/dead-letters/{seq}", "seq"),
    ] {
        let params = doc["paths"][path]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}"));
        assert!(
            params
                .iter()
                .any(|p| p["name"] == param && p["in"] == "path" && p["required"] == true),
            "{path}: {params:?}"
        );
    }
}

#[tokio::test]
async fn finding_6_reads_are_limited_per_user() {
    let s = Stack::start(Options {
        read_rate: 5,
        ..Options::default()
    })
    .await;
    let id = s.submit("reads", "read_only").await;
    for i in 0..5 {
        let path = if i % 2 == 0 {
            "/requests".to_owned()
        } else {
            format!("/requests/{id}")
        };
        let (status, body) = s.get(&path, Some(USER_TOKEN)).await;
        assert_eq!(status, 200, "read {i}: {body}");
    }
    let r = s
        .http
        .get(format!("{}/requests/{id}", s.base))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Another user still reads.
    let (status, _) = s.get("/requests", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn finding_2_refused_tokens_are_limited_per_client_address_and_known_tokens_never() {
    let s = Stack::start(Options {
        failed_auth_rate: 3,
        ..Options::default()
    })
    .await;
    // alice's token is known (cached) before the flood starts.
    let (status, _) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(status, 200);
    for i in 0..3 {
        let (status, _) = s.get("/requests", Some(&format!("junk-{i}"))).await;
        assert_eq!(status, 401, "junk {i}");
    }
    let calls = s.kbase.calls();
    let r = s
        .http
        .get(format!("{}/requests", s.base))
        .bearer_auth("junk-more")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        s.kbase.calls(),
        calls,
        "a limited address costs no KBase call"
    );
    // The known token from the same address still works.
    let (status, _) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn finding_12_non_admins_are_refused_on_every_admin_route_and_404s_are_identical() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("edges", "read_only").await;
    let (status, body, _) = s
        .post(
            "/approvals/deny",
            Some(USER_TOKEN),
            json!({"request_id": id}),
        )
        .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body, _) = s
        .post("/admin/dead-letters/1/replay", Some(USER_TOKEN), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    let r = s
        .http
        .delete(format!("{}/admin/dead-letters/1", s.base))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        s.count_subject(&format!("tars.decision.requested.{id}"))
            .await,
        0
    );
    assert_eq!(s.status_of(&id).await, "pending");

    // Someone else's request and one that does not exist answer byte for byte alike,
    // once the id itself is taken out.
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(ADMIN_TOKEN),
            json!({"tenant_name": "bobs"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let bobs = body["request_id"].as_str().unwrap().to_owned();
    let unknown = "0190b3a4-0000-7000-8000-000000000000";
    for path in ["/requests/{}", "/requests/{}/cancel"] {
        let answer = |rid: &str| {
            let url = format!("{}{}", s.base, path.replace("{}", rid));
            let req = if path.ends_with("cancel") {
                s.http.post(url).json(&json!({}))
            } else {
                s.http.get(url)
            };
            let rid = rid.to_owned();
            async move {
                let r = req.bearer_auth(USER_TOKEN).send().await.unwrap();
                let status = r.status();
                (status, r.text().await.unwrap().replace(&rid, "<id>"))
            }
        };
        let (theirs, none) = (answer(&bobs).await, answer(unknown).await);
        assert_eq!(theirs.0, 404, "{path}: {}", theirs.1);
        assert_eq!(theirs, none, "{path}");
    }
}
