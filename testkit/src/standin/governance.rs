//! Governance API stand-in (minio_manager_service): the tenant API (`/tenants/{tenant}`,
//! members with access levels, stewards with e-mails) and the older group API
//! (`/management/groups/{group}/members/{user}`), over one set of tenants, as the real
//! service keeps them: tenant `t`'s read_write members are group `t`, its read_only members
//! group `tro`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::faults::Faults;

/// One call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct GovCall {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// The path.
    pub path: String,
    /// What it answered.
    pub status: u16,
    /// When it arrived (for latency measurements).
    pub at: std::time::Instant,
    /// The W3C `traceparent` header it carried, if any.
    pub traceparent: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Tenant {
    /// username → e-mail.
    stewards: BTreeMap<String, String>,
    /// username → `read_only` | `read_write`.
    members: BTreeMap<String, String>,
}

#[derive(Default)]
struct Inner {
    token: String,
    any_tenant: Mutex<bool>,
    tenants: Mutex<HashMap<String, Tenant>>,
    calls: Mutex<Vec<GovCall>>,
    faults: Faults,
    /// Bumped after every recorded call.
    changes: super::Changes,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The governance API stand-in.
pub struct FakeGovernance {
    inner: Arc<Inner>,
    served: super::Served,
}

fn error(status: StatusCode, error_type: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error_type": error_type, "message": message})),
    )
        .into_response()
}

impl Inner {
    /// Faults, then the bearer token; `Some` is the answer to give instead.
    async fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        if let Some(r) = self
            .faults
            .apply(json!({"detail": "Too many requests"}))
            .await
        {
            return Some(r);
        }
        let expected = format!("Bearer {}", self.token);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"detail": "Invalid token"})),
                )
                    .into_response(),
            );
        }
        None
    }

    fn record(
        &self,
        (method, headers): (&Method, &HeaderMap),
        path: String,
        resp: &Response,
        at: std::time::Instant,
    ) {
        lock(&self.calls).push(GovCall {
            method: method.to_string(),
            path,
            status: resp.status().as_u16(),
            at,
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
        self.changes.bump();
    }

    /// The tenant `name`, made on the spot when any tenant is allowed.
    fn with_tenant<R>(&self, name: &str, f: impl FnOnce(&mut Tenant) -> R) -> Option<R> {
        let mut tenants = lock(&self.tenants);
        if *lock(&self.any_tenant) {
            tenants.entry(name.to_owned()).or_default();
        }
        tenants.get_mut(name).map(f)
    }
}

fn tenant_body(name: &str, t: &Tenant) -> serde_json::Value {
    json!({
        "metadata": {"tenant_name": name},
        "stewards": t.stewards.iter().map(|(u, e)| json!({
            "username": u, "email": e, "assigned_by": "admin", "assigned_at": "2026-01-01T00:00:00Z",
        })).collect::<Vec<_>>(),
        "members": t.members.iter().map(|(u, level)| json!({
            "username": u, "access_level": level, "is_steward": t.stewards.contains_key(u),
        })).collect::<Vec<_>>(),
        "member_count": t.members.len(),
        "storage_paths": {
            "general_warehouse": format!("s3a://cdm-lake/tenant-general-warehouse/{name}/"),
            "sql_warehouse": format!("s3a://cdm-lake/tenant-sql-warehouse/{name}/"),
            "namespace_prefix": format!("{name}_"),
        },
    })
}

async fn get_tenant(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    let at = std::time::Instant::now();
    let resp = match s.refuse(&headers).await {
        Some(r) => r,
        None => match s.with_tenant(&tenant, |t| tenant_body(&tenant, t)) {
            Some(body) => axum::Json(body).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "TenantNotFound",
                format!("Tenant '{tenant}' not found"),
            ),
        },
    };
    s.record(
        (&Method::GET, &headers),
        format!("/tenants/{tenant}"),
        &resp,
        at,
    );
    resp
}

#[derive(Deserialize)]
struct PermissionQuery {
    permission: Option<String>,
}

async fn tenant_member(
    State(s): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    Query(q): Query<PermissionQuery>,
) -> Response {
    let at = std::time::Instant::now();
    let resp = match s.refuse(&headers).await {
        Some(r) => r,
        None => {
            let level = q.permission.unwrap_or_else(|| "read_write".into());
            let answer = s.with_tenant(&tenant, |t| {
                if method == Method::POST {
                    if t.members.get(&user) == Some(&level) {
                        return Err((
                            StatusCode::CONFLICT,
                            "UserAlreadyMember",
                            format!("User '{user}' is already a member of tenant '{tenant}'"),
                        ));
                    }
                    t.members.insert(user.clone(), level.clone());
                    Ok(Some(json!({"username": user, "access_level": level, "is_steward": t.stewards.contains_key(&user)})))
                } else if t.members.remove(&user).is_some() {
                    Ok(None)
                } else {
                    Err((
                        StatusCode::NOT_FOUND,
                        "UserNotMember",
                        format!("User '{user}' is not a member of tenant '{tenant}'"),
                    ))
                }
            });
            match answer {
                None => error(
                    StatusCode::NOT_FOUND,
                    "TenantNotFound",
                    format!("Tenant '{tenant}' not found"),
                ),
                Some(Err((status, kind, message))) => error(status, kind, message),
                Some(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
                Some(Ok(Some(body))) => axum::Json(body).into_response(),
            }
        }
    };
    s.record(
        (&method, &headers),
        format!("/tenants/{tenant}/members/{user}"),
        &resp,
        at,
    );
    resp
}

/// The tenant and access level a group name stands for in the group API.
fn group_to_tenant(s: &Inner, group: &str) -> Option<(String, &'static str)> {
    let tenants = lock(&s.tenants);
    if tenants.contains_key(group) || *lock(&s.any_tenant) && !group.ends_with("ro") {
        return Some((group.to_owned(), "read_write"));
    }
    let base = group.strip_suffix("ro")?;
    (tenants.contains_key(base) || *lock(&s.any_tenant)).then(|| (base.to_owned(), "read_only"))
}

async fn group_member(
    State(s): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    let at = std::time::Instant::now();
    let resp = match s.refuse(&headers).await {
        Some(r) => r,
        None => match group_to_tenant(&s, &group) {
            None => error(
                StatusCode::NOT_FOUND,
                "GroupNotFound",
                format!("Group '{group}' not found"),
            ),
            Some((tenant, level)) => {
                let answer = s.with_tenant(&tenant, |t| {
                    let holds = t.members.get(&user).map(String::as_str) == Some(level);
                    if method == Method::POST {
                        if holds {
                            return Err(format!(
                                "User '{user}' is already a member of group '{group}'"
                            ));
                        }
                        t.members.insert(user.clone(), level.to_owned());
                    } else if holds {
                        t.members.remove(&user);
                    } else {
                        return Err(format!("User '{user}' is not a member of group '{group}'"));
                    }
                    Ok(t.members
                        .iter()
                        .filter(|(_, l)| l.as_str() == level)
                        .map(|(u, _)| u.clone())
                        .collect::<Vec<_>>())
                });
                match answer {
                    Some(Ok(members)) => {
                        axum::Json(json!({"group_name": group, "members": members})).into_response()
                    }
                    Some(Err(m)) if m.contains("already") => {
                        error(StatusCode::CONFLICT, "UserAlreadyMember", m)
                    }
                    Some(Err(m)) => error(StatusCode::NOT_FOUND, "UserNotMember", m),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "GroupNotFound",
                        format!("Group '{group}' not found"),
                    ),
                }
            }
        },
    };
    s.record(
        (&method, &headers),
        format!("/management/groups/{group}/members/{user}"),
        &resp,
        at,
    );
    resp
}

impl FakeGovernance {
    /// Starts on a free port, accepting `token`.
    pub async fn start(token: &str) -> Self {
        Self::start_on(token, 0).await
    }

    /// Starts on loopback `port` (0: any).
    pub async fn start_on(token: &str, port: u16) -> Self {
        Self::start_at(token, super::loopback(port)).await
    }

    /// Starts at `addr` (port 0: any).
    pub async fn start_at(token: &str, addr: std::net::SocketAddr) -> Self {
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            ..Default::default()
        });
        let router = axum::Router::new()
            .route("/tenants/{tenant}", get(get_tenant))
            .route(
                "/tenants/{tenant}/members/{user}",
                post(tenant_member).delete(tenant_member),
            )
            .route(
                "/management/groups/{group}/members/{user}",
                post(group_member).delete(group_member),
            )
            .with_state(inner.clone());
        let served = super::serve(router, addr)
            .await
            .unwrap_or_else(|e| panic!("governance stand-in: {e}"));
        Self { inner, served }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// The stand-in itself: take it down (connections refused) and bring it back.
    pub fn served(&self) -> &super::Served {
        &self.served
    }

    /// Changes after every recorded call: wait on it instead of polling.
    pub fn changes(&self) -> &super::Changes {
        &self.inner.changes
    }

    /// Creates a tenant (and so its two groups, `name` and `name` + `ro`).
    pub fn add_tenant(&self, name: &str) {
        lock(&self.inner.tenants)
            .entry(name.to_owned())
            .or_default();
    }

    /// Makes `user` (with `email`) a steward of `tenant`, creating the tenant if needed.
    pub fn add_steward(&self, tenant: &str, user: &str, email: &str) {
        lock(&self.inner.tenants)
            .entry(tenant.to_owned())
            .or_default()
            .stewards
            .insert(user.to_owned(), email.to_owned());
    }

    /// Gives `user` `level` (`read_only` / `read_write`) on `tenant` directly, as an
    /// operator would outside TARS.
    pub fn set_member(&self, tenant: &str, user: &str, level: &str) {
        lock(&self.inner.tenants)
            .entry(tenant.to_owned())
            .or_default()
            .members
            .insert(user.to_owned(), level.to_owned());
    }

    /// Whether any tenant name exists implicitly (created on first use).
    pub fn allow_any_tenant(&self, any: bool) {
        *lock(&self.inner.any_tenant) = any;
    }

    /// Members of `tenant` with their access level.
    pub fn members_of(&self, tenant: &str) -> Vec<(String, String)> {
        lock(&self.inner.tenants)
            .get(tenant)
            .map(|t| {
                t.members
                    .iter()
                    .map(|(u, l)| (u.clone(), l.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Members of a group in the group API's naming (`t` read_write, `tro` read_only).
    pub fn members(&self, group: &str) -> Vec<String> {
        let Some((tenant, level)) = group_to_tenant(&self.inner, group) else {
            return Vec::new();
        };
        self.members_of(&tenant)
            .into_iter()
            .filter(|(_, l)| l == level)
            .map(|(u, _)| u)
            .collect()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<GovCall> {
        lock(&self.inner.calls).clone()
    }

    /// Every call that asked for a membership (`POST`), whatever it answered: a repeated
    /// add counts, even when the answer is "already a member".
    pub fn add_calls(&self) -> usize {
        // Counted in place, not on a copy: benchmarks call this after every change.
        lock(&self.inner.calls)
            .iter()
            .filter(|c| c.method == "POST")
            .count()
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
