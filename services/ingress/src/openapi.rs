//! The `/openapi.json` document: every route the router serves, with its answers.

use serde_json::{Value, json};

/// One operation. Every refusal is the JSON error body, so the answers every caller can
/// get are added here once: 401 and 503 where a token is checked, 400, 413, 415 and 422
/// where a body is read.
fn op(summary: &str, auth: bool, body: Option<Value>, answers: &[(&str, &str)]) -> Value {
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let mut responses = serde_json::Map::new();
    let mut common: Vec<(&str, &str)> = Vec::new();
    if auth {
        common.extend([
            ("401", "no, malformed or invalid token"),
            ("429", "too many refused tokens from this address, or too many reads or submissions (Retry-After)"),
            ("503", "KBase auth or NATS unavailable (Retry-After)"),
        ]);
    }
    if body.is_some() {
        common.extend([
            ("400", "malformed JSON"),
            ("413", "body over 64 KiB"),
            ("415", "not application/json"),
            ("422", "a field is missing, unknown or invalid"),
        ]);
    }
    for (code, what) in common.into_iter().chain(answers.iter().copied()) {
        let mut r = json!({"description": what});
        if code.starts_with('4') || code.starts_with('5') {
            r["content"] = error.clone();
        }
        responses.insert(code.into(), r);
    }
    let mut o = json!({"summary": summary, "responses": responses});
    if auth {
        o["security"] = json!([{"kbase": []}]);
    }
    if let Some(schema) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    o
}

/// A required path parameter.
fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!([{"name": name, "in": "path", "required": true, "description": description, "schema": schema}])
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let id = path_param(
        "id",
        "a request id as TARS hands it out (lowercase hyphenated UUID)",
        json!({"type": "string", "format": "uuid"}),
    );
    let seq = path_param(
        "seq",
        "the dead letter's sequence in TARS_DLQ",
        json!({"type": "integer", "minimum": 1}),
    );
    let submit = json!({"type": "object", "additionalProperties": false, "required": ["tenant_name"],
        "properties": {"tenant_name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
            "permission": {"enum": ["read_only", "read_write", null], "default": "read_only"},
            "justification": {"type": ["string", "null"], "maxLength": 2000},
            "duration": {"type": ["string", "null"], "example": "30d",
                "description": "how long the access lasts (humantime; at most MAX_ACCESS_DURATION, 90d by default)",
                "pattern": "^([1-9][0-9]?[smh]|([1-9]|[1-8][0-9]|90)d)$"}}});
    let decision = json!({"type": "object", "additionalProperties": false,
        "anyOf": [{"required": ["request_id"]}, {"required": ["requester", "tenant_name"]}],
        "properties": {
        "request_id": {"type": "string", "format": "uuid"},
        "requester": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
        "tenant_name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "permission": {"enum": ["read_only", "read_write"]}, "reason": {"type": "string"},
        "channel_id": {"type": "string"}, "message_ts": {"type": "string"}}});
    let submit_op = op(
        "Ask for access to a tenant",
        true,
        Some(submit),
        &[
            ("202", "submitted"),
            ("200", "an open request for the same tenant and permission"),
            ("401", "no or bad token"),
            ("413", "body over 64 KiB"),
            ("422", "invalid field"),
            ("429", "rate limit or open-request cap (Retry-After)"),
            ("503", "auth or NATS unavailable (Retry-After)"),
        ],
    );
    let list_op = op(
        "List requests (own; admins all)",
        true,
        None,
        &[
            ("200", "{requests, next}"),
            ("403", "requester filter naming someone else"),
            ("422", "unknown or invalid query parameter"),
        ],
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "TARS — Tenant Access Request Service", "version": env!("CARGO_PKG_VERSION")},
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "error_type", "message"],
            "properties": {"error": {"type": "integer"}, "error_type": {"type": "string"}, "message": {"type": "string"}}}},
            "securitySchemes": {"kbase": {"type": "http", "scheme": "bearer", "description": "KBase token"}}},
        "paths": {
            "/requests": {"post": submit_op.clone(), "get": list_op.clone()},
            "/requests/": {"post": submit_op, "get": list_op},
            "/requests/{id}": {"parameters": id.clone(), "get": op("A request with its history", true, None, &[("200", "record + history"), ("404", "unknown or not yours")])},
            "/requests/{id}/revoke": {"parameters": id.clone(), "post": op("End applied access now (an admin, or the requester giving up their own)", true, Some(json!({"type": "object", "additionalProperties": false, "properties": {"reason": {"type": ["string", "null"], "maxLength": 2000}}})), &[("202", "revocation under way (status revoking)"), ("404", "unknown or not yours"), ("409", "not applied")])},
            "/requests/{id}/cancel": {"parameters": id, "post": op("Cancel a pending request (requester)", true, None, &[("200", "cancelled"), ("403", "not the requester"), ("404", "unknown"), ("409", "no longer pending")])},
            "/approvals/approve": {"post": op("Approve (admin)", true, Some(decision.clone()), &[("202", "decision accepted"), ("403", "not an admin or own request"), ("404", "unknown"), ("409", "already decided")])},
            "/approvals/deny": {"post": op("Deny (admin)", true, Some(decision), &[("202", "decision accepted"), ("403", "not an admin or own request"), ("404", "unknown"), ("409", "already decided")])},
            "/slack/interact": {"post": op("Slack interactivity (signed form payload=)", false, None, &[("200", "handled"), ("400", "not a Slack payload"), ("401", "bad or stale signature"), ("403", "from another workspace or channel"), ("404", "Slack is not configured"), ("503", "NATS unavailable")])},
            "/audit": {"get": {"summary": "The audit log (admin): filtered, paged; NDJSON with Accept: application/x-ndjson", "security": [{"kbase": []}],
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "tenant", "in": "query", "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}},
                    {"name": "actor", "in": "query", "schema": {"type": "string"}},
                    {"name": "requester", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"}},
                    {"name": "request_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    {"name": "type", "in": "query", "schema": {"enum": tars_domain::events::Event::KINDS}},
                    {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": crate::routes::audit::MAX_CURSOR}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": op("", true, None, &[("200", "{events, next}"), ("403", "not an admin"), ("422", "unknown or invalid query parameter")])["responses"].clone()}},
            "/admin/dead-letters": {"get": op("List dead letters (admin)", true, None, &[("200", "{dead_letters, next}"), ("403", "not an admin"), ("422", "unknown or invalid query parameter")])},
            "/admin/dead-letters/{seq}/replay": {"parameters": seq.clone(), "post": op("Replay a dead letter (admin)", true, None, &[("202", "replayed"), ("403", "not an admin"), ("404", "unknown"), ("409", "names no original subject")])},
            "/admin/dead-letters/{seq}": {"parameters": seq, "delete": op("Discard a dead letter (admin)", true, None, &[("204", "discarded"), ("403", "not an admin"), ("404", "unknown")])},
            "/health": {"get": op("Health", false, None, &[("200", "ok")])},
            "/livez": {"get": op("Liveness", false, None, &[("200", "ok")])},
            "/readyz": {"get": op("Readiness: NATS connected", false, None, &[("200", "ready"), ("503", "not ready")])},
            "/metrics": {"get": op("Prometheus metrics", false, None, &[("200", "text exposition")])},
            "/openapi.json": {"get": op("This document", false, None, &[("200", "OpenAPI 3.1")])},
        }
    })
}
