//! One module per group of routes.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod requests;
pub mod slack;
pub mod slack_payload;

/// Names the access request an HTTP request is about in its span, so every log line of
/// the call (and the worker lines that share its trace id) can be found by `request_id`.
pub fn name_request(id: &tars_domain::RequestId) {
    tracing::Span::current().record("request_id", id.as_str());
}
