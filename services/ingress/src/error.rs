//! The one error type of the ingress and its JSON body.
//!
//! Every failure a client can see becomes an [`ApiError`], rendered as
//! `{"error": <HTTP status>, "error_type": "<kind>", "message": "<for a person>"}`; 5xx are
//! logged here, in one place, and never carry internal details or a token.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tars_domain::ParseError;
use tars_jetstream::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable kind.
    pub error_type: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// For 429 and 503: when to try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a status, kind and message.
    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// 404 for unknown ids and for ids the caller may not see (the same answer for both).
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409: the request is no longer in a state that allows this.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503: a dependency (NATS, KBase) is unavailable; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
        .retry_after(Duration::from_secs(5))
    }
}

/// The answer to a call whose handler panicked (caught by the router's `CatchPanicLayer`):
/// a 500 in the usual JSON shape instead of a connection closed without a word, and the
/// ingress goes on serving. What the call wrote stays written; every write is safe to
/// repeat, so the client may try again.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the ingress failed while handling this call; try again (nothing is applied twice)",
    )
    .into_response()
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            e.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::not_found(format!("request {id}")),
            other => {
                tracing::error!(error = %other, "request store failed");
                Self::unavailable("the request store is unavailable; try again shortly")
            }
        }
    }
}

impl From<tars_jetstream::publish::PublishError> for ApiError {
    fn from(e: tars_jetstream::publish::PublishError) -> Self {
        tracing::error!(error = %e, "publish failed");
        Self::unavailable(
            "the event stream is unavailable; try again shortly (your request is kept)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error_type = self.error_type, message = %self.message, "answered with an error");
        }
        let body = json!({
            "error": self.status.as_u16(),
            "error_type": self.error_type,
            "message": self.message,
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
