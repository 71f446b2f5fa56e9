//! The governance API (minio_manager_service): who is a member of a tenant, and making them
//! one.
//!
//! Two membership APIs exist (`GOVERNANCE_API`):
//! - [`Api::Tenants`] (the default): `GET /tenants/{tenant}` lists members with their access
//!   level (and the stewards); `POST /tenants/{tenant}/members/{user}?permission=…` adds.
//!   Unambiguous, and readable, so a grant is *read, then add only if needed*: a retry
//!   after a crash that came after the add finds the member and adds nothing, and a
//!   read_only request from a read_write member is satisfied without a call (never a
//!   demotion).
//! - [`Api::Groups`] (the older API): `POST /management/groups/{group}/members/{user}`,
//!   group = tenant (read_write) or tenant + `ro` (read_only). It cannot be read per
//!   group, so a retried add relies on "already a member" being success. (The tenant read
//!   is still used to check tenants at submit.)
//!
//! Answers are classified once, here: 2xx or "already a member" is success; 5xx, 429,
//! 408, timeouts and connection errors are transient (the message is retried later);
//! any other 4xx is permanent and its `detail`/`message` is kept as the failure reason.
//!
//! Each call runs in a span of its own (`call`, peer `governance`) and sends a W3C
//! `traceparent`, so the governance service can continue the request's trace.

pub mod config;

use std::time::Duration;

use serde::Deserialize;
use tars_domain::{Permission, TenantName, Username};
use tars_observability::metrics::Metrics;
use tars_observability::trace;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which membership API the governance service is spoken to with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/tenants/{tenant}/…`: readable and unambiguous.
    Tenants,
    /// `/management/groups/{group}/…`: the older group API.
    Groups,
}

impl std::str::FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tenants" => Ok(Self::Tenants),
            "groups" => Ok(Self::Groups),
            other => Err(format!("{other:?} is not \"tenants\" or \"groups\"")),
        }
    }
}

/// Why the call did not grant access. The text is operator detail (for logs and the dead
/// letter): it may quote the service's answer, so users are shown [`Self::user_reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    /// Trying again may work.
    #[error("governance API unavailable: {0}")]
    Transient(String),
    /// The API refused; retrying will not help.
    #[error("governance API refused: {detail}")]
    Permanent {
        /// The HTTP status it answered, if the refusal came from an answer.
        status: Option<u16>,
        /// What it said, for operators.
        detail: String,
    },
}

impl GovernanceError {
    fn refused(status: Option<u16>, detail: impl Into<String>) -> Self {
        Self::Permanent {
            status,
            detail: detail.into(),
        }
    }

    /// A plain reason for the requester and the Slack message: what went wrong in words
    /// a user can act on, never the service's own text, URLs or credentials.
    pub fn user_reason(&self) -> String {
        match self {
            Self::Transient(_) => "the governance service could not be reached after several \
                                   tries; an admin can retry the request"
                .into(),
            Self::Permanent { status, .. } => match status {
                None | Some(404) => {
                    "the governance service does not know this tenant or user".into()
                }
                Some(401 | 403) => "the governance service did not allow TARS to make this \
                                    change; an admin has been told"
                    .into(),
                Some(400 | 409 | 422) => {
                    "the governance service refused this change as invalid".into()
                }
                Some(code) => format!("the governance service refused this change (HTTP {code})"),
            },
        }
    }
}

/// What a grant found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// The membership was added (or upgraded to the level asked for).
    Added,
    /// The user already held this level or a higher one: nothing was changed.
    AlreadySatisfied,
}

/// What a revocation found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The membership was removed.
    Removed,
    /// The user was not a member (any more): nothing to do, which is success.
    NotMember,
    /// The user now holds a different level than the one granted (somebody changed it
    /// since): that membership is not this grant's to remove, so it is left as it is.
    LeftAlone,
}

/// A tenant's steward, as the tenant API lists them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Steward {
    /// KBase username.
    pub username: String,
    /// E-mail, when the profile has one.
    #[serde(default)]
    pub email: Option<String>,
}

/// A tenant's member and their access level.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// KBase username.
    pub username: String,
    /// `read_only` or `read_write`.
    pub access_level: Permission,
}

/// What `GET /tenants/{tenant}` says (the fields TARS uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TenantInfo {
    /// Who stewards the tenant.
    #[serde(default)]
    pub stewards: Vec<Steward>,
    /// Who has access, at which level.
    #[serde(default)]
    pub members: Vec<Member>,
}

impl TenantInfo {
    /// The access `user` holds now, if any.
    pub fn access_of(&self, user: &Username) -> Option<Permission> {
        self.members
            .iter()
            .find(|m| m.username == user.as_str())
            .map(|m| m.access_level)
    }
}

/// Whether holding `held` already gives what `wanted` asks for (read_write includes
/// read_only).
pub fn covers(held: Permission, wanted: Permission) -> bool {
    held == wanted || held == Permission::ReadWrite
}

/// The governance API client; cheap to clone.
#[derive(Clone)]
pub struct GovernanceClient {
    http: reqwest::Client,
    base: String,
    token: String,
    api: Api,
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

/// What one call answered, before it is read as a grant or a tenant.
enum Answer {
    Ok(String),
    NotFound(String),
    AlreadyMember,
}

impl GovernanceClient {
    /// A client for `base` with the service `token`, speaking `api`.
    pub fn new(http: reqwest::Client, base: &str, token: &str, api: Api, metrics: Metrics) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            api,
            metrics,
        }
    }

    /// The API this client speaks.
    pub fn api(&self) -> Api {
        self.api
    }

    /// One call, `operation` naming it in its span (`call`, peer `governance`), sent with
    /// the span's `traceparent`.
    async fn call(
        &self,
        operation: &str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<Answer, GovernanceError> {
        let call = trace::outgoing("governance", operation);
        if let Some(tp) = call.traceparent() {
            req = req.header(trace::TRACEPARENT, tp);
        }
        call.run(self.answer(req)).await
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<Answer, GovernanceError> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let kind = self.metrics.transport_failure("governance", e.is_timeout());
                // The error's text would name the URL; the target is known from context.
                return Err(GovernanceError::Transient(format!(
                    "{kind}: {}",
                    e.without_url()
                )));
            }
        };
        let status = resp.status();
        self.metrics.external("governance", status.as_str());
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Answer::Ok(body));
        }
        let reason = reason_from(&body);
        if reason.to_ascii_lowercase().contains("already a member") {
            return Ok(Answer::AlreadyMember);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound(reason));
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(GovernanceError::Transient(format!(
                "HTTP {status}: {reason}"
            )))
        } else {
            Err(GovernanceError::refused(
                Some(status.as_u16()),
                format!("HTTP {}: {reason}", status.as_u16()),
            ))
        }
    }

    /// `GET /tenants/{tenant}`: `None` when the governance API does not know the tenant.
    /// The service serves the tenant API beside the group API, so this is asked in either
    /// mode (the ingress checks tenants with it); only grants differ by mode.
    pub async fn tenant(&self, tenant: &TenantName) -> Result<Option<TenantInfo>, GovernanceError> {
        let url = format!("{}/tenants/{tenant}", self.base);
        match self.call("tenant.read", self.http.get(&url)).await? {
            Answer::Ok(body) => serde_json::from_str(&body).map(Some).map_err(|e| {
                GovernanceError::Transient(format!("unreadable tenant {tenant}: {e}"))
            }),
            Answer::NotFound(_) => Ok(None),
            Answer::AlreadyMember => Err(GovernanceError::Transient(format!(
                "unexpected answer reading tenant {tenant}"
            ))),
        }
    }

    /// Gives `user` `permission` on `tenant`. With the tenant API the members are read
    /// first, so an existing (or higher) membership is left as it is and a retry after a
    /// lost answer adds nothing.
    pub async fn grant(
        &self,
        user: &Username,
        tenant: &TenantName,
        permission: Permission,
    ) -> Result<Granted, GovernanceError> {
        match self.api {
            Api::Tenants => {
                let info = self.tenant(tenant).await?.ok_or_else(|| {
                    GovernanceError::refused(
                        None,
                        format!("the governance API has no tenant {tenant}"),
                    )
                })?;
                if info
                    .access_of(user)
                    .is_some_and(|held| covers(held, permission))
                {
                    return Ok(Granted::AlreadySatisfied);
                }
                let url = format!(
                    "{}/tenants/{tenant}/members/{user}?permission={permission}",
                    self.base
                );
                self.added(self.call("tenant.member.add", self.http.post(&url)).await?)
            }
            Api::Groups => {
                let group = permission.group_for(tenant);
                let url = format!("{}/management/groups/{group}/members/{user}", self.base);
                self.added(self.call("group.member.add", self.http.post(&url)).await?)
            }
        }
    }

    /// Takes back `permission` on `tenant` from `user`: with the tenant API only when the
    /// user still holds exactly that level (read first, so a retry after a lost answer
    /// finds nothing to do); with the group API the group's membership is removed. "Not a
    /// member" is success either way.
    pub async fn revoke(
        &self,
        user: &Username,
        tenant: &TenantName,
        permission: Permission,
    ) -> Result<Removed, GovernanceError> {
        let url = match self.api {
            Api::Tenants => {
                let Some(info) = self.tenant(tenant).await? else {
                    return Ok(Removed::NotMember);
                };
                match info.access_of(user) {
                    None => return Ok(Removed::NotMember),
                    Some(held) if held != permission => return Ok(Removed::LeftAlone),
                    Some(_) => {}
                }
                format!("{}/tenants/{tenant}/members/{user}", self.base)
            }
            Api::Groups => {
                let group = permission.group_for(tenant);
                format!("{}/management/groups/{group}/members/{user}", self.base)
            }
        };
        match self.call("member.remove", self.http.delete(&url)).await? {
            Answer::Ok(_) => Ok(Removed::Removed),
            Answer::NotFound(_) | Answer::AlreadyMember => Ok(Removed::NotMember),
        }
    }

    fn added(&self, answer: Answer) -> Result<Granted, GovernanceError> {
        match answer {
            Answer::Ok(_) => Ok(Granted::Added),
            Answer::AlreadyMember => Ok(Granted::AlreadySatisfied),
            Answer::NotFound(reason) => Err(GovernanceError::refused(
                Some(404),
                format!("HTTP 404: {reason}"),
            )),
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

    #[test]
    fn read_write_covers_read_only_and_never_the_reverse() {
        assert!(covers(Permission::ReadWrite, Permission::ReadOnly));
        assert!(covers(Permission::ReadOnly, Permission::ReadOnly));
        assert!(!covers(Permission::ReadOnly, Permission::ReadWrite));
    }

    #[test]
    fn the_tenant_api_answer_is_read_for_members_and_stewards() {
        let body = r#"{"metadata":{"tenant_name":"genomics"},
            "stewards":[{"username":"pi","email":"pi@lab.org","assigned_by":"admin","assigned_at":"2026-01-01T00:00:00Z"}],
            "members":[{"username":"alice","access_level":"read_write","is_steward":false}],
            "member_count":1,"storage_paths":{}}"#;
        let info: TenantInfo = serde_json::from_str(body).unwrap();
        assert_eq!(info.stewards[0].email.as_deref(), Some("pi@lab.org"));
        let alice = Username::parse("alice").unwrap();
        assert_eq!(info.access_of(&alice), Some(Permission::ReadWrite));
        assert_eq!(info.access_of(&Username::parse("bob").unwrap()), None);
    }

    #[test]
    fn the_api_is_named_in_the_environment() {
        assert_eq!("tenants".parse::<Api>(), Ok(Api::Tenants));
        assert_eq!("groups".parse::<Api>(), Ok(Api::Groups));
        assert!("ldap".parse::<Api>().is_err());
    }
}
