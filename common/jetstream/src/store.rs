//! Request records in the `TARS_REQUESTS` bucket, changed only by compare-and-set, and the
//! index keys that find them without reading the bucket.
//!
//! Correctness rests here, not on acks: a message may be delivered twice and a read may be
//! stale, but every write names the revision it read, so two replicas racing on one
//! request can never both win.
//!
//! Keys (see [`keys`]): `<request_id>` holds a [`RequestRecord`]; `open.<user>` holds that
//! user's open (pending) requests, `{"<tenant>/<permission>": "<request_id>"}`, which makes
//! "one open request per (requester, tenant, permission)" and the per-user cap one
//! compare-and-set. Three kinds of empty index keys name records: `u.<user>.<id>` (by
//! requester), `s.<status>.<id>` (by status) and `f.<yyyymmdd>.<id>` (finished that day, for
//! retention). A change of status writes the record and its index keys as one atomic
//! batch ([`crate::atomic`]), so no crash leaves them disagreeing; a change that keeps the
//! status (a Slack reference, a lease) is a plain compare-and-set of the record.
//!
//! Listing reads index keys with batched direct gets ([`crate::direct`]) filtered by
//! subject prefix: the cost of a call is the number of keys under that prefix (one user's
//! requests, the requests in one status), never the number of records stored.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::kv;
use bytes::Bytes;

use tars_domain::machine::{self, Command, Policy, Refusal, Step};
use tars_domain::{Permission, RequestId, RequestRecord, RequestStatus, TenantName, Username};
use tars_observability::metrics::Metrics;

use crate::atomic::{self, BatchError, Expect, Write};
use crate::direct::DirectReader;
use crate::topology::{REQUESTS_BUCKET, Topology};

/// How many times a CAS loop re-reads before giving up; contention on one key beyond this
/// means something is wrong, and the caller retries later (nak) or answers 503.
const MAX_CAS_ATTEMPTS: usize = 50;

/// Index keys read per direct-get page.
const INDEX_PAGE: usize = 512;

/// At most this many index keys are read for one listing; beyond it the listing says it
/// is truncated (one user with more requests than this, or a status holding more).
pub const MAX_INDEX_ENTRIES: usize = 20_000;

/// The key layout of the bucket, public so tools and tests address the same keys.
pub mod keys {
    use super::*;

    /// A username as one key token: KBase usernames may hold `.`, which separates tokens,
    /// so it is written `=2e` (`=` is not a username character, so this is one-to-one and
    /// `u.john.>` can never list `john.doe`'s requests).
    pub fn user_token(user: &Username) -> String {
        user.as_str().replace('.', "=2e")
    }

    /// The record of `id`.
    pub fn record(id: &RequestId) -> String {
        id.as_str().to_owned()
    }

    /// The open-request index of `user`.
    pub fn open(user: &Username) -> String {
        format!("open.{}", user_token(user))
    }

    /// The prefix of `user`'s requester index keys.
    pub fn requester_prefix(user: &Username) -> String {
        format!("u.{}.", user_token(user))
    }

    /// `id` in `user`'s requester index.
    pub fn requester(user: &Username, id: &RequestId) -> String {
        format!("{}{id}", requester_prefix(user))
    }

    /// The prefix of the index of requests in `status`.
    pub fn status_prefix(status: RequestStatus) -> String {
        format!("s.{status}.")
    }

    /// `id` in the index of requests in `status`.
    pub fn status(status: RequestStatus, id: &RequestId) -> String {
        format!("{}{id}", status_prefix(status))
    }

    /// The prefix of the requests finished on `day`.
    pub fn finished_prefix(day: time::Date) -> String {
        format!(
            "f.{:04}{:02}{:02}.",
            day.year(),
            u8::from(day.month()),
            day.day()
        )
    }

    /// `id`, finished on `day`.
    pub fn finished(day: time::Date, id: &RequestId) -> String {
        format!("{}{id}", finished_prefix(day))
    }

    /// The first day whose finished requests the retention sweep has not removed yet.
    pub const RETENTION_CURSOR: &str = "cursor.retention";
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS did not answer or refused (transient: retry).
    #[error("KV unavailable: {0}")]
    Unavailable(String),
    /// A stored value no longer parses (permanent: a bug or a foreign writer).
    #[error("corrupt record {key}: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Too many concurrent writers on one key.
    #[error("too much contention on {0}")]
    Contention(String),
    /// The record does not exist.
    #[error("request {0} not found")]
    NotFound(RequestId),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Contention(_))
    }
}

/// A record with the revision it was read at, for a later compare-and-set.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its KV revision.
    pub revision: u64,
}

/// The open requests of one user: `"<tenant>/<permission>"` → request id.
pub type OpenIndex = BTreeMap<String, RequestId>;

/// What a mutation closure decided.
pub enum Change<R> {
    /// Write the modified record, then return `R`.
    Write(R),
    /// Leave the record as it is and return `R`.
    Keep(R),
}

/// Access to request records; cheap to clone.
#[derive(Clone)]
pub struct RequestStore {
    kv: kv::Store,
    js: async_nats::jetstream::Context,
    direct: DirectReader,
    prefix: String,
    metrics: Metrics,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The index key of a (tenant, permission) pair within a user's open index.
pub fn open_slot(tenant: &TenantName, permission: Permission) -> String {
    format!("{tenant}/{permission}")
}

fn json<T: serde::Serialize>(key: &str, value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })
}

/// The index writes that go with a record changing from `before` (`None`: created) to
/// `after` on `day`: the status index follows the status, the requester index is written
/// once, and a request that reached a final status is filed under the day it finished.
fn index_writes(
    before: Option<&RequestRecord>,
    after: &RequestRecord,
    day: time::Date,
) -> Vec<Write> {
    let id = &after.request_id;
    let mut out = Vec::new();
    if before.map(|b| b.status) != Some(after.status) {
        out.push(Write::put(
            keys::status(after.status, id),
            Bytes::new(),
            Expect::Any,
        ));
        if let Some(b) = before {
            out.push(Write::remove(keys::status(b.status, id)));
        }
        if after.status.is_terminal() {
            out.push(Write::put(
                keys::finished(day, id),
                Bytes::new(),
                Expect::Any,
            ));
        }
    }
    if before.is_none() {
        out.push(Write::put(
            keys::requester(&after.requester, id),
            Bytes::new(),
            Expect::Any,
        ));
    }
    out
}

/// The ids in index keys under one prefix, newest first (request ids sort by creation).
fn ids_of(keys: impl IntoIterator<Item = String>) -> Vec<RequestId> {
    let mut ids: Vec<RequestId> = keys
        .into_iter()
        .filter_map(|k| k.rsplit('.').next().and_then(|t| RequestId::parse(t).ok()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ids.reverse();
    ids
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// The records, newest first.
    pub records: Vec<RequestRecord>,
    /// The cursor of the next page (the last id of this one) when there is more.
    pub next: Option<RequestId>,
}

impl RequestStore {
    /// A store over the declared `TARS_REQUESTS` bucket; reads are counted in `metrics`.
    pub fn new(topology: &Topology, metrics: &Metrics) -> Self {
        let kv = topology.requests.clone();
        let stream = kv.stream_name.clone();
        Self {
            direct: DirectReader::new(topology.js.client(), stream),
            js: topology.js.clone(),
            prefix: format!("$KV.{REQUESTS_BUCKET}."),
            kv,
            metrics: metrics.clone(),
        }
    }

    fn count(&self, kind: &str, n: usize) {
        self.metrics
            .store_reads
            .with_label_values(&[kind])
            .inc_by(n as u64);
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.count("record", 1);
        let entry = crate::retry::ride_out(
            "KV read",
            || async { self.kv.entry(key).await.map_err(unavailable) },
            StoreError::is_transient,
        )
        .await?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let value = serde_json::from_slice(&entry.value).map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        Ok(Some(Versioned {
            value,
            revision: entry.revision,
        }))
    }

    /// Writes `value` if the key is still at `revision`. `Ok(None)` means somebody else
    /// wrote first.
    async fn update<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Option<u64>, StoreError> {
        let bytes = json(key, value)?;
        let write = || async {
            match self.kv.update(key, bytes.clone(), revision).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        };
        crate::retry::ride_out("KV write", write, StoreError::is_transient).await
    }

    /// Commits `writes` as one atomic batch; `Ok(None)` when a condition failed (somebody
    /// wrote first, or a lost ack hid our own commit: the caller re-reads either way).
    async fn commit(&self, writes: &[Write]) -> Result<Option<Vec<u64>>, StoreError> {
        let call = || async {
            match atomic::commit(&self.js, &self.prefix, writes).await {
                Ok(revs) => Ok(Some(revs)),
                Err(BatchError::Conflict) => Ok(None),
                Err(BatchError::Unavailable(e)) => Err(StoreError::Unavailable(e)),
            }
        };
        crate::retry::ride_out("KV batch", call, StoreError::is_transient).await
    }

    /// Opens a new request: the requester's open index (still at `index_revision`, `None`:
    /// absent) becomes `index`, and the record and its index keys are created, all in one
    /// durable write. `Ok(false)`: the index changed meanwhile, or the id exists; nothing
    /// was written.
    pub async fn open(
        &self,
        record: &RequestRecord,
        index: &OpenIndex,
        index_revision: Option<u64>,
    ) -> Result<bool, StoreError> {
        let open_key = keys::open(&record.requester);
        let mut writes = vec![
            Write::put(
                open_key.clone(),
                json(&open_key, index)?,
                index_revision.map_or(Expect::Absent, Expect::Revision),
            ),
            Write::put(
                keys::record(&record.request_id),
                json(record.request_id.as_str(), record)?,
                Expect::Absent,
            ),
        ];
        writes.extend(index_writes(None, record, record.created_at.date()));
        Ok(self.commit(&writes).await?.is_some())
    }

    /// The current record, if any.
    pub async fn get(
        &self,
        id: &RequestId,
    ) -> Result<Option<Versioned<RequestRecord>>, StoreError> {
        self.read(&keys::record(id)).await
    }

    /// Applies `f` to the current record and writes it back with compare-and-set,
    /// re-reading and re-applying on conflict. `f` must be a pure decision on the record
    /// it is given, because it may run several times. A change of status also moves the
    /// record's index keys, and a request leaving `pending` leaves its requester's open
    /// index, in the same atomic write.
    pub async fn modify<R>(
        &self,
        id: &RequestId,
        mut f: impl FnMut(&mut RequestRecord) -> Change<R>,
    ) -> Result<(R, Versioned<RequestRecord>), StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(current) = self.get(id).await? else {
                return Err(StoreError::NotFound(id.clone()));
            };
            // The previous revision's outbox was published from that revision: a new
            // write carries only the events of its own change.
            let mut next = current.value.clone();
            next.outbox.clear();
            next.updated_at = tars_domain::now();
            let r = match f(&mut next) {
                Change::Keep(r) => return Ok((r, current)),
                Change::Write(r) => r,
            };
            let written = if next.status == current.value.status {
                self.update(&keys::record(id), &next, current.revision)
                    .await?
            } else {
                self.move_status(&current, &next).await?
            };
            if let Some(revision) = written {
                return Ok((
                    r,
                    Versioned {
                        value: next,
                        revision,
                    },
                ));
            }
        }
        Err(StoreError::Contention(id.to_string()))
    }

    /// Writes `next` over `current` with its index keys; `Ok(None)` on a lost race.
    async fn move_status(
        &self,
        current: &Versioned<RequestRecord>,
        next: &RequestRecord,
    ) -> Result<Option<u64>, StoreError> {
        let key = keys::record(&next.request_id);
        let mut writes = vec![Write::put(
            key.clone(),
            json(&key, next)?,
            Expect::Revision(current.revision),
        )];
        writes.extend(index_writes(
            Some(&current.value),
            next,
            next.updated_at.date(),
        ));
        if current.value.status == RequestStatus::Pending {
            let slot = open_slot(&next.tenant_name, next.permission);
            if let Some(mut idx) = self.open_index(&next.requester).await?
                && idx.value.get(&slot) == Some(&next.request_id)
            {
                idx.value.remove(&slot);
                let open_key = keys::open(&next.requester);
                writes.push(Write::put(
                    open_key.clone(),
                    json(&open_key, &idx.value)?,
                    Expect::Revision(idx.revision),
                ));
            }
        }
        Ok(self.commit(&writes).await?.map(|revs| revs[0]))
    }

    /// Steps the state machine on the stored record: load, [`machine::step`], write with
    /// compare-and-set when the record changed, and on a lost race load and step again.
    ///
    /// A changed step's events go into the record's outbox in the same write (the relay
    /// publishes them), so the returned step's effects hold only what is left for the
    /// caller: a governance call, a dead letter, or, for a repeat that wrote nothing, the
    /// events to publish again. `now` is the time of the step and `cause` the stream
    /// sequence of the message being handled (0 outside a worker).
    pub async fn step(
        &self,
        id: &RequestId,
        cmd: &Command,
        now: time::OffsetDateTime,
        cause: u64,
        policy: &Policy,
    ) -> Result<Result<Step, Refusal>, StoreError> {
        let trace = tars_observability::trace::current().map(|t| t.child().header());
        let (result, stored) = self
            .modify(id, |r| match machine::step(r, cmd, now, policy) {
                Ok(s) if s.changed => {
                    let (record, rest) = s.into_outbox(cause, now, trace.clone());
                    *r = record;
                    Change::Write(Ok((true, rest)))
                }
                Ok(s) => Change::Keep(Ok((false, s.effects))),
                Err(e) => Change::Keep(Err(e)),
            })
            .await?;
        Ok(result.map(|(changed, effects)| Step {
            record: stored.value,
            changed,
            effects,
        }))
    }

    /// The open index of `user`.
    pub async fn open_index(
        &self,
        user: &Username,
    ) -> Result<Option<Versioned<OpenIndex>>, StoreError> {
        self.read(&keys::open(user)).await
    }

    /// Replaces the open index of `user` if it is still at `revision`; `Ok(false)` on a
    /// conflict, so the caller re-reads and decides again. Used to drop an entry naming a
    /// request that is no longer pending (written by an older version of TARS).
    pub async fn write_open_index(
        &self,
        user: &Username,
        index: &OpenIndex,
        revision: u64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .update(&keys::open(user), index, revision)
            .await?
            .is_some())
    }

    /// The keys under `prefix` (a removed key is not listed), with a flag saying the
    /// listing stopped at [`MAX_INDEX_ENTRIES`].
    async fn index(&self, prefix: &str) -> Result<(Vec<String>, bool), StoreError> {
        let filter = format!("{}{prefix}>", self.prefix);
        // Through the subject index first; more keys than one answer holds are paged.
        let read = || async {
            match self.direct.last_per_subject(&filter).await {
                Ok(Some(messages)) => Ok((messages, false)),
                Ok(None) => self
                    .direct
                    .all(&filter, INDEX_PAGE, MAX_INDEX_ENTRIES)
                    .await
                    .map_err(unavailable),
                Err(e) => Err(unavailable(e)),
            }
        };
        let (messages, truncated) =
            crate::retry::ride_out("KV index read", read, StoreError::is_transient).await?;
        self.count("index_entry", messages.len());
        // The last message of each key decides: a put lists it, a removal marker does not.
        let mut latest: BTreeMap<String, bool> = BTreeMap::new();
        for m in messages {
            let removed = m
                .headers
                .get("KV-Operation")
                .is_some_and(|v| v.as_str() != "PUT");
            if let Some(key) = m.subject.strip_prefix(&self.prefix) {
                latest.insert(key.to_owned(), !removed);
            }
        }
        if truncated {
            tracing::warn!(prefix, limit = MAX_INDEX_ENTRIES, "index listing truncated");
        }
        Ok((
            latest
                .into_iter()
                .filter_map(|(k, live)| live.then_some(k))
                .collect(),
            truncated,
        ))
    }

    /// The ids of every pending request, from the status index: finding them never reads
    /// a decided request.
    pub async fn pending(&self) -> Result<Vec<RequestId>, StoreError> {
        let (keys, _) = self
            .index(&keys::status_prefix(RequestStatus::Pending))
            .await?;
        Ok(ids_of(keys))
    }

    /// A page of records, newest first, older than `cursor`: those of `requester` when
    /// given (optionally only in `status`), else those in `status`, else those not
    /// finished (pending, approved, applied, failed: the current state, never history).
    pub async fn list(
        &self,
        requester: Option<&Username>,
        status: Option<RequestStatus>,
        cursor: Option<&RequestId>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let prefixes = match (requester, status) {
            (Some(u), _) => vec![keys::requester_prefix(u)],
            (None, Some(s)) => vec![keys::status_prefix(s)],
            (None, None) => RequestStatus::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(keys::status_prefix)
                .collect(),
        };
        let mut keys = Vec::new();
        for prefix in &prefixes {
            keys.extend(self.index(prefix).await?.0);
        }
        let ids: Vec<RequestId> = ids_of(keys)
            .into_iter()
            .filter(|id| cursor.is_none_or(|c| id < c))
            .collect();
        let mut records = Vec::new();
        // Read in chunks of one page: a status filter within one user's requests may skip
        // some, and the page is cut at `limit` + 1 to know whether there is more.
        for chunk in ids.chunks((limit + 1).min(32)) {
            let reads = futures::future::join_all(chunk.iter().map(|id| self.get(id))).await;
            for read in reads {
                if let Some(v) = read?
                    && status.is_none_or(|s| v.value.status == s)
                    && requester.is_none_or(|u| &v.value.requester == u)
                {
                    records.push(v.value);
                }
            }
            if records.len() > limit {
                break;
            }
        }
        let next = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.request_id.clone())
        } else {
            None
        };
        Ok(Listing { records, next })
    }

    /// Removes the records that finished before the day `now - retention` and their index
    /// keys, day by day from where the last sweep stopped, and returns how many it removed.
    /// A first sweep starts one retention period before the first day due, which covers
    /// every record finished since index keys were written. Cost: the records removed,
    /// plus one listing per day swept.
    pub async fn retire(
        &self,
        now: time::OffsetDateTime,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let due = (now - retention).date();
        let (mut day, mut revision) = match self.read::<time::Date>(keys::RETENTION_CURSOR).await? {
            Some(v) => (v.value, Some(v.revision)),
            None => ((now - retention - retention).date(), None),
        };
        let mut removed = 0;
        while day < due {
            let (keys, _) = self.index(&keys::finished_prefix(day)).await?;
            for id in ids_of(keys) {
                removed += usize::from(self.remove(&id, day).await?);
            }
            let Some(next) = day.next_day() else { break };
            let written = match revision {
                Some(rev) => self.update(keys::RETENTION_CURSOR, &next, rev).await?,
                None => {
                    let bytes = json(keys::RETENTION_CURSOR, &next)?;
                    match self.kv.create(keys::RETENTION_CURSOR, bytes).await {
                        Ok(rev) => Some(rev),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(unavailable(e)),
                    }
                }
            };
            match written {
                Some(rev) => (day, revision) = (next, Some(rev)),
                // Another replica swept meanwhile: carry on from where it is.
                None => match self.read::<time::Date>(keys::RETENTION_CURSOR).await? {
                    Some(v) => (day, revision) = (v.value, Some(v.revision)),
                    None => break,
                },
            }
        }
        Ok(removed)
    }

    /// Removes one finished record and its index keys; `false` if it was already gone.
    async fn remove(&self, id: &RequestId, day: time::Date) -> Result<bool, StoreError> {
        let Some(v) = self.get(id).await? else {
            self.commit(&[Write::remove(keys::finished(day, id))])
                .await?;
            return Ok(false);
        };
        let rec = &v.value;
        let mut writes = vec![
            Write {
                expect: Expect::Revision(v.revision),
                ..Write::remove(keys::record(id))
            },
            Write::remove(keys::requester(&rec.requester, id)),
            Write::remove(keys::status(rec.status, id)),
            Write::remove(keys::finished(day, id)),
        ];
        if !rec.status.is_terminal() {
            // Not finished after all (cannot happen: final statuses never change); keep it.
            writes.truncate(0);
            writes.push(Write::remove(keys::finished(day, id)));
        }
        Ok(self.commit(&writes).await?.is_some() && rec.status.is_terminal())
    }
}
