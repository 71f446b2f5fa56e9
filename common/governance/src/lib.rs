//! The governance API (minio_manager_service): add a user to a group.
//!
//! The answer decides the message's fate: 2xx or "already a member" is success; 5xx,
//! 429, timeouts and connection errors are transient (the message is retried with
//! backoff by JetStream redelivery, not in process); any other 4xx is permanent and its
//! `detail`/`message` is kept as the failure reason.

use std::time::Duration;

use tars_domain::Username;
use tars_observability::metrics::Metrics;

/// Why the call did not grant access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    /// Trying again may work.
    #[error("governance API unavailable: {0}")]
    Transient(String),
    /// The API refused; retrying will not help.
    #[error("governance API refused: {0}")]
    Permanent(String),
}

/// The governance API client; cheap to clone.
#[derive(Clone)]
pub struct GovernanceClient {
    http: reqwest::Client,
    base: String,
    token: String,
    metrics: Metrics,
}

fn reason_from(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    for key in ["detail", "message", "error"] {
        match &v[key] {
            serde_json::Value::String(s) => return s.clone(),
            serde_json::Value::Null => {}
            other => return other.to_string(),
        }
    }
    body.chars().take(300).collect()
}

impl GovernanceClient {
    /// A client for `base` with the service `token`.
    pub fn new(http: reqwest::Client, base: &str, token: &str, metrics: Metrics) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            metrics,
        }
    }

    /// `POST /management/groups/{group}/members/{user}`.
    pub async fn add_member(&self, group: &str, user: &Username) -> Result<(), GovernanceError> {
        let url = format!("{}/management/groups/{group}/members/{user}", self.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let kind = self.metrics.transport_failure("governance", e.is_timeout());
                return Err(GovernanceError::Transient(format!("{kind}: {e}")));
            }
        };
        let status = resp.status();
        self.metrics.external("governance", status.as_str());
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let reason = reason_from(&body);
        if reason.to_ascii_lowercase().contains("already a member") {
            return Ok(());
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(GovernanceError::Transient(format!(
                "HTTP {status}: {reason}"
            )))
        } else {
            Err(GovernanceError::Permanent(format!(
                "HTTP {}: {reason}",
                status.as_u16()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_detail_or_message() {
        assert_eq!(
            reason_from(r#"{"detail":"Invalid token"}"#),
            "Invalid token"
        );
        assert_eq!(
            reason_from(r#"{"error_type":"X","message":"Group 'a' not found"}"#),
            "Group 'a' not found"
        );
        assert_eq!(reason_from("plain"), "plain");
    }
}
