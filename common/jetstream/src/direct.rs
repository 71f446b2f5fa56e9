//! Batched direct reads (`$JS.API.DIRECT.GET`, nats-server 2.11+): stored messages by
//! subject, answered by any replica, with no consumer created and nothing left behind.
//!
//! Listing an index (`u.<user>.>` in the request bucket) and reading one request's events
//! (`tars.request.applied.<id>`) are both "the messages on these subjects from sequence N":
//! one request, the messages, then an end-of-batch status. The server finds them through
//! its per-subject index, so the cost is the number of matching messages, never the size
//! of the stream.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

/// The most subjects one `multi_last` request answers (the server's limit).
const MULTI_LAST_MAX: usize = 1024;

/// How long one reply of a batch may take before the read counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Its headers (the server adds `Nats-Subject`, `Nats-Sequence`, `Nats-Time-Stamp`).
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
}

/// One page of a batched read.
#[derive(Debug, Default)]
pub struct Page {
    /// The messages, in stream order.
    pub messages: Vec<Stored>,
    /// How many matching messages come after the last one returned.
    pub pending: u64,
}

/// Why a direct read failed (transient: NATS away, a leader election, a slow server).
#[derive(Debug, thiserror::Error)]
#[error("direct read of {stream}: {reason}")]
pub struct DirectError {
    stream: String,
    reason: String,
    too_many: bool,
}

/// Reads stored messages of one stream directly.
#[derive(Clone)]
pub struct DirectReader {
    client: async_nats::Client,
    stream: String,
}

impl DirectReader {
    /// A reader of `stream` (which must have `allow_direct`).
    pub fn new(client: async_nats::Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> DirectError {
        DirectError {
            stream: self.stream.clone(),
            reason: reason.to_string(),
            too_many: false,
        }
    }

    /// Up to `max` messages matching `filter` (wildcards allowed) from sequence `from`.
    ///
    /// The server walks the stream from `from` to fill the batch, so with a wildcard this
    /// costs the messages after `from`, matching or not: fine for a literal subject, not
    /// for finding index keys (see [`Self::last_per_subject`]).
    pub async fn page(&self, filter: &str, from: u64, max: usize) -> Result<Page, DirectError> {
        let request = serde_json::json!({"next_by_subj": filter, "seq": from.max(1), "batch": max});
        self.batch(request).await
    }

    /// Up to `max` messages matching `filter` stored at or after `since`: the first page
    /// of a read by time (later pages go on by sequence with [`Self::page`]).
    pub async fn page_since(
        &self,
        filter: &str,
        since: time::OffsetDateTime,
        max: usize,
    ) -> Result<Page, DirectError> {
        let start = since
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| self.error(e))?;
        let request =
            serde_json::json!({"next_by_subj": filter, "start_time": start, "batch": max});
        self.batch(request).await
    }

    /// The last message of every subject matching `filter`, found through the server's
    /// subject index (the cost is the matching subjects, not the stream); `None` when more
    /// than the server answers at once (1,024) match.
    pub async fn last_per_subject(&self, filter: &str) -> Result<Option<Vec<Stored>>, DirectError> {
        let request = serde_json::json!({"multi_last": [filter], "batch": MULTI_LAST_MAX});
        match self.batch(request).await {
            Ok(page) => Ok(Some(page.messages)),
            Err(e) if e.too_many => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn batch(&self, request: serde_json::Value) -> Result<Page, DirectError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.error(e))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| self.error(e))?;
        let mut page = Page::default();
        loop {
            let msg = tokio::time::timeout(REPLY_TIMEOUT, replies.next())
                .await
                .map_err(|_| self.error("no answer in time"))?
                .ok_or_else(|| self.error("the subscription ended"))?;
            match msg.status.map(|s| s.as_u16()) {
                // End of batch: the header says how many more match.
                Some(204) => {
                    page.pending = header(msg.headers.as_ref(), "Nats-Num-Pending")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return Ok(page);
                }
                Some(404) => return Ok(page),
                Some(413) => {
                    return Err(DirectError {
                        too_many: true,
                        ..self.error("too many subjects match")
                    });
                }
                Some(status) => {
                    return Err(self.error(format!(
                        "status {status}: {}",
                        msg.description.unwrap_or_default()
                    )));
                }
                None => {}
            }
            let headers = msg.headers.unwrap_or_default();
            let subject = header(Some(&headers), "Nats-Subject")
                .unwrap_or_default()
                .to_owned();
            let seq = header(Some(&headers), "Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| self.error("a reply without Nats-Sequence"))?;
            page.messages.push(Stored {
                subject,
                seq,
                headers,
                payload: msg.payload,
            });
        }
    }

    /// Every message matching `filter`, read in pages of `page_size`; `limit` bounds the
    /// total so that a runaway subject cannot exhaust memory (`truncated` says so).
    pub async fn all(
        &self,
        filter: &str,
        page_size: usize,
        limit: usize,
    ) -> Result<(Vec<Stored>, bool), DirectError> {
        let mut out: Vec<Stored> = Vec::new();
        let (_, truncated) = self.each(filter, page_size, limit, |m| out.push(m)).await?;
        Ok((out, truncated))
    }

    /// Hands every message matching `filter` to `f` as its page arrives, read in pages of
    /// `page_size` up to `limit` in all, and returns how many it read and whether it
    /// stopped at `limit`. A caller that keeps only a little of each message (an index
    /// listing keeps the key) holds one page at a time, not every message.
    pub async fn each(
        &self,
        filter: &str,
        page_size: usize,
        limit: usize,
        mut f: impl FnMut(Stored),
    ) -> Result<(usize, bool), DirectError> {
        let mut read = 0;
        let mut from = 1;
        loop {
            let page = self.page(filter, from, page_size.min(limit - read)).await?;
            let got = page.messages.len();
            if let Some(last) = page.messages.last() {
                from = last.seq + 1;
            }
            read += got;
            page.messages.into_iter().for_each(&mut f);
            if page.pending == 0 || got == 0 {
                return Ok((read, false));
            }
            if read >= limit {
                return Ok((read, true));
            }
        }
    }
}

/// A header's value as text.
fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}
