//! Governance API stand-in (minio_manager_service): group membership.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::faults::Faults;

/// One call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct GovCall {
    /// `POST` or `DELETE`.
    pub method: String,
    /// The path.
    pub path: String,
    /// What it answered.
    pub status: u16,
    /// When it arrived (for latency measurements).
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Inner {
    token: String,
    any_group: Mutex<bool>,
    groups: Mutex<HashMap<String, BTreeSet<String>>>,
    calls: Mutex<Vec<GovCall>>,
    faults: Faults,
}

/// The governance API stand-in.
pub struct FakeGovernance {
    inner: Arc<Inner>,
    served: super::Served,
}

async fn member(
    State(s): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    let at = std::time::Instant::now();
    let resp = answer(&s, &method, &headers, &group, &user).await;
    s.calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(GovCall {
            method: method.to_string(),
            path: format!("/management/groups/{group}/members/{user}"),
            status: resp.status().as_u16(),
            at,
        });
    resp
}

async fn answer(
    s: &Inner,
    method: &Method,
    headers: &HeaderMap,
    group: &str,
    user: &str,
) -> Response {
    if let Some(r) = s.faults.apply(json!({"detail": "Too many requests"})).await {
        return r;
    }
    let expected = format!("Bearer {}", s.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"detail": "Invalid token"})),
        )
            .into_response();
    }
    let any = *s.any_group.lock().unwrap_or_else(|p| p.into_inner());
    let mut groups = s.groups.lock().unwrap_or_else(|p| p.into_inner());
    if any {
        groups.entry(group.to_owned()).or_default();
    }
    let Some(members) = groups.get_mut(group) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error_type": "GroupNotFound", "message": format!("Group '{group}' not found")}))).into_response();
    };
    if method == Method::POST {
        if !members.insert(user.to_owned()) {
            return (
                StatusCode::CONFLICT,
                axum::Json(json!({"error_type": "UserAlreadyMember",
                "message": format!("User '{user}' is already a member of group '{group}'")})),
            )
                .into_response();
        }
    } else if !members.remove(user) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error_type": "UserNotMember",
            "message": format!("User '{user}' is not a member of group '{group}'")})),
        )
            .into_response();
    }
    axum::Json(json!({"group_name": group, "members": members.iter().collect::<Vec<_>>()}))
        .into_response()
}

impl FakeGovernance {
    /// Starts on a free port, accepting `token`.
    pub async fn start(token: &str) -> Self {
        Self::start_on(token, 0).await
    }

    /// Starts on `port` (0: any).
    pub async fn start_on(token: &str, port: u16) -> Self {
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            ..Default::default()
        });
        let router = axum::Router::new()
            .route(
                "/management/groups/{group}/members/{user}",
                post(member).delete(member),
            )
            .with_state(inner.clone());
        let served = super::serve(router, port)
            .await
            .unwrap_or_else(|e| panic!("governance stand-in: {e}"));
        Self { inner, served }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// Creates a group.
    pub fn add_group(&self, name: &str) {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default();
    }

    /// Whether any group name exists implicitly.
    pub fn allow_any_group(&self, any: bool) {
        *self
            .inner
            .any_group
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = any;
    }

    /// Members of `group`.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<GovCall> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Successful member additions.
    pub fn add_calls(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.status < 300)
            .count()
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
