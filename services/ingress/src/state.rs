//! What every handler shares.

use std::collections::HashMap;
use std::sync::Arc;

use tars_domain::Username;
use tars_domain::machine::Policy;
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::store::RequestStore;
use tars_jetstream::topology::Topology;
use tars_kbase::KBaseAuth;
use tars_observability::metrics::Metrics;
use tars_slack::SlackClient;

use crate::ratelimit::RateLimiter;

/// How Slack clicks become decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalMode {
    /// Listed Slack users decide at once, recorded under their mapped KBase username.
    Allowlist(HashMap<String, Username>),
    /// Any click opens a modal asking for the clicker's KBase token (the older behaviour).
    KbaseToken,
}

/// Slack settings of the ingress.
pub struct SlackSettings {
    /// Signs every interaction Slack sends.
    pub signing_secret: Option<String>,
    /// Allowlist or KBase-token approval.
    pub mode: ApprovalMode,
    /// Opens the token modal (kbase-token mode) and answers clickers.
    pub client: Option<SlackClient>,
    /// `SLACK_TEAM_ID`: the only workspace whose interactions count.
    pub team_id: Option<String>,
    /// `SLACK_CHANNEL_ID`: the only channel whose buttons count.
    pub channel_id: Option<String>,
    /// When the allowlist must have been reviewed again (`SLACK_APPROVERS_REVIEWED` plus
    /// `SLACK_APPROVERS_MAX_AGE`); after it, allowlisted clicks decide nothing.
    pub approvers_review_due: Option<time::OffsetDateTime>,
}

/// Shared state, one `Arc` to clone: axum clones the state for every extractor of every
/// request, and cloning the fields themselves (a KV handle carries its stream's whole
/// configuration) took a tenth of the ingress's CPU under load (`perf`, see
/// `docs/architecture.md`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state handlers share.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler reads, behind [`AppState`].
pub struct Shared {
    /// Request records.
    pub store: RequestStore,
    /// Publishes events.
    pub publisher: EventPublisher,
    /// Reads request histories.
    pub events: tars_jetstream::audit::EventLog,
    /// Streams and bucket (dead letters are read from here).
    pub topology: Topology,
    /// Checks tokens.
    pub auth: KBaseAuth,
    /// Slack settings.
    pub slack: Arc<SlackSettings>,
    /// Per-user submission limit.
    pub limiter: Arc<RateLimiter>,
    /// Per-user read limit.
    pub read_limiter: Arc<RateLimiter>,
    /// Refused tokens per client address.
    pub auth_failures: Arc<RateLimiter<std::net::IpAddr>>,
    /// Whether the client address comes from `X-Forwarded-For`.
    pub trust_x_forwarded_for: bool,
    /// Most open requests per user.
    pub max_open: usize,
    /// Longest access a request may ask for.
    pub max_access_duration: std::time::Duration,
    /// The process's metrics.
    pub metrics: Metrics,
    /// The NATS connection, for readiness.
    pub client: async_nats::Client,
    /// Whether this process's relay works (found its consumer, pulls), for readiness: a
    /// process that accepts requests must also announce them.
    pub relay_health: tars_jetstream::worker::PullHealth,
    /// The rules the ingress checks before it accepts a command (the decision worker
    /// applies the same ones authoritatively). Today's decision and cancel rules need no
    /// configuration; the approval policy joins here.
    pub policy: Policy,
    /// Refuses unknown or ambiguous tenants at submit, when a governance API is set.
    pub tenants: Option<crate::tenants::TenantCheck>,
    /// `APPROVAL_POLICY`: who decides each tenant's requests, how many approvals they
    /// need, what is automatic, where messages go, how long access may last.
    pub approval_policy: Arc<tars_domain::policy::ApprovalPolicy>,
}
