//! The ingress: the only door into TARS. REST and Slack callbacks in, NATS out.
//!
//! | module | why |
//! |---|---|
//! | [`routes`] | one module per route group: requests, approvals, slack, admin |
//! | [`extract`] | strict JSON and KBase authentication as extractors |
//! | [`error`] | the one JSON error body |
//! | `history` | a request's history from the audit stream |
//! | `ratelimit` | per-user submission token bucket |
//! | `openapi` | the `/openapi.json` document |
//!
//! Built like zero-to-production: [`Application::build`] binds (port 0 in tests) and
//! [`Application::run_until_stopped`] serves until the shutdown token fires.

pub mod error;
pub mod extract;
mod history;
mod openapi;
mod ratelimit;
pub mod routes;
pub mod state;
mod tenants;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use clap::Parser;
use tars_domain::Username;
use tars_domain::duration::parse_duration;
use tars_jetstream::config::CommonArgs;
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::store::RequestStore;
use tars_kbase::{AuthConfig, KBaseAuth};
use tars_observability::config::{ConfigError, secret};
use tars_observability::metrics::Metrics;
use tars_observability::trace::{self, TraceContext};
use tars_slack::SlackClient;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::ratelimit::RateLimiter;
use crate::state::{AppState, ApprovalMode, SlackSettings};

/// Largest accepted body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The ingress's environment (`--help` lists every variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tars-ingress",
    version,
    about = "TARS ingress: REST API and Slack interactivity"
)]
pub struct Args {
    /// Settings every TARS process has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where the HTTP API listens.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: std::net::SocketAddr,
    /// KBase auth service base URL (`/api/V2/me` is appended).
    #[arg(
        long,
        env = "KBASE_AUTH_URL",
        default_value = "https://ci.kbase.us/services/auth"
    )]
    pub kbase_auth_url: String,
    /// Comma-separated KBase roles of which any makes a user an admin.
    #[arg(
        long,
        env = "KBASE_ADMIN_ROLES",
        default_value = "CDM_JUPYTERHUB_ADMIN"
    )]
    pub kbase_admin_roles: String,
    /// Comma-separated KBase roles every user must have.
    #[arg(long, env = "KBASE_REQUIRED_ROLES", default_value = "")]
    pub kbase_required_roles: String,
    /// How long a token's answer is cached.
    #[arg(long, env = "KBASE_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub kbase_cache_ttl: Duration,
    /// Most tokens whose answers are cached (under 1 KB each: an ingress holding about
    /// 100,000 had 75 MB resident): the ingress's memory under load is mostly this
    /// cache, so it is bounded; beyond it the least used are evicted.
    #[arg(long, env = "KBASE_CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub kbase_cache_max_entries: usize,
    /// Slack signing secret (or SLACK_SIGNING_SECRET_FILE); without it /slack/interact is off.
    #[arg(long, env = "SLACK_SIGNING_SECRET", hide_env_values = true)]
    pub slack_signing_secret: Option<tars_observability::config::Secret>,
    /// File holding the Slack signing secret.
    #[arg(long, env = "SLACK_SIGNING_SECRET_FILE")]
    pub slack_signing_secret_file: Option<std::path::PathBuf>,
    /// `allowlist` (clicks by SLACK_APPROVERS decide) or `kbase-token` (a modal asks for a token).
    #[arg(long, env = "SLACK_APPROVAL_MODE", default_value = "allowlist", value_parser = ["allowlist", "kbase-token"])]
    pub slack_approval_mode: String,
    /// `U123:kbase_user,...`: Slack user ids allowed to decide, and whose name is recorded.
    #[arg(long, env = "SLACK_APPROVERS", default_value = "")]
    pub slack_approvers: String,
    /// The day (`YYYY-MM-DD`) an operator last checked that everyone in SLACK_APPROVERS
    /// still holds an admin role in KBase. KBase has no stable API to read another user's
    /// roles, so TARS cannot re-check them itself; when set, Slack clicks in allowlist mode
    /// are refused once SLACK_APPROVERS_MAX_AGE has passed since that day. Empty is unset.
    #[arg(long, env = "SLACK_APPROVERS_REVIEWED")]
    pub slack_approvers_reviewed: Option<String>,
    /// How long an approver review stays valid.
    #[arg(long, env = "SLACK_APPROVERS_MAX_AGE", default_value = "90d", value_parser = parse_duration)]
    pub slack_approvers_max_age: Duration,
    /// The Slack bot, for the token modal and replies to clickers.
    #[command(flatten)]
    pub slack_bot: tars_slack::config::SlackBotArgs,
    /// The Slack workspace TARS is installed in; when set, interactions from any other
    /// workspace are refused (403).
    #[arg(long, env = "SLACK_TEAM_ID")]
    pub slack_team_id: Option<String>,
    /// The approval channel; when set, button clicks on messages in any other channel
    /// are refused (403).
    #[arg(long, env = "SLACK_CHANNEL_ID")]
    pub slack_channel_id: Option<String>,
    /// Submissions per user per minute (per ingress replica).
    #[arg(long, env = "SUBMIT_RATE_PER_MINUTE", default_value_t = 10)]
    pub submit_rate_per_minute: u32,
    /// Reads (`GET /requests`, `GET /requests/{id}`) per user per minute (per replica).
    #[arg(long, env = "READ_RATE_PER_MINUTE", default_value_t = 600)]
    pub read_rate_per_minute: u32,
    /// Refused tokens per client address per minute before that address must wait
    /// (tokens TARS already knows, valid or refused, are never limited).
    #[arg(long, env = "FAILED_AUTH_PER_MINUTE", default_value_t = 30)]
    pub failed_auth_per_minute: u32,
    /// Take the client address from the last `X-Forwarded-For` entry (set when a proxy
    /// you run adds it); otherwise the peer address is used.
    #[arg(long, env = "TRUST_X_FORWARDED_FOR", default_value_t = false)]
    pub trust_x_forwarded_for: bool,
    /// Most open (pending) requests per user.
    #[arg(long, env = "MAX_OPEN_REQUESTS_PER_USER", default_value_t = 20)]
    pub max_open_requests_per_user: usize,
    /// The approval policy file (TOML); unset: one approval by an admin for every tenant.
    #[arg(long, env = "APPROVAL_POLICY")]
    pub approval_policy: Option<std::path::PathBuf>,
    /// Longest time-bound access a request may ask for (`duration`).
    #[arg(long, env = "MAX_ACCESS_DURATION", default_value = "90d", value_parser = parse_duration)]
    pub max_access_duration: Duration,
    /// The governance API, to refuse unknown (or, with the group API, ambiguous) tenants
    /// at submit; unset: tenants are not checked.
    #[command(flatten)]
    pub governance: tars_governance::config::GovernanceArgs,
    /// When set, `/metrics` (with `/livez` and `/readyz`) is served here and not on the
    /// public listener, so scrapes stay inside the cluster.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Longest time one HTTP request may take.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

impl Args {
    /// The defaults, listening on a free loopback port, for an ingress configured from code
    /// (`tars-dev`, tests, benchmarks); set the Slack fields to enable `/slack/interact`.
    pub fn local(common: CommonArgs, kbase_auth_url: &str, slack_api_url: &str) -> Self {
        Self {
            common,
            listen_addr: ([127, 0, 0, 1], 0).into(),
            kbase_auth_url: kbase_auth_url.to_owned(),
            kbase_admin_roles: "CDM_JUPYTERHUB_ADMIN".into(),
            kbase_required_roles: String::new(),
            kbase_cache_ttl: Duration::from_secs(300),
            kbase_cache_max_entries: 10_000,
            slack_signing_secret: None,
            slack_signing_secret_file: None,
            slack_approval_mode: "allowlist".into(),
            slack_approvers: String::new(),
            slack_approvers_reviewed: None,
            slack_approvers_max_age: Duration::from_secs(90 * 86_400),
            slack_team_id: None,
            slack_channel_id: None,
            metrics_addr: None,
            slack_bot: tars_slack::config::SlackBotArgs {
                slack_bot_token: None,
                slack_bot_token_file: None,
                slack_api_url: slack_api_url.to_owned(),
            },
            submit_rate_per_minute: 10,
            read_rate_per_minute: 600,
            failed_auth_per_minute: 30,
            trust_x_forwarded_for: false,
            max_open_requests_per_user: 20,
            max_access_duration: Duration::from_secs(90 * 86_400),
            approval_policy: None,
            request_timeout: Duration::from_secs(15),
            governance: Default::default(),
        }
    }
}

fn csv(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `U123:alice,U456:bob`.
pub fn parse_approvers(s: &str) -> Result<HashMap<String, Username>, ConfigError> {
    let mut out = HashMap::new();
    for pair in csv(s) {
        let (slack, kbase) = pair.split_once(':').ok_or_else(|| {
            ConfigError::new(
                "SLACK_APPROVERS",
                format!("{pair:?} is not SLACK_ID:kbase_user"),
            )
        })?;
        let user = Username::parse(kbase)
            .map_err(|e| ConfigError::new("SLACK_APPROVERS", format!("{pair:?}: {e}")))?;
        out.insert(slack.trim().to_owned(), user);
    }
    Ok(out)
}

/// Reads and checks the approval policy file; the error names the file, line and reason.
pub fn load_policy(
    path: &std::path::Path,
) -> Result<tars_domain::policy::ApprovalPolicy, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("APPROVAL_POLICY", format!("{file}: {e}")))?;
    tars_domain::policy::ApprovalPolicy::parse(&file, &text)
        .map_err(|e| ConfigError::new("APPROVAL_POLICY", e.to_string()))
}

/// Parses `SLACK_APPROVERS_REVIEWED` (`YYYY-MM-DD`, midnight UTC).
fn review_due(day: &str) -> Result<time::OffsetDateTime, ConfigError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(day.trim(), format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|e| {
            ConfigError::new(
                "SLACK_APPROVERS_REVIEWED",
                format!("{day:?} is not a YYYY-MM-DD date: {e}"),
            )
        })
}

/// A bound, ready-to-serve ingress.
pub struct Application {
    listener: tokio::net::TcpListener,
    /// The process's metrics (the relay counts its store reads here).
    metrics: Metrics,
    /// The separate probe listener (`METRICS_ADDR`), when set.
    probes: Option<(tokio::net::TcpListener, tars_observability::health::Probe)>,
    router: Router,
    /// What the relay this process runs needs: the bucket to tail and the publisher.
    relay: (
        tars_jetstream::topology::Topology,
        EventPublisher,
        tars_jetstream::worker::PullHealth,
    ),
    client: async_nats::Client,
}

impl Application {
    /// Validates the configuration (reporting every problem at once), connects to NATS,
    /// declares the topology and binds the listener.
    pub async fn build(args: Args, metrics: Metrics) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        let signing = secret(
            "SLACK_SIGNING_SECRET",
            args.slack_signing_secret
                .as_ref()
                .map(tars_observability::config::Secret::expose),
            args.slack_signing_secret_file.as_deref(),
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let bot = args.slack_bot.token().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let mode = if args.slack_approval_mode == "kbase-token" {
            if signing.is_some() && bot.is_none() {
                problems.push(ConfigError::new(
                    "SLACK_BOT_TOKEN",
                    "kbase-token approval mode needs a bot token to open the modal",
                ));
            }
            ApprovalMode::KbaseToken
        } else {
            let approvers = match parse_approvers(&args.slack_approvers) {
                Ok(a) if a.is_empty() && signing.is_some() => {
                    problems.push(ConfigError::new(
                        "SLACK_APPROVERS",
                        "allowlist approval mode needs at least one SLACK_ID:kbase_user",
                    ));
                    a
                }
                Ok(a) => a,
                Err(e) => {
                    problems.push(e);
                    HashMap::new()
                }
            };
            ApprovalMode::Allowlist(approvers)
        };
        let review_due = match args
            .slack_approvers_reviewed
            .as_deref()
            .filter(|day| !day.trim().is_empty())
            .map(review_due)
        {
            None => {
                if matches!(&mode, ApprovalMode::Allowlist(a) if !a.is_empty()) {
                    tracing::warn!(
                        "SLACK_APPROVERS_REVIEWED is not set: allowlisted Slack approvers keep deciding even after they lose their KBase admin role"
                    );
                }
                None
            }
            Some(Ok(day)) => Some(day + args.slack_approvers_max_age),
            Some(Err(e)) => {
                problems.push(e);
                None
            }
        };
        let approval_policy = match args.approval_policy.as_deref().map(load_policy) {
            None => Default::default(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                problems.push(e);
                Default::default()
            }
        };
        let governance = args.governance.client(&metrics, &mut problems);
        if governance.is_none() {
            tracing::warn!("GOVERNANCE_API_URL is not set: tenants are not checked at submit");
        }
        tars_observability::config::report(problems).map_err(anyhow::Error::msg)?;

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let auth = KBaseAuth::new(
            http.clone(),
            AuthConfig {
                url: args.kbase_auth_url.clone(),
                admin_roles: csv(&args.kbase_admin_roles),
                required_roles: csv(&args.kbase_required_roles),
                ttl: args.kbase_cache_ttl,
                max_entries: args.kbase_cache_max_entries,
            },
            metrics.clone(),
        );
        let slack_client = bot.map(|t| {
            SlackClient::new(
                http.clone(),
                &args.slack_bot.slack_api_url,
                &t,
                metrics.clone(),
            )
        });
        let conn =
            tars_jetstream::service::connect(&args.common, "tars-ingress", metrics.clone()).await?;
        let state = AppState::new(state::Shared {
            store: RequestStore::new(&conn.topology, &conn.metrics),
            publisher: EventPublisher::new(conn.topology.js.clone(), metrics.clone()),
            events: tars_jetstream::audit::EventLog::new(&conn.topology, &conn.metrics),
            topology: conn.topology,
            auth,
            slack: Arc::new(SlackSettings {
                signing_secret: signing,
                mode,
                client: slack_client,
                team_id: args.slack_team_id.clone(),
                channel_id: args.slack_channel_id.clone(),
                approvers_review_due: review_due,
            }),
            limiter: Arc::new(RateLimiter::new(args.submit_rate_per_minute)),
            read_limiter: Arc::new(RateLimiter::new(args.read_rate_per_minute)),
            auth_failures: Arc::new(RateLimiter::new(args.failed_auth_per_minute)),
            trust_x_forwarded_for: args.trust_x_forwarded_for,
            max_open: args.max_open_requests_per_user,
            max_access_duration: args.max_access_duration,
            metrics,
            client: conn.client.clone(),
            relay_health: tars_jetstream::worker::PullHealth::default(),
            policy: tars_domain::machine::Policy::default(),
            tenants: governance.map(tenants::TenantCheck::new),
            approval_policy: Arc::new(approval_policy),
        });
        let listener = tokio::net::TcpListener::bind(args.listen_addr).await?;
        let probes = match args.metrics_addr {
            Some(addr) => Some((
                tokio::net::TcpListener::bind(addr).await?,
                tars_observability::health::Probe {
                    metrics: state.metrics.clone(),
                    ready: readiness(&state),
                },
            )),
            None => None,
        };
        let public_metrics = probes.is_none();
        Ok(Self {
            listener,
            metrics: state.metrics.clone(),
            probes,
            relay: (
                state.topology.clone(),
                state.publisher.clone(),
                state.relay_health.clone(),
            ),
            router: router(state, args.request_timeout, public_metrics),
            client: conn.client,
        })
    }

    /// The port actually bound (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port of the separate metrics listener, when `METRICS_ADDR` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.probes
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// Serves until `shutdown`, finishing in-flight requests, then drains NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let (topology, publisher, relay_health) = self.relay;
        // The relay stops with the server (a server error stops it too).
        let stop_relay = shutdown.child_token();
        let relay = tokio::spawn(tars_jetstream::relay::run(
            topology,
            publisher,
            self.metrics,
            relay_health,
            stop_relay.clone(),
        ));
        let probes = self.probes.map(|(listener, probe)| {
            tokio::spawn(tars_observability::health::serve(
                listener,
                probe,
                shutdown.clone(),
            ))
        });
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        if let Some(p) = probes {
            let _ = p.await;
        }
        stop_relay.cancel();
        let _ = relay.await;
        served?;
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "NATS drain failed");
        }
        Ok(())
    }
}

/// Builds and runs the ingress until `shutdown`.
pub async fn run(args: Args, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Application::build(args, metrics).await?;
    tracing::info!(port = app.port(), "ingress listening");
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    resp
}

/// Answers 503 with the JSON error body and `Retry-After` when a request takes longer than
/// `REQUEST_TIMEOUT` (a NATS or KBase outage that outlasts the bounded waits).
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error::ApiError::unavailable("the request took too long; try again shortly")
            .into_response(),
    }
}

/// The span of one HTTP request, carrying the `x-request-id` that is also echoed to the
/// client, so a user's report can be found in the logs.
fn http_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        http_request_id = %id,
        trace_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
    )
}

/// Keeps a caller's `x-request-id` only when it is a short token (1–64 of
/// `[A-Za-z0-9._:-]`); anything else is dropped and a fresh id is made, so a header can
/// never forge or flood a log line.
async fn sanitize_request_id(
    mut req: axum::http::Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    let acceptable = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .is_none_or(valid_request_id);
    if !acceptable {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Continues the caller's W3C trace (`traceparent`) or starts one, names it in the HTTP
/// span, and makes it current so every event the request publishes carries it.
async fn traced(req: axum::http::Request<axum::body::Body>, next: middleware::Next) -> Response {
    let ctx = TraceContext::from_header(
        req.headers()
            .get(trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    tracing::Span::current().record("trace_id", ctx.trace_id());
    trace::scope(ctx, next.run(req)).await
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("route")
}

/// A known route asked with a method it does not serve: the JSON error body, like every
/// other refusal.
async fn method_not_allowed(method: axum::http::Method) -> error::ApiError {
    error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this route"),
    )
}

async fn readyz(State(st): State<AppState>) -> Response {
    match readiness(&st)() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response(),
        Err(why) => error::ApiError::unavailable(why).into_response(),
    }
}

/// Ready while NATS is connected and this process's relay works (it announces what the
/// ingress accepts: a process whose relay cannot start leaves service).
fn readiness(st: &AppState) -> tars_observability::health::Readiness {
    let connected = tars_jetstream::nats::readiness(&st.client);
    let relay = st.relay_health.clone();
    std::sync::Arc::new(move || {
        connected()?;
        relay
            .check(tars_jetstream::service::RELAY_TOLERANCE)
            .map_err(|e| format!("relay: {e}"))
    })
}

fn router(state: AppState, timeout: Duration, public_metrics: bool) -> Router {
    use routes::{admin, approvals, audit, requests, slack};
    let metrics = state.metrics.clone();
    let probe = tars_observability::health::Probe {
        metrics: metrics.clone(),
        ready: readiness(&state),
    };
    let request_id = HeaderName::from_static("x-request-id");
    let app = Router::new()
        .route("/requests", post(requests::submit).get(requests::list))
        .route("/requests/", post(requests::submit).get(requests::list))
        .route("/requests/{id}", get(requests::get_one))
        .route("/requests/{id}/cancel", post(requests::cancel))
        .route("/requests/{id}/revoke", post(requests::revoke))
        .route("/approvals/approve", post(approvals::approve))
        .route("/approvals/deny", post(approvals::deny))
        .route("/slack/interact", post(slack::interact))
        .route("/audit", get(audit::list))
        .route("/admin/dead-letters", get(admin::list))
        .route("/admin/dead-letters/{seq}/replay", post(admin::replay))
        .route("/admin/dead-letters/{seq}", delete(admin::discard))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .fallback(not_found)
        .with_state(state);
    let probes = Router::new().route("/livez", get(|| async { "ok" }));
    let probes = if public_metrics {
        probes.route("/metrics", get(metrics_text))
    } else {
        probes
    };
    app.merge(probes.with_state(probe))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(error::panicked))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(metrics, track))
        .layer(middleware::from_fn_with_state(timeout, deadline))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(middleware::from_fn(traced))
        .layer(TraceLayer::new_for_http().make_span_with(http_span))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(sanitize_request_id))
}

async fn metrics_text(State(p): State<tars_observability::health::Probe>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        p.metrics.render(),
    )
}
