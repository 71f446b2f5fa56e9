//! Reading the audit stream `TARS_EVENTS`: one request's events by subject, and the
//! whole log page by page for `GET /audit`.
//!
//! Every event of request `<id>` is on `tars.<type>.<id>`, so a history is one batched
//! direct get per event type: no consumer is created, any replica answers, and the cost is
//! the request's own events whatever the stream holds. The audit log is read in pages of
//! a bounded number of stored events from a sequence (or, the first time, a time), so a
//! call costs its page whatever the filters keep.

use tars_domain::RequestId;
use tars_domain::events::{Envelope, Event};
use tars_observability::metrics::Metrics;

use crate::direct::{DirectError, DirectReader};
use crate::topology::{EVENTS_STREAM, Topology};

/// Events of one type of one request are few; more than this is cut.
const MAX_PER_TYPE: usize = 100;

/// Where a page of the audit log starts.
#[derive(Debug, Clone, Copy)]
pub enum From {
    /// At this stream sequence (a cursor).
    Seq(u64),
    /// At the first event stored at or after this time.
    Time(time::OffsetDateTime),
}

/// One page of the audit log.
#[derive(Debug, Default)]
pub struct LogPage {
    /// The events read, in stream order, with their sequences.
    pub events: Vec<(u64, Envelope)>,
    /// Where the next page starts, when there is more.
    pub next: Option<u64>,
}

/// Reads request histories and the audit log.
#[derive(Clone)]
pub struct EventLog {
    direct: DirectReader,
    metrics: Metrics,
}

impl EventLog {
    /// A reader of the declared `TARS_EVENTS`; reads are counted in `metrics`.
    pub fn new(topology: &Topology, metrics: &Metrics) -> Self {
        Self {
            direct: DirectReader::new(topology.js.client(), EVENTS_STREAM),
            metrics: metrics.clone(),
        }
    }

    /// The events of `id` in the order they were stored; an envelope this build cannot
    /// read is left out.
    pub async fn history(&self, id: &RequestId) -> Result<Vec<(u64, Envelope)>, DirectError> {
        let reads = Event::KINDS.iter().map(|kind| {
            let subject = format!("tars.{kind}.{id}");
            async move { self.direct.all(&subject, MAX_PER_TYPE, MAX_PER_TYPE).await }
        });
        let mut out = Vec::new();
        for read in futures::future::join_all(reads).await {
            let (messages, _) = read?;
            self.metrics
                .store_reads
                .with_label_values(&["event"])
                .inc_by(messages.len() as u64);
            out.extend(
                messages
                    .into_iter()
                    .filter_map(|m| Envelope::decode(&m.payload).ok().map(|e| (m.seq, e))),
            );
        }
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out)
    }

    /// Up to `max` stored events on subjects matching `filter` from `from`; envelopes this
    /// build cannot read are skipped (but still move the cursor).
    pub async fn page(&self, filter: &str, from: From, max: usize) -> Result<LogPage, DirectError> {
        let page = match from {
            From::Seq(seq) => self.direct.page(filter, seq, max).await?,
            From::Time(t) => self.direct.page_since(filter, t, max).await?,
        };
        self.metrics
            .store_reads
            .with_label_values(&["event"])
            .inc_by(page.messages.len() as u64);
        let next = match page.messages.last() {
            Some(last) if page.pending > 0 => Some(last.seq + 1),
            _ => None,
        };
        Ok(LogPage {
            events: page
                .messages
                .into_iter()
                .filter_map(|m| Envelope::decode(&m.payload).ok().map(|e| (m.seq, e)))
                .collect(),
            next,
        })
    }
}
