//! The Block Kit message that shows one request, rendered from its current record.
//!
//! Rendering only from the record (never from the event that triggered it) is what lets
//! out-of-order or repeated events converge on the right message.

use serde_json::{Value, json};

use tars_domain::{RequestRecord, RequestStatus};

/// `action_id` of the Approve button.
pub const APPROVE_ACTION: &str = "approve";
/// `action_id` of the Deny button.
pub const DENY_ACTION: &str = "deny";
/// `action_id` of the Revoke button on an applied grant's message.
pub const REVOKE_ACTION: &str = "revoke";
/// Longest text put in one section (Slack's limit is 3,000 characters).
const MAX_SECTION: usize = 2_900;

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

pub(crate) fn when(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The outcome line shown once a request is no longer pending.
pub fn outcome_line(r: &RequestRecord) -> String {
    let by = r.decided_by.as_deref().map(escape).unwrap_or_default();
    let at = r.decided_at.map(when).unwrap_or_default();
    match r.status {
        RequestStatus::Pending => "⏳ Waiting for an approver".into(),
        RequestStatus::Approved => format!("✅ Approved by {by} at {at}; applying…"),
        RequestStatus::Applied => format!(
            "✅ Approved by {by} at {at}; access granted at {}{}",
            r.applied_at.map(when).unwrap_or_default(),
            r.access_expires_at
                .map(|t| format!("; it ends at {}", when(t)))
                .unwrap_or_else(|| "; it does not end on its own".into())
        ),
        RequestStatus::Denied => format!("❌ Denied by {by} at {at}"),
        RequestStatus::Cancelled => format!("🚫 Cancelled by the requester at {at}"),
        RequestStatus::Expired => format!("⌛ Expired unanswered at {at}"),
        RequestStatus::Failed => format!(
            "⚠️ Approved by {by} but applying failed: {}",
            escape(&truncate(
                r.failure_reason.as_deref().unwrap_or("unknown error"),
                500
            ))
        ),
        RequestStatus::Revoking => format!("🔓 Removing access ({})…", ended_why(r)),
        RequestStatus::Revoked => format!(
            "🔒 Access removed at {} ({})",
            when(r.revoked_at.unwrap_or(r.updated_at)),
            ended_why(r)
        ),
    }
}

/// "1 of 2 approvals: alice_pi" for a request that needs several.
pub fn approvals_line(r: &RequestRecord) -> String {
    let names: Vec<String> = r.approvals.iter().map(|a| escape(&a.by)).collect();
    let mut line = format!(
        "{} of {} approvals",
        r.approvals.len(),
        r.approvals_required
    );
    if !names.is_empty() {
        line.push_str(": ");
        line.push_str(&names.join(", "));
    }
    line
}

/// Why access ended: its time ran out, or who revoked it and their words.
pub(crate) fn ended_why(r: &RequestRecord) -> String {
    let reason = r.revoked_reason.as_deref().unwrap_or("revoked");
    match r.revoked_by.as_deref() {
        None | Some(tars_domain::machine::SYSTEM_ACTOR)
            if reason == tars_domain::machine::EXPIRED_REASON =>
        {
            "its time ran out".into()
        }
        by => format!(
            "revoked by {}: {}",
            escape(by.unwrap_or("TARS")),
            escape(&truncate(reason, 300))
        ),
    }
}

/// What approving `r` changes in the governance API, spelled exactly.
pub fn membership_line(r: &RequestRecord) -> String {
    format!(
        "*On approval:* `{}` joins tenant `{}` with {} access (governance group `{}`)",
        escape(r.requester.as_str()),
        escape(r.tenant_name.as_str()),
        r.permission,
        r.permission.group_for(&r.tenant_name)
    )
}

/// The message text (notification fallback) and blocks for `r`.
pub fn render(r: &RequestRecord) -> (String, Value) {
    render_mentioning(r, &[])
}

/// [`render`], naming the Slack users in `approvers` (`<@U…>`) while the request waits:
/// the tenant's stewards whose e-mail maps to a Slack user.
pub fn render_mentioning(r: &RequestRecord, approvers: &[String]) -> (String, Value) {
    let text = format!(
        "Access request {}: {} asks for {} on {} ({})",
        r.request_id, r.requester, r.permission, r.tenant_name, r.status
    );
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("Access request: {} ({})", r.tenant_name, r.permission), 150)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Requester:*\n{}", escape(r.requester.as_str()))},
            {"type": "mrkdwn", "text": format!("*Tenant:*\n{}", escape(r.tenant_name.as_str()))},
            {"type": "mrkdwn", "text": format!("*Permission:*\n{}", r.permission)},
            {"type": "mrkdwn", "text": format!("*Requested:*\n{}", when(r.created_at))},
            {"type": "mrkdwn", "text": format!("*For:*\n{}", r.access_duration_secs
                .map(|s| tars_domain::duration::format_duration(std::time::Duration::from_secs(s)))
                .unwrap_or_else(|| "no end date".into()))},
        ]}),
    ];
    // The exact membership an approval changes, so an approver sees what they grant.
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": membership_line(r)}}));
    if let Some(j) = &r.justification {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": truncate(&format!("*Justification:*\n{}", escape(j.as_str())), MAX_SECTION)}}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("Request `{}`", r.request_id)}]}));
    if r.status == RequestStatus::Pending && !approvers.is_empty() {
        let named: Vec<String> = approvers
            .iter()
            .map(|u| format!("<@{}>", escape(u)))
            .collect();
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("Approvers: {}", named.join(" "))}]}));
    }
    if r.status == RequestStatus::Pending && r.approvals_required > 1 {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": approvals_line(r)}]}),
        );
    }
    if r.status == RequestStatus::Pending {
        blocks.push(
            json!({"type": "actions", "block_id": "decision", "elements": [
                {"type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": r.request_id.as_str()},
                {"type": "button", "action_id": DENY_ACTION, "style": "danger",
                 "text": {"type": "plain_text", "text": "Deny"}, "value": r.request_id.as_str()},
            ]}),
        );
    } else {
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": outcome_line(r)}}));
    }
    if r.status == RequestStatus::Applied {
        blocks.push(json!({"type": "actions", "block_id": "revocation", "elements": [
            {"type": "button", "action_id": REVOKE_ACTION, "style": "danger",
             "text": {"type": "plain_text", "text": "Revoke"}, "value": r.request_id.as_str(),
             "confirm": {"title": {"type": "plain_text", "text": "Revoke this access?"},
                "text": {"type": "mrkdwn", "text": format!("`{}` loses {} access to `{}` now.",
                    escape(r.requester.as_str()), r.permission, escape(r.tenant_name.as_str()))},
                "confirm": {"type": "plain_text", "text": "Revoke"},
                "deny": {"type": "plain_text", "text": "Keep"}}},
        ]}));
    }
    (text, Value::Array(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tars_domain::*;

    fn record() -> RequestRecord {
        RequestRecord::new_pending(
            RequestId::new(),
            Username::parse("alice").unwrap(),
            TenantName::parse("kbase").unwrap(),
            Permission::ReadWrite,
            Justification::parse(&format!("<script>&{}", "x".repeat(1990))).unwrap(),
            now(),
        )
    }

    #[test]
    fn pending_messages_carry_buttons_whose_value_is_only_the_id() {
        let r = record();
        let (_, blocks) = render(&r);
        let s = blocks.to_string();
        assert!(s.contains("&lt;script&gt;&amp;"));
        assert!(!s.contains("<script>"));
        let actions = blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap();
        for b in actions["elements"].as_array().unwrap() {
            assert_eq!(b["value"], r.request_id.as_str());
        }
        for b in blocks.as_array().unwrap() {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000);
            }
        }
    }

    #[test]
    fn decided_messages_show_who_and_no_buttons() {
        let mut r = record();
        r.status = RequestStatus::Failed;
        r.decided_by = Some("bob".into());
        r.failure_reason = Some("group not found".into());
        let (_, blocks) = render(&r);
        let s = blocks.to_string();
        assert!(!s.contains("\"actions\""));
        assert!(s.contains("bob") && s.contains("group not found"));
    }

    #[test]
    fn finding_1_the_message_names_the_exact_membership() {
        let r = RequestRecord::new_pending(
            RequestId::new(),
            Username::parse("alice").unwrap(),
            TenantName::parse("neu").unwrap(),
            Permission::ReadOnly,
            None,
            now(),
        );
        let (_, blocks) = render(&r);
        let text = blocks.to_string();
        assert!(
            text.contains(
                "`alice` joins tenant `neu` with read_only access (governance group `neuro`)"
            ),
            "{text}"
        );
    }
}
