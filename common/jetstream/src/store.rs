//! Request records in the `TARS_REQUESTS` bucket, changed only by compare-and-set.
//!
//! Correctness rests here, not on acks: a message may be delivered twice and a read may be
//! stale, but `create` succeeds once per key and `update` succeeds only on the revision it
//! read, so two replicas racing on one request can never both win.
//!
//! Keys: `<request_id>` holds a [`RequestRecord`]; `open.<username>` holds that user's
//! open (pending) requests, `{"<tenant>/<permission>": "<request_id>"}`, which makes
//! "one open request per (requester, tenant, permission)" and the per-user cap a single
//! CAS write.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use bytes::Bytes;

use tars_domain::machine::{self, Command, Policy, Refusal, Step};
use tars_domain::{Permission, RequestId, RequestRecord, RequestStatus, TenantName, Username};

/// How many times a CAS loop re-reads before giving up; contention on one key beyond this
/// means something is wrong, and the caller retries later (nak) or answers 503.
const MAX_CAS_ATTEMPTS: usize = 50;

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
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The index key of a (tenant, permission) pair within a user's open index.
pub fn open_slot(tenant: &TenantName, permission: Permission) -> String {
    format!("{tenant}/{permission}")
}

fn open_key(user: &Username) -> String {
    format!("open.{user}")
}

impl RequestStore {
    /// A store over the `TARS_REQUESTS` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
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

    /// Writes `value` if the key is still at `revision` (`None`: the key must not exist,
    /// or be deleted). `Ok(None)` means somebody else wrote first.
    async fn write_if<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let bytes =
            Bytes::from(
                serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
                    key: key.to_owned(),
                    source,
                })?,
            );
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

    /// Creates a record; `Ok(false)` if one with that id already exists.
    pub async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        Ok(self
            .write_if(record.request_id.as_str(), record, None)
            .await?
            .is_some())
    }

    /// The current record, if any.
    pub async fn get(
        &self,
        id: &RequestId,
    ) -> Result<Option<Versioned<RequestRecord>>, StoreError> {
        self.read(id.as_str()).await
    }

    /// Applies `f` to the current record and writes it back with compare-and-set,
    /// re-reading and re-applying on conflict. `f` must be a pure decision on the record
    /// it is given, because it may run several times.
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
            match f(&mut next) {
                Change::Keep(r) => return Ok((r, current)),
                Change::Write(r) => {
                    if let Some(revision) = self
                        .write_if(id.as_str(), &next, Some(current.revision))
                        .await?
                    {
                        if current.value.status == RequestStatus::Pending
                            && next.status != RequestStatus::Pending
                        {
                            // The status has changed durably whatever happens here: a
                            // failure leaves a stale index entry, which the next submission
                            // for that slot and the expiry sweep remove.
                            if let Err(e) = self.close_open(&next).await {
                                tracing::warn!(error = %e, request_id = %id, "left a stale open-index entry");
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
                }
            }
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

    /// Removes `id` from its requester's open index if the request is no longer pending:
    /// the repair for an index entry a failed removal left behind.
    pub async fn forget_if_settled(&self, id: &RequestId) -> Result<(), StoreError> {
        match self.get(id).await? {
            Some(v) if v.value.status != RequestStatus::Pending => self.close_open(&v.value).await,
            _ => Ok(()),
        }
    }

    /// The open index of `user`.
    pub async fn open_index(
        &self,
        user: &Username,
    ) -> Result<Option<Versioned<OpenIndex>>, StoreError> {
        self.read(&open_key(user)).await
    }

    /// Replaces the open index of `user` if it is still at `revision`; `Ok(false)` on a
    /// conflict, so the caller re-reads and decides again.
    pub async fn write_open_index(
        &self,
        user: &Username,
        index: &OpenIndex,
        revision: Option<u64>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .write_if(&open_key(user), index, revision)
            .await?
            .is_some())
    }

    /// Removes a request that left `pending` from its requester's open index.
    pub async fn close_open(&self, record: &RequestRecord) -> Result<(), StoreError> {
        fail::fail_point!("store.close_open", |_| Err(StoreError::Unavailable(
            "fail point store.close_open".into()
        )));
        let slot = open_slot(&record.tenant_name, record.permission);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(mut idx) = self.open_index(&record.requester).await? else {
                return Ok(());
            };
            if idx.value.get(&slot) != Some(&record.request_id) {
                return Ok(());
            }
            idx.value.remove(&slot);
            if self
                .write_open_index(&record.requester, &idx.value, Some(idx.revision))
                .await?
            {
                return Ok(());
            }
        }
        Err(StoreError::Contention(open_key(&record.requester)))
    }

    /// The ids of every pending request, read from the open-request indexes (one key per
    /// user with something open), so finding pending requests never reads decided ones.
    pub async fn pending(&self) -> Result<Vec<RequestId>, StoreError> {
        let mut ids = Vec::new();
        for key in self.keys().await?.iter().filter(|k| k.starts_with("open.")) {
            if let Some(idx) = self.read::<OpenIndex>(key).await? {
                ids.extend(idx.value.into_values());
            }
        }
        Ok(ids)
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt;
        self.kv
            .keys()
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Every record, newest first, for listings. This scans the bucket: fine for the
    /// thousands of requests a lakehouse sees, to be replaced by an index if that changes.
    pub async fn all(&self) -> Result<Vec<RequestRecord>, StoreError> {
        let keys = self.keys().await?;
        let mut out = Vec::new();
        for key in keys.iter().filter(|k| !k.starts_with("open.")) {
            if let Some(v) = self.read::<RequestRecord>(key).await? {
                out.push(v.value);
            }
        }
        out.sort_by(|a, b| b.request_id.cmp(&a.request_id));
        Ok(out)
    }
}
