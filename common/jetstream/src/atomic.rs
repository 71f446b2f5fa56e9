//! Several KV keys written as one durable write: JetStream's atomic batch publish
//! (ADR-50, nats-server 2.12+, `allow_atomic` on the bucket's stream).
//!
//! A request record and the index keys that find it change together or not at all, so no
//! crash can leave a record its indexes do not name, or an index naming a state the record
//! never reached. Every message of a batch may carry its own compare-and-set expectation;
//! the server checks them all at commit, under the stream's lock, against the state before
//! the batch, and refuses the whole batch if one fails.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;

/// What a write expects of its key before the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: the write goes through whatever the key holds.
    Any,
    /// The key has never been written (or its messages were all removed).
    Absent,
    /// The key's last message is at this revision (stream sequence).
    Revision(u64),
}

/// One key's part of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store this value.
    Put(Bytes),
    /// Remove every value of the key, leaving a marker that itself vanishes after a second,
    /// so removed index keys cost nothing to later listings.
    Remove,
}

/// A write of one key.
#[derive(Debug, Clone)]
pub struct Write {
    /// The key within the bucket.
    pub key: String,
    /// What to do.
    pub op: Op,
    /// The compare-and-set condition.
    pub expect: Expect,
}

impl Write {
    /// Store `value` at `key` if `expect` holds.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>, expect: Expect) -> Self {
        Self {
            key: key.into(),
            op: Op::Put(value.into()),
            expect,
        }
    }

    /// Remove `key`, whatever it holds.
    pub fn remove(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: Op::Remove,
            expect: Expect::Any,
        }
    }
}

/// How a batch ended when it did not commit.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A compare-and-set condition failed: somebody else wrote first; nothing was stored.
    #[error("a key changed since it was read")]
    Conflict,
    /// NATS did not answer or refused for a reason worth trying again.
    #[error("atomic write unavailable: {0}")]
    Unavailable(String),
}

/// How long a removal marker stays (the server's minimum message TTL).
const MARKER_TTL: &str = "1s";

/// Writes `writes` to the bucket whose subjects start with `prefix` (`$KV.<bucket>.`) as
/// one atomic batch and returns the revision each write got, in order.
pub async fn commit(
    js: &jetstream::Context,
    prefix: &str,
    writes: &[Write],
) -> Result<Vec<u64>, BatchError> {
    let Some(last) = writes.len().checked_sub(1) else {
        return Ok(Vec::new());
    };
    let client = js.client();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut ack = None;
    for (i, w) in writes.iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        match w.expect {
            Expect::Any => {}
            Expect::Absent => h.insert("Nats-Expected-Last-Subject-Sequence", "0"),
            Expect::Revision(r) => h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                r.to_string().as_str(),
            ),
        }
        let payload = match &w.op {
            Op::Put(v) => v.clone(),
            Op::Remove => {
                h.insert("KV-Operation", "PURGE");
                h.insert("Nats-Rollup", "sub");
                h.insert("Nats-TTL", MARKER_TTL);
                Bytes::new()
            }
        };
        let subject = format!("{prefix}{}", w.key);
        if i == last {
            // A crash here leaves a batch the server never commits (it drops it after
            // 10 s): nothing of it is stored.
            fail::fail_point!("atomic.before_commit");
            h.insert("Nats-Batch-Commit", "1");
            let sent = js
                .send_publish(
                    subject,
                    jetstream::message::PublishMessage::build()
                        .headers(h)
                        .payload(payload),
                )
                .await
                .map_err(|e| BatchError::Unavailable(e.to_string()))?;
            ack = Some(tokio::time::timeout(Duration::from_secs(10), sent).await);
        } else {
            client
                .publish_with_headers(subject, h, payload)
                .await
                .map_err(|e| BatchError::Unavailable(e.to_string()))?;
        }
    }
    let ack = match ack {
        Some(Ok(Ok(ack))) => ack,
        Some(Ok(Err(e))) if e.kind() == PublishErrorKind::WrongLastSequence => {
            return Err(BatchError::Conflict);
        }
        Some(Ok(Err(e))) => return Err(BatchError::Unavailable(e.to_string())),
        Some(Err(_)) | None => return Err(BatchError::Unavailable("no ack in time".into())),
    };
    // The batch's messages have consecutive sequences ending at the ack's.
    let first = ack.sequence + 1 - writes.len() as u64;
    Ok((0..writes.len() as u64).map(|i| first + i).collect())
}
