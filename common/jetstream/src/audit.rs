//! One request's events, read from the audit stream `TARS_EVENTS` by subject.
//!
//! Every event of request `<id>` is on `tars.<type>.<id>`, so a history is one batched
//! direct get per event type: no consumer is created, any replica answers, and the cost is
//! the request's own events whatever the stream holds.

use tars_domain::RequestId;
use tars_domain::events::{Envelope, Event};
use tars_observability::metrics::Metrics;

use crate::direct::{DirectError, DirectReader};
use crate::topology::{EVENTS_STREAM, Topology};

/// Events of one type of one request are few; more than this is cut.
const MAX_PER_TYPE: usize = 100;

/// Reads request histories.
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
}
