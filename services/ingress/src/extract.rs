//! Extractors that turn raw input into typed values or an [`ApiError`].

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, request::Parts};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tars_kbase::{AuthError, AuthUser};

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body parsed strictly: syntax errors → 400, unknown or mistyped fields → 422
/// naming the field, too large → 413; all with the JSON error body.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "payload_too_large",
                    "the body is larger than 64 KiB",
                )
            } else {
                ApiError::new(status, "bad_request", rej.body_text())
            }
        })?;
        parse_json(&bytes).map(StrictJson)
    }
}

/// Parses JSON with the status rules of [`StrictJson`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                e.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            ),
        }
    })
}

/// The address a request came from: the peer, or with `trust_forwarded` the last
/// `X-Forwarded-For` entry (the one the proxy in front of TARS added; earlier entries are
/// whatever the client claimed).
pub fn client_address(parts: &Parts, trust_forwarded: bool) -> std::net::IpAddr {
    let forwarded = trust_forwarded
        .then(|| {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|a| a.trim().parse().ok())
        })
        .flatten();
    forwarded.unwrap_or_else(|| {
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
    })
}

/// The authenticated caller (`Authorization: Bearer <KBase token>`).
pub struct Caller(pub AuthUser);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized =
            |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m.to_owned());
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized(
                    "missing Authorization header; send `Authorization: Bearer <KBase token>`",
                )
            })?
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not readable text"))?;
        let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized(
                "the Authorization header must use the Bearer scheme: `Bearer <KBase token>`",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(unauthorized("the Bearer token is empty"));
        }
        // A token TARS has not seen costs a KBase call: a client whose tokens keep being
        // refused waits before it may try more (known tokens are never held up).
        let client = client_address(parts, state.trust_x_forwarded_for);
        if !state.auth.knows(token)
            && let Err(wait) = state.auth_failures.check(&client)
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many refused tokens from your address; try again in {} s",
                    wait.as_secs()
                ),
            )
            .retry_after(wait));
        }
        match state.auth.authenticate(token).await {
            Ok(user) => Ok(Caller(user)),
            Err(AuthError::InvalidToken) => {
                let _ = state.auth_failures.take(&client);
                Err(unauthorized("invalid or expired KBase token"))
            }
            Err(AuthError::MissingRole(role)) => Err(ApiError::forbidden(format!(
                "your KBase account lacks the required role {role}"
            ))),
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(%why, "KBase auth unavailable");
                Err(ApiError::unavailable(
                    "the KBase auth service is unavailable; try again shortly",
                ))
            }
        }
    }
}

/// The caller, who must be an admin (403 otherwise).
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(user) = Caller::from_request_parts(parts, state).await?;
        if user.is_admin {
            Ok(Admin(user))
        } else {
            Err(ApiError::forbidden("this needs an admin role"))
        }
    }
}

/// Query parameters, with a bad or unknown parameter answered as the JSON error body
/// (422 naming it) instead of axum's plain-text 400.
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(StrictQuery)
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_error",
                    format!("query: {e}"),
                )
            })
    }
}
