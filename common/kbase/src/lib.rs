//! KBase authentication: who a token belongs to, and whether they are an admin.
//!
//! Every request to the ingress carries a KBase token; asking KBase each time would make
//! the auth service the bottleneck, so answers are cached by a SHA-256 of the token (the
//! token itself is never stored, logged or published) for `ttl`, and concurrent first
//! lookups of one token share a single call.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use tars_domain::Username;
use tars_observability::metrics::Metrics;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The KBase username.
    pub username: Username,
    /// The user's custom roles.
    pub roles: Vec<String>,
    /// Whether any role is one of the configured admin roles.
    pub is_admin: bool,
    /// The account's e-mail, when KBase has one: how TARS finds the user in Slack to tell
    /// them the outcome.
    pub email: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// KBase says the token is not valid.
    #[error("invalid KBase token")]
    InvalidToken,
    /// The token is valid but lacks a required role.
    #[error("missing required role: {0}")]
    MissingRole(String),
    /// KBase could not be asked (down, timing out, answering 5xx).
    #[error("KBase auth service unavailable: {0}")]
    Unavailable(String),
}

/// The auth client's settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Base URL; `/api/V2/me` is appended.
    pub url: String,
    /// Roles of which any makes a user an admin.
    pub admin_roles: Vec<String>,
    /// Roles every user must all have.
    pub required_roles: Vec<String>,
    /// How long an answer is cached.
    pub ttl: Duration,
    /// Most tokens kept in the cache.
    pub max_entries: usize,
}

type Lookup = Result<AuthUser, AuthError>;

/// How long a token KBase refused stays refused without asking again.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Most refused tokens remembered; junk beyond this evicts older junk, never valid users.
const NEGATIVE_ENTRIES: u64 = 10_000;

/// The KBase auth client with its caches; cheap to clone.
///
/// Valid tokens live in a bounded cache with TinyLFU admission and LRU eviction (`moka`),
/// so a flood of junk tokens cannot push out the users who are actually working; refused
/// tokens live in a separate small, short-lived cache, so repeating a junk token costs no
/// KBase call. Concurrent first lookups of one token share one call. Outages are never
/// cached.
#[derive(Clone)]
pub struct KBaseAuth {
    http: reqwest::Client,
    cfg: Arc<AuthConfig>,
    valid: moka::future::Cache<[u8; 32], AuthUser>,
    refused: moka::future::Cache<[u8; 32], ()>,
    metrics: Metrics,
}

#[derive(Deserialize)]
struct Me {
    user: String,
    #[serde(default)]
    customroles: Vec<String>,
    #[serde(default)]
    email: Option<String>,
}

impl KBaseAuth {
    /// A client that shares `http` (one connection pool per process).
    pub fn new(http: reqwest::Client, cfg: AuthConfig, metrics: Metrics) -> Self {
        let valid = moka::future::Cache::builder()
            .max_capacity(u64::try_from(cfg.max_entries).unwrap_or(u64::MAX))
            .time_to_live(cfg.ttl)
            .build();
        let refused = moka::future::Cache::builder()
            .max_capacity(NEGATIVE_ENTRIES)
            .time_to_live(cfg.ttl.min(NEGATIVE_TTL))
            .build();
        Self {
            http,
            cfg: Arc::new(cfg),
            valid,
            refused,
            metrics,
        }
    }

    /// `KBASE_ADMIN_ROLES`: an allowlisted Slack approver counts as holding them, so a
    /// policy naming `role:<admin role>` lets them decide.
    pub fn admin_roles(&self) -> &[String] {
        &self.cfg.admin_roles
    }

    /// Whether `token`'s answer is cached (valid or refused): checking it costs no call to
    /// KBase. The ingress limits failed authentications only for tokens it does not know.
    pub fn knows(&self, token: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.valid.contains_key(&key) || self.refused.contains_key(&key)
    }

    /// Who `token` belongs to. Valid and refused answers are cached (apart); outages are
    /// not.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.refused.contains_key(&key) {
            return Err(AuthError::InvalidToken);
        }
        let user = match self.valid.try_get_with(key, self.fetch(token)).await {
            Ok(user) => user,
            Err(e) => {
                let e = AuthError::clone(&e);
                if e == AuthError::InvalidToken {
                    self.refused.insert(key, ()).await;
                }
                return Err(e);
            }
        };
        if let Some(missing) = self
            .cfg
            .required_roles
            .iter()
            .find(|r| !user.roles.contains(r))
        {
            return Err(AuthError::MissingRole(missing.clone()));
        }
        Ok(user)
    }

    async fn fetch(&self, token: &str) -> Lookup {
        let url = format!("{}/api/V2/me", self.cfg.url.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .header("Authorization", token)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let kind = self.metrics.transport_failure("kbase", e.is_timeout());
                return Err(AuthError::Unavailable(kind.to_owned()));
            }
        };
        let status = resp.status();
        self.metrics.external("kbase", status.as_str());
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(AuthError::InvalidToken);
        }
        if !status.is_success() {
            return Err(AuthError::Unavailable(format!("HTTP {status}")));
        }
        let me: Me = resp.json().await.map_err(|e| {
            AuthError::Unavailable(format!("unreadable answer: {}", e.without_url()))
        })?;
        let username = Username::parse(&me.user)
            .map_err(|e| AuthError::Unavailable(format!("KBase returned a bad username: {e}")))?;
        let is_admin = me
            .customroles
            .iter()
            .any(|r| self.cfg.admin_roles.contains(r));
        Ok(AuthUser {
            username,
            roles: me.customroles,
            is_admin,
            email: me.email.filter(|e| e.contains('@')),
        })
    }
}
