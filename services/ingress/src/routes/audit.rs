//! `GET /audit` (admins): the audit stream `TARS_EVENTS`, filtered and paged, or streamed
//! as NDJSON for archiving.
//!
//! A call reads at most [`SCAN`] stored events from its cursor (or from `since`), keeps
//! the ones the filters match and returns the cursor of the next stored event, so a
//! filter that matches little costs a page, never the whole stream; a client follows
//! `next` until it is `null`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tars_domain::events::{Envelope, Event};
use tars_domain::{RequestId, TenantName, Username};
use tars_jetstream::audit::{EventLog, From, LogPage};

use crate::error::ApiError;
use crate::extract::{Admin, StrictQuery};
use crate::state::AppState;

/// Stored events read per page.
pub const SCAN: usize = 500;

/// The largest cursor (a stream sequence) the API takes: the largest integer JSON
/// clients keep exactly.
pub const MAX_CURSOR: u64 = 9_007_199_254_740_991;

/// `GET /audit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    actor: Option<String>,
    requester: Option<String>,
    request_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<u64>,
    limit: Option<usize>,
}

/// The query, each field parsed once.
#[derive(Clone)]
struct Filter {
    since: Option<time::OffsetDateTime>,
    until: Option<time::OffsetDateTime>,
    tenant: Option<TenantName>,
    actor: Option<String>,
    requester: Option<Username>,
    subject: String,
}

fn invalid(m: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        m,
    )
}

fn instant(name: &str, v: Option<&str>) -> Result<Option<time::OffsetDateTime>, ApiError> {
    v.map(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| invalid(format!("{name}: {s:?} is not an RFC 3339 time ({e})")))
    })
    .transpose()
}

impl Filter {
    fn parse(q: &AuditQuery) -> Result<Self, ApiError> {
        let kind = match q.kind.as_deref() {
            Some(k) if Event::KINDS.contains(&k) => Some(k),
            Some(k) => {
                return Err(invalid(format!(
                    "type: {k:?} is not one of {}",
                    Event::KINDS.join(", ")
                )));
            }
            None => None,
        };
        let id = q
            .request_id
            .as_deref()
            .map(|r| RequestId::parse(r).map_err(|e| invalid(format!("request_id: {e}"))))
            .transpose()?;
        // The subject narrows what the server walks: `tars.<type>.<id>`.
        let subject = match (kind, &id) {
            (Some(k), Some(id)) => format!("tars.{k}.{id}"),
            (Some(k), None) => format!("tars.{k}.*"),
            (None, Some(id)) => format!("tars.*.*.{id}"),
            (None, None) => "tars.>".to_owned(),
        };
        Ok(Self {
            since: instant("since", q.since.as_deref())?,
            until: instant("until", q.until.as_deref())?,
            tenant: q.tenant.as_deref().map(TenantName::parse).transpose()?,
            actor: q.actor.clone(),
            requester: q.requester.as_deref().map(Username::parse).transpose()?,
            subject,
        })
    }

    fn keeps(&self, env: &Envelope) -> bool {
        self.since.is_none_or(|t| env.at >= t)
            && self.until.is_none_or(|t| env.at < t)
            && self.actor.as_deref().is_none_or(|a| env.actor == a)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| env.tenant_name.as_ref() == Some(t))
            && self
                .requester
                .as_ref()
                .is_none_or(|r| env.requester.as_ref() == Some(r))
    }

    /// The rows of `page` this filter keeps, at most `limit`, and where the next page
    /// starts (`None`: the log, or the window, ends here).
    fn select(&self, page: &LogPage, limit: usize) -> (Vec<Value>, Option<u64>) {
        let mut rows = Vec::new();
        for (seq, env) in &page.events {
            if self.past(env) {
                return (rows, None);
            }
            if self.keeps(env) {
                rows.push(row(*seq, env));
                if rows.len() == limit {
                    // More may follow; a page past the end answers empty with `next: null`.
                    return (rows, Some(seq + 1));
                }
            }
        }
        (rows, page.next)
    }

    /// Whether the log from here on is past `until` (events are stored in time order,
    /// near enough: a page that starts after it ends the read).
    fn past(&self, env: &Envelope) -> bool {
        self.until.is_some_and(|t| env.at >= t)
    }
}

fn row(seq: u64, env: &Envelope) -> Value {
    let mut v = crate::history::entry(env);
    v["request_id"] = json!(env.request_id);
    v["seq"] = json!(seq);
    v
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "reading the audit stream failed");
    ApiError::unavailable("the audit stream is unavailable; try again shortly")
}

async fn read(log: &EventLog, f: &Filter, from: From, max: usize) -> Result<LogPage, ApiError> {
    log.page(&f.subject, from, max).await.map_err(unavailable)
}

fn start(f: &Filter, cursor: Option<u64>) -> From {
    match (cursor, f.since) {
        (Some(c), _) => From::Seq(c),
        (None, Some(t)) => From::Time(t),
        (None, None) => From::Seq(1),
    }
}

/// `GET /audit`: `{"events": [{seq, at, type, request_id, actor, source, detail}], "next"}`,
/// or with `Accept: application/x-ndjson` every matching event, one per line.
pub async fn list(
    State(st): State<AppState>,
    Admin(_): Admin,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let f = Filter::parse(&q)?;
    if let Some(c) = q.cursor
        && !(1..=MAX_CURSOR).contains(&c)
    {
        return Err(invalid(format!(
            "cursor: {c} is not a cursor (1 to {MAX_CURSOR})"
        )));
    }
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=SCAN) => n,
        Some(n) => return Err(invalid(format!("limit: {n} is not between 1 and {SCAN}"))),
    };
    if ndjson {
        return Ok(stream(st.events.clone(), f, q.cursor).into_response());
    }
    let page = read(&st.events, &f, start(&f, q.cursor), SCAN).await?;
    let (events, next) = f.select(&page, limit);
    Ok(Json(json!({"events": events, "next": next})).into_response())
}

/// Every matching event as NDJSON, read page by page (memory: one page).
fn stream(log: EventLog, f: Filter, cursor: Option<u64>) -> Response {
    let first = start(&f, cursor);
    let lines = futures::stream::unfold(Some(first), move |from| {
        let log = log.clone();
        let f = f.clone();
        async move {
            let from = from?;
            match read(&log, &f, from, SCAN).await {
                Ok(page) => {
                    let (rows, next) = f.select(&page, usize::MAX);
                    let out: String = rows.iter().map(|r| format!("{r}\n")).collect();
                    Some((Ok::<_, std::io::Error>(out), next.map(From::Seq)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.message)), None)),
            }
        }
    });
    let mut resp = Body::from_stream(lines).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}
