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
//! compare-and-set. An entry is not removed when its request is decided (that would be
//! a read and a write more per decision): the user's next submission drops the entries
//! it finds settled, see [`RequestStore::prune_open`], so the index never holds more
//! than the cap and a settled entry never blocks anybody. Three kinds of empty index keys name records: `s.<status>.<user>.<id>`
//! (by status, and by requester through the filter `s.*.<user>.*`: one key serves both
//! listings, so a submission writes one index key, not two), `f.<yyyymmdd>.<id>`
//! (finished that day, for retention) and `x.<yyyymmdd>.<id>` (time-bound access ending
//! that day). Buckets written before that layout also hold `u.<user>.<id>` and
//! `s.<status>.<id>`: they are still read (and repaired), never written. They are written *before* the change they describe and removed after it,
//! so a crash can leave a key naming a change that never happened, never a change that
//! no key names; readers check the record and remove keys that can never be right
//! again (see [`RequestStatus::may_reach`]). A change that keeps the status (a Slack
//! reference, a lease) is one compare-and-set of the record.
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

    /// The filter prefix of `user`'s status keys, whatever the status: `s.*.<user>.`.
    pub fn requester_prefix(user: &Username) -> String {
        format!("s.*.{}.", user_token(user))
    }

    /// The prefix of `user`'s requester keys of the layout before status keys named the
    /// requester; read, never written.
    pub fn legacy_requester_prefix(user: &Username) -> String {
        format!("u.{}.", user_token(user))
    }

    /// `id` in `user`'s requester keys of the earlier layout.
    pub fn legacy_requester(user: &Username, id: &RequestId) -> String {
        format!("{}{id}", legacy_requester_prefix(user))
    }

    /// The prefix of the index of requests in `status` (both layouts).
    pub fn status_prefix(status: RequestStatus) -> String {
        format!("s.{status}.")
    }

    /// `id` of `user` in the index of requests in `status`.
    pub fn status(status: RequestStatus, user: &Username, id: &RequestId) -> String {
        format!("{}{}.{id}", status_prefix(status), user_token(user))
    }

    /// `id`'s status key of the earlier layout, without the requester.
    pub fn legacy_status(status: RequestStatus, id: &RequestId) -> String {
        format!("{}{id}", status_prefix(status))
    }

    /// The status a status-index key files its request under.
    pub fn status_of(key: &str) -> Option<RequestStatus> {
        key.strip_prefix("s.")?.split('.').next()?.parse().ok()
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

    /// The prefix of the grants whose access ends on `day`.
    pub fn access_ends_prefix(day: time::Date) -> String {
        format!(
            "x.{:04}{:02}{:02}.",
            day.year(),
            u8::from(day.month()),
            day.day()
        )
    }

    /// `id`, whose access ends on `day`.
    pub fn access_ends(day: time::Date, id: &RequestId) -> String {
        format!("{}{id}", access_ends_prefix(day))
    }

    /// The first day on which grants may still be waiting for their access to end.
    pub const ACCESS_CURSOR: &str = "cursor.access";
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
    /// Behind an `Arc`: a KV handle carries its stream's whole configuration, a dozen
    /// allocations to clone.
    kv: std::sync::Arc<kv::Store>,
    js: async_nats::jetstream::Context,
    direct: DirectReader,
    prefix: String,
    metrics: Metrics,
    /// Whether the bucket has replicas that may trail its leader (see `leader_entry`).
    replicated: bool,
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

/// The index keys written before a record changes from `before` (`None`: created) to
/// `after` on `day`: the key of the new status (which also lists it under its requester),
/// the day key of a request reaching a final status, and the day its access ends. Written first, a key may name a change
/// that then lost its race (or a record a crash never wrote): readers check the record,
/// and repair keys that can never be right again.
fn keys_before(
    before: Option<&RequestRecord>,
    after: &RequestRecord,
    day: time::Date,
) -> Vec<String> {
    let id = &after.request_id;
    let mut out = Vec::new();
    if before.map(|b| b.status) != Some(after.status) {
        out.push(keys::status(after.status, &after.requester, id));
        if after.status.is_terminal() {
            out.push(keys::finished(day, id));
        }
    }
    if let Some(ends) = after.access_expires_at
        && before.and_then(|b| b.access_expires_at) != Some(ends)
    {
        out.push(keys::access_ends(ends.date(), id));
    }
    out
}

/// How long after its id was made a request's record must exist: an index key naming
/// a record that is still missing by then belongs to a submission that crashed.
const RECORD_GRACE: time::Duration = time::Duration::minutes(1);

/// Whether the record of `id` can no longer be written by its submission: missing now,
/// it never will be (the submission crashed, or the record was retired), so an index
/// entry naming it is stale.
pub fn past_record_grace(id: &RequestId) -> bool {
    id.created_at()
        .is_some_and(|t| tars_domain::now() - t > RECORD_GRACE)
}

/// The request an index key names (its last token).
fn id_of(key: &str) -> Option<RequestId> {
    key.rsplit('.')
        .next()
        .and_then(|t| RequestId::parse(t).ok())
}

/// The ids in index keys under one prefix, newest first (request ids sort by creation).
fn ids_of(keys: impl IntoIterator<Item = String>) -> Vec<RequestId> {
    let mut ids: Vec<RequestId> = keys
        .into_iter()
        .filter_map(|k| id_of(&k))
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
        let kv = std::sync::Arc::new(topology.requests.clone());
        let stream = kv.stream_name.clone();
        let replicated = kv.stream.cached_info().config.num_replicas > 1;
        Self {
            replicated,
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

    /// The value and revision of `key` now, or `None` when it holds none (never written,
    /// deleted or purged), read from the stream's leader. A KV read of a bucket with
    /// `allow_direct` may be answered by any replica, also one that has not applied the
    /// latest write yet: on a cluster, a worker then found no record for the event it was
    /// handling and an approval the ingress had accepted was dead-lettered
    /// (`tests/cluster`'s partition test). Listings stay direct reads; what they list is
    /// read here. A bucket without replicas has only its leader to answer, so there the
    /// cheaper direct get is the same read (no JSON API answer to decode).
    async fn leader_entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        if !self.replicated {
            let entry = crate::retry::ride_out(
                "KV read",
                || async { self.kv.entry(key).await.map_err(unavailable) },
                StoreError::is_transient,
            )
            .await?;
            return Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| (e.value, e.revision)));
        }
        let subject = format!("{}{key}", self.kv.prefix);
        let message = crate::retry::ride_out(
            "KV read",
            || async {
                match self
                    .kv
                    .stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                {
                    Ok(message) => Ok(Some(message)),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(unavailable(e)),
                }
            },
            StoreError::is_transient,
        )
        .await?;
        Ok(message
            .filter(|m| {
                // Deletes and purges are markers with a `KV-Operation` header.
                m.headers
                    .get("KV-Operation")
                    .is_none_or(|op| op.as_str() == "PUT")
            })
            .map(|m| (m.payload, m.sequence)))
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.count("record", 1);
        let Some((payload, revision)) = self.leader_entry(key).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&payload).map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        Ok(Some(Versioned { value, revision }))
    }

    /// Writes `value` if the key is still at `revision` (`None`: the key must not exist,
    /// or be deleted). `Ok(None)` means somebody else wrote first.
    async fn write_if<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let bytes = json(key, value)?;
        let write = || async {
            match revision {
                Some(rev) => match self.kv.update(key, bytes.clone(), rev).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(unavailable(e)),
                },
                None => match self.kv.create(key, bytes.clone()).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                    Err(e) => Err(unavailable(e)),
                },
            }
        };
        crate::retry::ride_out("KV write", write, StoreError::is_transient).await
    }

    /// Writes the empty index keys `keys`, all at once.
    async fn put_keys(&self, keys: &[String]) -> Result<(), StoreError> {
        let puts = keys.iter().map(|key| {
            crate::retry::ride_out(
                "KV index write",
                || async {
                    self.kv
                        .put(key.as_str(), Bytes::new())
                        .await
                        .map_err(unavailable)
                },
                StoreError::is_transient,
            )
        });
        for put in futures::future::join_all(puts).await {
            put?;
        }
        Ok(())
    }

    /// Removes every value of `key`, leaving a purge marker that itself vanishes after a
    /// second (`Nats-TTL`), so removed index keys cost later listings nothing.
    async fn purge(&self, key: &str) -> Result<(), StoreError> {
        let subject = format!("{}{key}", self.prefix);
        let call = || async {
            let mut h = async_nats::HeaderMap::new();
            h.insert("KV-Operation", "PURGE");
            h.insert("Nats-Rollup", "sub");
            h.insert("Nats-TTL", "1s");
            self.js
                .publish_with_headers(subject.clone(), h, Bytes::new())
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)
                .map(|_| ())
        };
        crate::retry::ride_out("KV purge", call, StoreError::is_transient).await
    }

    /// Creates a request: its index keys first, then the record (create-only). `Ok(false)`
    /// if a record with that id already exists.
    pub async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        self.put_keys(&keys_before(None, record, record.created_at.date()))
            .await?;
        fail::fail_point!("store.after_index_keys", |_| Err(StoreError::Unavailable(
            "fail point store.after_index_keys".into()
        )));
        Ok(self
            .write_if(&keys::record(&record.request_id), record, None)
            .await?
            .is_some())
    }

    /// Opens a new request: the requester's open index, still at `revision` (`None`: it
    /// must not exist yet), becomes `open`, which names the new record, while the record's
    /// index keys are written beside it; then the record itself (create-only). The index
    /// keys do not wait for the compare-and-set because a key naming a record that was
    /// never written is harmless (readers skip it, and drop it after the grace): a lost
    /// race costs two such keys, a won one a round trip less. `Ok(None)`: the open index
    /// changed meanwhile, re-read and decide again; `Ok(Some(false))`: a record with that
    /// id exists already.
    pub async fn open(
        &self,
        open: &OpenIndex,
        revision: Option<u64>,
        record: &RequestRecord,
    ) -> Result<Option<bool>, StoreError> {
        let keys = keys_before(None, record, record.created_at.date());
        let (won, written) = futures::future::join(
            self.write_if(&keys::open(&record.requester), open, revision),
            self.put_keys(&keys),
        )
        .await;
        if won?.is_none() {
            return Ok(None);
        }
        written?;
        fail::fail_point!("submit.after_index");
        fail::fail_point!("store.after_index_keys", |_| Err(StoreError::Unavailable(
            "fail point store.after_index_keys".into()
        )));
        Ok(Some(
            self.write_if(&keys::record(&record.request_id), record, None)
                .await?
                .is_some(),
        ))
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
    /// it is given, because it may run several times.
    ///
    /// A change of status writes the new status's index keys first, then the record, then
    /// removes the old status's key. That follow-up is a repair if it fails: the relay
    /// makes it again for every revision that left `pending`, and readers drop keys that
    /// can never be right. The requester's open-index entry is left for their next
    /// submission to drop ([`RequestStore::prune_open`]).
    pub async fn modify<R>(
        &self,
        id: &RequestId,
        f: impl FnMut(&mut RequestRecord) -> Change<R>,
    ) -> Result<(R, Versioned<RequestRecord>), StoreError> {
        self.modify_from(id, None, f).await
    }

    /// [`Self::modify`], starting from `known`, a version of the record the caller has just
    /// read or written, instead of reading it again: the compare-and-set refuses it if the
    /// record moved on since, and the next attempt reads the record as `modify` does. A
    /// caller that reads a record and then changes it pays one read, not two. When `f`
    /// keeps `known` unchanged, the decision stands as of when `known` was read.
    pub async fn modify_from<R>(
        &self,
        id: &RequestId,
        mut known: Option<Versioned<RequestRecord>>,
        mut f: impl FnMut(&mut RequestRecord) -> Change<R>,
    ) -> Result<(R, Versioned<RequestRecord>), StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = match known.take() {
                Some(known) => known,
                None => match self.get(id).await? {
                    Some(current) => current,
                    None => return Err(StoreError::NotFound(id.clone())),
                },
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
            let moved = next.status != current.value.status;
            if moved {
                self.put_keys(&keys_before(
                    Some(&current.value),
                    &next,
                    next.updated_at.date(),
                ))
                .await?;
                fail::fail_point!("store.after_index_keys", |_| Err(StoreError::Unavailable(
                    "fail point store.after_index_keys".into()
                )));
            }
            let Some(revision) = self
                .write_if(&keys::record(id), &next, Some(current.revision))
                .await?
            else {
                continue;
            };
            if moved {
                let old = keys::status(current.value.status, &current.value.requester, id);
                if let Err(e) = self.purge(&old).await {
                    tracing::warn!(error = %e, request_id = %id, "left a stale status key");
                }
                if let Err(e) = self.forget_access(&next).await {
                    tracing::warn!(error = %e, request_id = %id, "left a stale access key");
                }
            }
            return Ok((
                r,
                Versioned {
                    value: next,
                    revision,
                },
            ));
        }
        Err(StoreError::Contention(id.to_string()))
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

    /// Finishes what a request that left `pending` may have left behind: its `s.pending`
    /// key. The relay calls it for every such revision; the expiry sweep for a pending
    /// key whose request was decided.
    pub async fn forget_if_settled(&self, record: &RequestRecord) -> Result<(), StoreError> {
        if record.status == RequestStatus::Pending {
            return Ok(());
        }
        // Usually the writer removed it already: a read is cheaper than a second purge.
        let key = keys::status(
            RequestStatus::Pending,
            &record.requester,
            &record.request_id,
        );
        if self.holds(&key).await? {
            self.purge(&key).await?;
        }
        Ok(())
    }

    /// Removes the access key of a grant that is no longer applied (its access is ending
    /// or ended); the access sweep calls it too for keys it finds stale.
    pub async fn forget_access(&self, record: &RequestRecord) -> Result<(), StoreError> {
        match record.access_expires_at {
            Some(ends) if record.status != RequestStatus::Applied => {
                self.purge(&keys::access_ends(ends.date(), &record.request_id))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The grants whose access may have ended by `now`: every id under the access keys
    /// of the days from the cursor to today. Days before today with no key left move the
    /// cursor past them, so a sweep reads the days since the last one (one listing each)
    /// and the grants due, never every applied request. The caller steps each one; a grant
    /// due later today stays until it is.
    pub async fn access_due(
        &self,
        now: time::OffsetDateTime,
    ) -> Result<Vec<RequestId>, StoreError> {
        let today = now.date();
        let (mut day, mut revision) = match self.read::<time::Date>(keys::ACCESS_CURSOR).await? {
            Some(v) => (v.value, v.revision),
            // Nothing was due before the first sweep (access keys are written with an end
            // in the future): start today, and remember it, or tomorrow's sweep would
            // start tomorrow and miss the rest of today.
            None => match self.write_if(keys::ACCESS_CURSOR, &today, None).await? {
                Some(rev) => (today, rev),
                None => match self.read::<time::Date>(keys::ACCESS_CURSOR).await? {
                    Some(v) => (v.value, v.revision),
                    None => return Err(StoreError::Contention(keys::ACCESS_CURSOR.into())),
                },
            },
        };
        let mut due = Vec::new();
        let mut advancing = true;
        while day <= today {
            let (keys, _) = self.index(&keys::access_ends_prefix(day)).await?;
            let Some(next) = day.next_day() else { break };
            if keys.is_empty() && day < today && advancing {
                match self
                    .write_if(keys::ACCESS_CURSOR, &next, Some(revision))
                    .await?
                {
                    Some(rev) => revision = rev,
                    // Another replica moved it: this pass still reads the days it read.
                    None => advancing = false,
                }
            } else {
                advancing = false;
            }
            due.extend(ids_of(keys));
            day = next;
        }
        Ok(due)
    }

    /// The grants whose access ends between today and `until` (by day): the ones the
    /// sweep may have to warn. Cost: one listing per day in the window.
    pub async fn access_ending_by(
        &self,
        now: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Result<Vec<RequestId>, StoreError> {
        let mut day = now.date();
        let mut out = Vec::new();
        while day <= until.date() {
            out.extend(ids_of(self.index(&keys::access_ends_prefix(day)).await?.0));
            let Some(next) = day.next_day() else { break };
            day = next;
        }
        Ok(out)
    }

    /// Whether `key` holds a value now.
    async fn holds(&self, key: &str) -> Result<bool, StoreError> {
        self.count("index_entry", 1);
        Ok(self.leader_entry(key).await?.is_some())
    }

    /// The open index of `user`.
    pub async fn open_index(
        &self,
        user: &Username,
    ) -> Result<Option<Versioned<OpenIndex>>, StoreError> {
        self.read(&keys::open(user)).await
    }

    /// Replaces the open index of `user` if it is still at `revision` (`None`: it must not
    /// exist yet); `Ok(false)` on a conflict, so the caller re-reads and decides again.
    pub async fn write_open_index(
        &self,
        user: &Username,
        index: &OpenIndex,
        revision: Option<u64>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .write_if(&keys::open(user), index, revision)
            .await?
            .is_some())
    }

    /// Drops from `open` (a user's open index, about to be written back) every entry
    /// whose request is no longer pending, and every entry naming a record its crashed
    /// submission never wrote once the grace for writing it has passed; `true` if it
    /// dropped any. Decisions leave their entry behind, so this runs when a submission
    /// would otherwise be refused for the cap: at most the cap's records are read, once
    /// per submission that reaches it.
    pub async fn prune_open(&self, open: &mut OpenIndex) -> Result<bool, StoreError> {
        let before = open.len();
        let mut settled = Vec::new();
        for (slot, id) in open.iter() {
            let gone = match self.get(id).await? {
                Some(r) => r.value.status != RequestStatus::Pending,
                None => past_record_grace(id),
            };
            if gone {
                settled.push(slot.clone());
            }
        }
        for slot in settled {
            open.remove(&slot);
        }
        Ok(open.len() < before)
    }

    /// The keys under `prefix` (a removed key is not listed), with a flag saying the
    /// listing stopped at [`MAX_INDEX_ENTRIES`].
    async fn index(&self, prefix: &str) -> Result<(Vec<String>, bool), StoreError> {
        self.matching(&format!("{prefix}>")).await
    }

    /// The keys matching the subject pattern `pattern` (wildcards allowed), as [`Self::index`].
    async fn matching(&self, pattern: &str) -> Result<(Vec<String>, bool), StoreError> {
        let prefix = pattern;
        let filter = format!("{}{pattern}", self.prefix);
        // The last message of each key decides: a put lists it, a removal marker does not.
        let note = |latest: &mut BTreeMap<String, bool>, m: crate::direct::Stored| {
            let removed = m
                .headers
                .get("KV-Operation")
                .is_some_and(|v| v.as_str() != "PUT");
            if let Some(key) = m.subject.strip_prefix(&self.prefix) {
                latest.insert(key.to_owned(), !removed);
            }
        };
        // Through the subject index first; more keys than one answer holds are paged, and
        // each page is reduced to its keys as it arrives (a listing of many keys holds
        // the keys, not every message with its headers).
        let read = || async {
            let mut latest = BTreeMap::new();
            match self.direct.last_per_subject(&filter).await {
                Ok(Some(messages)) => {
                    let n = messages.len();
                    messages.into_iter().for_each(|m| note(&mut latest, m));
                    Ok((latest, n, false))
                }
                Ok(None) => {
                    let (n, truncated) = self
                        .direct
                        .each(&filter, INDEX_PAGE, MAX_INDEX_ENTRIES, |m| {
                            note(&mut latest, m)
                        })
                        .await
                        .map_err(unavailable)?;
                    Ok((latest, n, truncated))
                }
                Err(e) => Err(unavailable(e)),
            }
        };
        let (latest, read, truncated) =
            crate::retry::ride_out("KV index read", read, StoreError::is_transient).await?;
        self.count("index_entry", read);
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

    /// Removes an index key whose request was never written (its submission crashed),
    /// once the grace for writing it has passed.
    async fn drop_orphan(&self, key: &str, id: &RequestId) -> Result<(), StoreError> {
        if past_record_grace(id) {
            self.purge(key).await?;
        }
        Ok(())
    }

    /// The ids of every pending request, from the status index: finding them never reads
    /// a decided request. An id may belong to a request that has just been decided (its
    /// key is removed right after); the caller reads the record before acting.
    pub async fn pending(&self) -> Result<Vec<RequestId>, StoreError> {
        let (keys, _) = self
            .index(&keys::status_prefix(RequestStatus::Pending))
            .await?;
        Ok(ids_of(keys))
    }

    /// Repairs the `s.pending` keys of `id` when its record says otherwise: removes them
    /// if the request left `pending` or was never written (then its key is found by the
    /// id alone: `s.pending.*.<id>`). Keys of the earlier layout are repaired too.
    pub async fn repair_pending(&self, id: &RequestId) -> Result<(), StoreError> {
        let legacy = keys::legacy_status(RequestStatus::Pending, id);
        match self.get(id).await? {
            Some(v) if v.value.status == RequestStatus::Pending => Ok(()),
            Some(v) => {
                self.forget_if_settled(&v.value).await?;
                if self.holds(&legacy).await? {
                    self.purge(&legacy).await?;
                }
                Ok(())
            }
            None => {
                let pattern = format!("{}*.{id}", keys::status_prefix(RequestStatus::Pending));
                let (found, _) = self.matching(&pattern).await?;
                for key in found.iter().chain([&legacy]) {
                    self.drop_orphan(key, id).await?;
                }
                Ok(())
            }
        }
    }

    /// A page of records, newest first, older than `cursor`: those of `requester` when
    /// given (optionally only in `status`), else those in `status`, else those not
    /// finished (pending, approved, applied, failed: the current state, never history).
    /// Every record is read, so a key that names a change that never happened is not
    /// listed, and one that can never be right again is removed.
    pub async fn list(
        &self,
        requester: Option<&Username>,
        status: Option<RequestStatus>,
        cursor: Option<&RequestId>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let prefixes = match (requester, status) {
            (Some(u), _) => vec![keys::requester_prefix(u), keys::legacy_requester_prefix(u)],
            (None, Some(s)) => vec![keys::status_prefix(s)],
            (None, None) => RequestStatus::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(keys::status_prefix)
                .collect(),
        };
        let mut found: Vec<(RequestId, String)> = Vec::new();
        for prefix in &prefixes {
            for key in self.index(prefix).await?.0 {
                if let Some(id) = id_of(&key)
                    && cursor.is_none_or(|c| &id < c)
                {
                    found.push((id, key));
                }
            }
        }
        // Newest first; one id may stand under two status keys (one written ahead of a
        // change), and is listed once.
        found.sort_by(|a, b| b.0.cmp(&a.0));
        let mut records: Vec<RequestRecord> = Vec::new();
        // Read in chunks: a filter may skip some, and the page is cut at `limit` + 1 to
        // know whether there is more.
        for chunk in found.chunks((limit + 1).min(32)) {
            let reads = futures::future::join_all(chunk.iter().map(|(id, _)| self.get(id))).await;
            for ((id, key), read) in chunk.iter().zip(reads) {
                let Some(v) = read? else {
                    self.drop_orphan(key, id).await?;
                    continue;
                };
                if let Some(k) = keys::status_of(key)
                    && k != v.value.status
                {
                    if !v.value.status.may_reach(k) {
                        self.purge(key).await?;
                    }
                    continue;
                }
                if status.is_none_or(|s| v.value.status == s)
                    && requester.is_none_or(|u| &v.value.requester == u)
                    && records
                        .last()
                        .is_none_or(|r| r.request_id != v.value.request_id)
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
            let written = self
                .write_if(keys::RETENTION_CURSOR, &next, revision)
                .await?;
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

    /// Removes one finished record and its index keys, the day key last so that a sweep
    /// stopped half way finds the record again; `false` if it was gone (or not final: a
    /// day key written for a change that lost its race).
    async fn remove(&self, id: &RequestId, day: time::Date) -> Result<bool, StoreError> {
        let gone = match self.get(id).await? {
            Some(v) if v.value.status.is_terminal() => {
                let rec = &v.value;
                self.purge(&keys::status(rec.status, &rec.requester, id))
                    .await?;
                // Keys of the earlier layout, if this record has them: a read is cheaper
                // than a removal marker written for nothing.
                for key in [
                    keys::legacy_requester(&rec.requester, id),
                    keys::legacy_status(rec.status, id),
                ] {
                    if self.holds(&key).await? {
                        self.purge(&key).await?;
                    }
                }
                self.forget_open(&rec.requester, id).await?;
                self.purge(&keys::record(id)).await?;
                true
            }
            _ => false,
        };
        self.purge(&keys::finished(day, id)).await?;
        Ok(gone)
    }

    /// Drops the entry naming `id` from `user`'s open index, if it still has one (a
    /// decided request's entry stays until the user's next submission): a retired id
    /// must never be named again, or a later request would be created under it.
    async fn forget_open(&self, user: &Username, id: &RequestId) -> Result<(), StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(v) = self.open_index(user).await? else {
                return Ok(());
            };
            let mut open = v.value;
            let before = open.len();
            open.retain(|_, named| named != id);
            if open.len() == before {
                return Ok(());
            }
            if self
                .write_if(&keys::open(user), &open, Some(v.revision))
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(StoreError::Contention(format!("open index of {user}")))
    }
}
