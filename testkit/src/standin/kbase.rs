//! KBase auth stand-in: `GET /api/V2/me` with `Authorization: <token>`, and the service's
//! root document (`GET /`), which KBase clients such as the Python service TARS replaces
//! read at start-up to check that the URL is the auth service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::faults::Faults;

#[derive(Default)]
struct Inner {
    users: Mutex<HashMap<String, (String, Vec<String>)>>,
    calls: AtomicUsize,
    faults: Faults,
    /// Tokens starting with this belong to a user named after the token (benchmarks).
    any_with_prefix: Mutex<Option<String>>,
}

/// The KBase auth stand-in.
pub struct FakeKbase {
    inner: Arc<Inner>,
    served: super::Served,
}

fn kbase_error(status: u16, appcode: u32, apperror: &str) -> serde_json::Value {
    json!({"error": {"httpcode": status, "httpstatus": "Unauthorized", "appcode": appcode,
        "apperror": apperror, "message": format!("{appcode} {apperror}"), "callid": "1234", "time": 1_700_000_000_000u64}})
}

async fn me(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = s
        .faults
        .apply(kbase_error(429, 0, "Too many requests"))
        .await
    {
        return r;
    }
    let Some(token) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(kbase_error(401, 10010, "No authentication token")),
        )
            .into_response();
    };
    let mut user = s
        .users
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned();
    let prefix = s
        .any_with_prefix
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if user.is_none() && prefix.is_some_and(|p| token.starts_with(&p)) {
        let name = token.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        user = Some((name, vec![LAKEHOUSE_USER_ROLE.to_owned()]));
    }
    match user {
        Some((name, roles)) => axum::Json(json!({
            "user": name, "display": name, "email": format!("{name}@example.org"),
            "customroles": roles, "roles": [], "created": 1_600_000_000_000u64,
            "lastlogin": 1_700_000_000_000u64, "idents": [], "policyids": [], "local": false, "anonid": "anon",
        }))
        .into_response(),
        None => (StatusCode::UNAUTHORIZED, axum::Json(kbase_error(401, 10020, "Invalid token"))).into_response(),
    }
}

/// The custom role every lakehouse user holds; the Python service TARS replaces requires
/// it by default (`KBASE_REQUIRED_ROLES=BERDL_USER`), so [`FakeKbase::accept_any_with_prefix`]
/// users carry it.
pub const LAKEHOUSE_USER_ROLE: &str = "BERDL_USER";

/// `GET /`: the auth service's root document, as KBase serves it.
async fn root() -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "version": "0.7.2", "servicename": "Authentication Service", "devtoken": false,
        "servertime": 1_700_000_000_000u64, "gitcommithash": "standin",
    }))
}

impl FakeKbase {
    /// Starts on a free port.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Starts on loopback `port` (0: any).
    pub async fn start_on(port: u16) -> Self {
        Self::start_at(super::loopback(port)).await
    }

    /// Starts at `addr` (port 0: any).
    pub async fn start_at(addr: std::net::SocketAddr) -> Self {
        let inner = Arc::new(Inner::default());
        let router = axum::Router::new()
            .route("/", get(root))
            .route("/api/V2/me", get(me))
            .with_state(inner.clone());
        let served = super::serve(router, addr)
            .await
            .unwrap_or_else(|e| panic!("KBase stand-in: {e}"));
        Self { inner, served }
    }

    /// Base URL (TARS appends `/api/V2/me`).
    pub fn url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// Makes `token` belong to `username` with `roles`.
    pub fn add_user(&self, token: &str, username: &str, roles: &[&str]) {
        self.inner
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                token.to_owned(),
                (
                    username.to_owned(),
                    roles.iter().map(|r| (*r).to_owned()).collect(),
                ),
            );
    }

    /// Accepts every token starting with `prefix` as a user named after the token (with
    /// [`LAKEHOUSE_USER_ROLE`]), so a benchmark can use a distinct user per request.
    pub fn accept_any_with_prefix(&self, prefix: &str) {
        *self
            .inner
            .any_with_prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(prefix.to_owned());
    }

    /// How many `/api/V2/me` calls arrived.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
