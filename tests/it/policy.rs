//! The approval policy (`APPROVAL_POLICY`): N-of-M distinct approvers, a deny by any,
//! stewards as approvers of their own tenant only, auto-approval with no human, a tenant's
//! own Slack channel and durations, and a bad file refused with its line.

use std::time::Duration;

use serde_json::{Value, json};

use crate::pipeline::{message_for, wait_message};
use crate::stack::*;
use crate::support::eventually;

const POLICY: &str = r#"
[defaults]
approvers = ["role:CDM_JUPYTERHUB_ADMIN", "stewards"]
default_duration = "30d"

[tenants.genomics]
approvers = ["bob", "carol"]
approvals = { read_write = 2 }
slack_channel = "C0GENOMICS"
max_duration = "14d"

[tenants.public-data]
auto_approve = ["read_only"]
"#;

async fn with_policy(text: &'static str) -> Stack {
    Stack::start(Options {
        workers: true,
        policy: Some(text),
        ..Options::default()
    })
    .await
}

async fn submit(s: &Stack, tenant: &str, permission: &str) -> Value {
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": tenant, "permission": permission}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body
}

async fn decide(s: &Stack, token: &str, verb: &str, id: &str) -> (u16, Value) {
    let (status, body, _) = s
        .post(
            &format!("/approvals/{verb}"),
            Some(token),
            json!({"request_id": id}),
        )
        .await;
    (status, body)
}

async fn record(s: &Stack, id: &str) -> Value {
    s.get(&format!("/requests/{id}"), Some(ADMIN_TOKEN)).await.1
}

#[tokio::test]
async fn two_distinct_approvers_are_needed_and_the_same_one_twice_counts_once() {
    let s = with_policy(POLICY).await;
    let id = submit(&s, "genomics", "read_write").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = decide(&s, ADMIN_TOKEN, "approve", &id).await;
    assert_eq!(status, 202, "{body}");
    eventually(
        Duration::from_secs(30),
        "bob's approval recorded",
        || async {
            let rec = record(&s, &id).await;
            (rec["approvals"].as_array().map(Vec::len) == Some(1)).then_some(rec)
        },
    )
    .await;
    assert_eq!(s.status_of(&id).await, "pending");
    let msg = wait_message(&s, &id, "1 of 2 approvals: bob").await;
    assert_eq!(msg.channel, OTHER_CHANNEL, "the tenant's own channel");
    assert!(msg.blocks.to_string().contains(r#""action_id":"approve""#));

    // Bob again: counted once, and told so.
    let (status, body) = decide(&s, ADMIN_TOKEN, "approve", &id).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("counted already"),
        "{body}"
    );
    // An admin the tenant does not name may not decide it.
    s.kbase
        .add_user("token-erin", "erin", &["CDM_JUPYTERHUB_ADMIN"]);
    let (status, body) = decide(&s, "token-erin", "approve", &id).await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = decide(&s, ADMIN2_TOKEN, "approve", &id).await;
    assert_eq!(status, 202, "{body}");
    wait_status(&s, &id, "applied").await;
    let rec = record(&s, &id).await;
    let by: Vec<&str> = rec["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["bob", "carol"]);
    assert_eq!(rec["decided_by"], "carol");
    assert_eq!(
        s.governance.members_of("genomics"),
        vec![("alice".to_owned(), "read_write".to_owned())]
    );
}

#[tokio::test]
async fn a_deny_by_any_approver_ends_a_partly_approved_request() {
    let s = with_policy(POLICY).await;
    let id = submit(&s, "genomics", "read_write").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(decide(&s, ADMIN_TOKEN, "approve", &id).await.0, 202);
    eventually(Duration::from_secs(30), "one approval", || async {
        (record(&s, &id).await["approvals"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    assert_eq!(decide(&s, ADMIN2_TOKEN, "deny", &id).await.0, 202);
    wait_status(&s, &id, "denied").await;
    assert_eq!(record(&s, &id).await["decided_by"], "carol");
    assert!(s.governance.members_of("genomics").is_empty());
}

#[tokio::test]
async fn a_steward_approves_their_own_tenant_and_no_other() {
    let s = with_policy(POLICY).await;
    s.governance.add_steward("tenant-a", "dave", "dave@lab.org");
    s.governance
        .add_steward("tenant-a", "erin", "erin@elsewhere.org");
    s.governance.add_tenant("tenant-b");
    s.kbase.add_user("token-dave", "dave", &[]);
    // dave's e-mail is a Slack user, erin's is not.
    s.slack.add_user("dave@lab.org", "U_DAVE");
    let a = submit(&s, "tenant-a", "read_only").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = submit(&s, "tenant-b", "read_only").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The stewards Slack knows are mentioned in the approval message.
    let msg = wait_message(&s, &a, "Approvers: <@U_DAVE>").await;
    assert!(!msg.blocks.to_string().contains("erin"), "{}", msg.blocks);
    let (status, body) = decide(&s, "token-dave", "approve", &b).await;
    assert_eq!(status, 403, "not a steward of tenant-b: {body}");
    // Nor does an unknown id tell a non-approver anything.
    let (status, _) = decide(
        &s,
        "token-dave",
        "approve",
        "0190b3a4-0000-7000-8000-000000000000",
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = decide(&s, "token-dave", "approve", &a).await;
    assert_eq!(status, 202, "{body}");
    wait_status(&s, &a, "applied").await;
    assert_eq!(record(&s, &a).await["decided_by"], "dave");
    let msg = wait_message(&s, &a, "access granted").await;
    assert!(
        !msg.blocks.to_string().contains("Approvers:"),
        "{}",
        msg.blocks
    );
    assert_eq!(s.status_of(&b).await, "pending");
    // An allowlisted Slack approver counts as holding the admin roles the policy names.
    let r = s
        .interactor
        .click(SLACK_APPROVER, "approve", &b, &s.slack.response_url())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_status(&s, &b, "applied").await;
    assert_eq!(record(&s, &b).await["decided_by"], "bob");
}

#[tokio::test]
async fn auto_approval_needs_no_human_and_is_still_posted_and_audited() {
    let s = with_policy(POLICY).await;
    let answer = submit(&s, "public-data", "read_only").await;
    assert_eq!(answer["status"], "approved", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("approval policy"),
        "{answer}"
    );
    let id = answer["request_id"].as_str().unwrap().to_owned();
    wait_status(&s, &id, "applied").await;
    let msg = wait_message(&s, &id, "access granted").await;
    let blocks = msg.blocks.to_string();
    assert!(blocks.contains("Approved by policy"), "{blocks}");
    assert!(
        !blocks.contains(r#""action_id":"approve""#),
        "no buttons: {blocks}"
    );
    let rec = record(&s, &id).await;
    assert_eq!(rec["decided_by"], "policy");
    let approved = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["type"] == "request.approved")
        .cloned()
        .unwrap();
    assert_eq!(approved["actor"], "policy");
    // read_write on the same tenant still needs a human.
    let rw = submit(&s, "public-data", "read_write").await;
    assert_eq!(rw["status"], "pending");
}

#[tokio::test]
async fn durations_follow_the_tenants_maximum_and_default() {
    let s = with_policy(POLICY).await;
    let (status, body, _) = s
        .post(
            "/requests/",
            Some(USER_TOKEN),
            json!({"tenant_name": "genomics", "duration": "30d"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("14d"), "{body}");
    let id = submit(&s, "genomics", "read_only").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        record(&s, &id).await["access_duration_secs"],
        14 * 86_400,
        "genomics caps the 30d default at its 14d maximum"
    );
    let other = submit(&s, "elsewhere", "read_only").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        record(&s, &other).await["access_duration_secs"],
        30 * 86_400
    );
    assert!(message_for(&s, &other).is_none_or(|m| m.channel == CHANNEL));
}

#[tokio::test]
async fn a_bad_policy_file_stops_the_ingress_with_its_line() {
    let dir = tars_testkit::nats_server::temp_dir("tars-bad-policy");
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        "[defaults]\napprovers = [\"bob\"]\napprovals = { read_write = 0 }\n",
    )
    .unwrap();
    let e = tars_ingress::load_policy(&path).unwrap_err().to_string();
    assert!(e.contains("APPROVAL_POLICY"), "{e}");
    assert!(e.contains(&format!("{}:3:", path.display())), "{e}");
    assert!(e.contains("at least 1"), "{e}");
}
