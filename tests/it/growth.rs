//! Cost that does not grow with history: with 50,000 finished requests stored, the calls
//! a user makes and the expiry sweep read exactly what they read with 1,000.

use std::time::Duration;

use tars_observability::metrics::Metrics;
use tars_tests::{seed_finished, seed_finished_by};

use crate::stack::{Options, Stack, USER_TOKEN};

/// Store reads by kind, as counted in `metrics`.
fn reads(metrics: &Metrics) -> [u64; 3] {
    ["record", "index_entry", "event"].map(|k| metrics.store_reads.with_label_values(&[k]).get())
}

/// The reads one call made.
fn delta(before: [u64; 3], after: [u64; 3]) -> [u64; 3] {
    [0, 1, 2].map(|i| after[i] - before[i])
}

/// Reads made by: alice listing her requests, alice reading her one request, one sweep.
async fn reads_per_call(
    s: &Stack,
    sweeper: &tars_decision::Worker,
    sweep: &Metrics,
    id: &str,
) -> [[u64; 3]; 3] {
    let m = &s.ingress_metrics;
    let before = reads(m);
    let (status, list) = s.get("/requests", Some(USER_TOKEN)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["requests"].as_array().unwrap().len(), 1, "{list}");
    let listing = delta(before, reads(m));
    let before = reads(m);
    let (status, one) = s.get(&format!("/requests/{id}"), Some(USER_TOKEN)).await;
    assert_eq!(status, 200, "{one}");
    let reading = delta(before, reads(m));
    let before = reads(sweep);
    assert_eq!(sweeper.expire_stale(tars_domain::now()).await.unwrap(), 0);
    let sweeping = delta(before, reads(sweep));
    [listing, reading, sweeping]
}

#[tokio::test]
async fn calls_and_sweeps_read_the_same_with_50_000_finished_requests_as_with_1_000() {
    let s = Stack::start(Options::default()).await;
    let id = s.submit("flat", "read_only").await;
    let (sweeper, sweep_metrics) = s.sweeper().await;
    let js = &s.nats.topology.js;
    seed_finished(js, "old", 1_000).await;
    let small = reads_per_call(&s, &sweeper, &sweep_metrics, &id).await;
    seed_finished(js, "older", 49_000).await;
    let large = reads_per_call(&s, &sweeper, &sweep_metrics, &id).await;
    assert_eq!(
        small, large,
        "reads per call [record, index_entry, event] for [list, get, sweep]"
    );
    // And they are few: one index entry and one record to list, one record and the
    // request's own event to read it, one index entry (alice's pending request) to sweep.
    assert_eq!(small, [[1, 1, 0], [1, 0, 1], [0, 1, 0]]);
}

#[tokio::test]
async fn finished_requests_are_removed_after_the_retention_and_their_events_stay() {
    let s = Stack::start(Options::default()).await;
    let kept = s.submit("kept", "read_only").await;
    let done = s.submit("done", "read_only").await;
    let legacy = s.submit("legacy", "read_only").await;
    for id in [&done, &legacy] {
        let (status, body, _) = s
            .post(
                &format!("/requests/{id}/cancel"),
                Some(USER_TOKEN),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // `legacy` gets the index keys of the layout before status keys named the requester
    // (`u.<user>.<id>`, `s.<status>.<id>`), as a bucket written by an older TARS holds.
    let kv = &s.nats.topology.requests;
    kv.purge(format!("s.cancelled.alice.{legacy}"))
        .await
        .unwrap();
    kv.put(format!("u.alice.{legacy}"), Default::default())
        .await
        .unwrap();
    kv.put(format!("s.cancelled.{legacy}"), Default::default())
        .await
        .unwrap();
    let listed = |path: &'static str, token: &'static str| {
        let s = &s;
        async move {
            let (status, list) = s.get(path, Some(token)).await;
            assert_eq!(status, 200, "{list}");
            let mut ids: Vec<String> = list["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["request_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut all = vec![kept.clone(), done.clone(), legacy.clone()];
    all.sort();
    assert_eq!(listed("/requests", USER_TOKEN).await, all);
    let mut cancelled = vec![done.clone(), legacy.clone()];
    cancelled.sort();
    assert_eq!(
        listed("/requests?status=cancelled", crate::stack::ADMIN_TOKEN).await,
        cancelled
    );
    let (sweeper, metrics) = s.sweeper().await;
    let retention = Duration::from_secs(400 * 86_400);
    let day = Duration::from_secs(86_400);
    let now = tars_domain::now();
    // The oldest pending request's age is exported by the sweep.
    sweeper.expire_stale(now).await.unwrap();
    let age = metrics.oldest_pending_request.get();
    assert!((0.0..600.0).contains(&age), "oldest pending age {age}");
    // A day short of the retention: nothing goes.
    assert_eq!(
        sweeper
            .retire(now + retention - day, retention)
            .await
            .unwrap(),
        0
    );
    let (status, _) = s.get(&format!("/requests/{done}"), Some(USER_TOKEN)).await;
    assert_eq!(status, 200);
    // Past it: the cancelled request goes, the pending one stays.
    assert_eq!(
        sweeper
            .retire(now + retention + day, retention)
            .await
            .unwrap(),
        2
    );
    let (status, _) = s.get(&format!("/requests/{done}"), Some(USER_TOKEN)).await;
    assert_eq!(status, 404);
    let (_, list) = s.get("/requests", Some(USER_TOKEN)).await;
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.as_str()]);
    for key in [
        format!("s.cancelled.alice.{done}"),
        format!("u.alice.{legacy}"),
        format!("s.cancelled.{legacy}"),
    ] {
        assert!(kv.get(&key).await.unwrap().is_none(), "{key} left behind");
    }
    // A second sweep finds nothing more to do.
    assert_eq!(
        sweeper
            .retire(now + retention + day, retention)
            .await
            .unwrap(),
        0
    );
    // The audit stream still holds the removed request's events.
    assert_eq!(
        s.wait_count(&format!("tars.request.cancelled.{done}"), 1)
            .await,
        1
    );
}

#[tokio::test]
async fn a_user_with_more_requests_than_one_direct_read_answers_pages_through_all() {
    let s = Stack::start(Options::default()).await;
    // Past the 1,024 subjects one `multi_last` answers: the listing falls back to paging.
    seed_finished_by(&s.nats.topology.js, 1_100, |_| "alice".into()).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/requests?limit=500&cursor={c}"),
            None => "/requests?limit=500".to_owned(),
        };
        let (status, page) = s.get(&path, Some(USER_TOKEN)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["request_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1_100);
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    newest_first.dedup();
    assert_eq!(seen, newest_first, "each once, newest first");
}
