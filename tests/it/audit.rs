//! `GET /audit`: admins read the audit stream by tenant, actor, requester, type and time,
//! page by page without gaps or repeats, or as NDJSON; everybody else is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::stack::*;
use crate::support::eventually;

async fn audit(s: &Stack, query: &str) -> (u16, Value) {
    s.get(&format!("/audit{query}"), Some(ADMIN_TOKEN)).await
}

fn events(v: &Value) -> Vec<Value> {
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Every event matching `query`, following `next` with pages of `limit`.
async fn all_pages(s: &Stack, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..1_000 {
        let sep = if query.is_empty() { "?" } else { "&" };
        let q = match cursor {
            Some(c) => format!("{query}{sep}limit={limit}&cursor={c}"),
            None => format!("{query}{sep}limit={limit}"),
        };
        let (status, page) = audit(s, &q).await;
        assert_eq!(status, 200, "{page}");
        let got = events(&page);
        assert!(got.len() <= limit, "{page}");
        out.extend(got);
        match page["next"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("the audit never ended");
}

#[tokio::test]
async fn admins_read_the_audit_by_filter_and_page_and_others_are_refused() {
    let s = Stack::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    s.kbase.add_user("token-dave", "dave", &[]);
    let a = s.submit("alpha", "read_only").await;
    let b = s.submit("beta", "read_only").await;
    let (status, body, _) = s
        .post(
            "/requests/",
            Some("token-dave"),
            json!({"tenant_name": "alpha"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let d = body["request_id"].as_str().unwrap().to_owned();
    s.approve(&a).await;
    let (status, _, _) = s
        .post(
            "/approvals/deny",
            Some(ADMIN_TOKEN),
            json!({"request_id": b}),
        )
        .await;
    assert_eq!(status, 202);
    wait_status(&s, &a, "applied").await;
    wait_status(&s, &b, "denied").await;
    // 3 submitted, 2 decision requests, approved, applied, denied.
    let everything = eventually(Duration::from_secs(30), "eight events", || async {
        let all = all_pages(&s, "", 500).await;
        (all.len() == 8).then_some(all)
    })
    .await;

    // Pages of two give the same events, each once, in stream order.
    let paged = all_pages(&s, "", 2).await;
    assert_eq!(paged, everything);
    let seqs: Vec<u64> = paged.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let ids = |v: &[Value]| -> BTreeSet<String> {
        v.iter()
            .map(|e| e["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let alpha = all_pages(&s, "?tenant=alpha", 2).await;
    assert_eq!(ids(&alpha), BTreeSet::from([a.clone(), d.clone()]));
    let types: Vec<&str> = alpha.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"request.applied"), "{types:?}");
    let daves = all_pages(&s, "?requester=dave", 10).await;
    assert_eq!(ids(&daves), BTreeSet::from([d.clone()]));
    let approved = all_pages(&s, "?type=request.approved", 10).await;
    assert_eq!(ids(&approved), BTreeSet::from([a.clone()]));
    assert!(approved.iter().all(|e| e["actor"] == "bob"));
    let by_bob = all_pages(&s, "?actor=bob", 10).await;
    assert_eq!(
        by_bob.len(),
        4,
        "two decision requests, the approval and the denial"
    );
    let of_b = all_pages(&s, &format!("?request_id={b}"), 10).await;
    assert_eq!(ids(&of_b), BTreeSet::from([b.clone()]));
    assert_eq!(of_b.len(), 3, "{of_b:?}");

    // Time windows: nothing before the first event, nothing after the last.
    let last_at = everything.last().unwrap()["at"]
        .as_str()
        .unwrap()
        .to_owned();
    let late =
        time::OffsetDateTime::parse(&last_at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            + time::Duration::seconds(1);
    let late = late
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        all_pages(&s, &format!("?since={late}"), 10)
            .await
            .is_empty()
    );
    assert_eq!(all_pages(&s, &format!("?until={late}"), 10).await.len(), 8);

    // NDJSON: the same events, one per line.
    let text = s
        .http
        .get(format!("{}/audit?tenant=alpha", s.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, alpha);

    // Refusals.
    let (status, _) = s.get("/audit", Some(USER_TOKEN)).await;
    assert_eq!(status, 403);
    for bad in [
        "?type=request.teleported",
        "?since=yesterday",
        "?colour=red",
        "?limit=0",
        "?limit=501",
        "?cursor=0",
    ] {
        let (status, body) = audit(&s, bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
}
