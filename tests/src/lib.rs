//! Helpers shared by the integration tests (`it/`) and the benchmark binary.

pub mod atomic;

use std::future::Future;
use std::time::{Duration, Instant};

/// The service binary `name` built beside the running test (`make test` builds the
/// workspace's binaries, with fail points, before it runs the tests).
pub fn service_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .unwrap_or_default();
    assert!(
        path.exists(),
        "{} is missing: `make test` builds it (or `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`: the only
/// way tests wait, so no test sleeps for a guessed time.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores `n` finished (denied) requests of users `<prefix>0` … `<prefix>{n-1}`, as the
/// store itself writes them (the record and its requester and status index keys), at
/// full speed with many publishes in flight: the history a year of use leaves behind,
/// for tests and benchmarks that show a call's cost does not grow with it.
pub async fn seed_finished(js: &async_nats::jetstream::Context, prefix: &str, n: usize) {
    seed_finished_by(js, n, |i| format!("{prefix}{i}")).await;
}

/// Stores `n` finished (denied) requests, the `i`-th by user `user(i)` (see
/// [`seed_finished`]).
pub async fn seed_finished_by(
    js: &async_nats::jetstream::Context,
    n: usize,
    user: impl Fn(usize) -> String,
) {
    use futures::StreamExt;
    use tars_domain::events::Decision;
    use tars_domain::machine::{self, Command, Policy};
    use tars_domain::{Permission, RequestId, RequestStatus, Source, TenantName, Username};
    use tars_jetstream::store::keys;

    let now = tars_domain::now();
    let tenant = TenantName::parse("seeded").expect("a valid tenant");
    let admin = Username::parse("seedadmin").expect("a valid username");
    let writes = (0..n).flat_map(|i| {
        let user = Username::parse(&user(i)).expect("a valid username");
        let id = RequestId::new();
        let open = machine::submit(
            id.clone(),
            user.clone(),
            tenant.clone(),
            Permission::ReadOnly,
            None,
            None,
            &machine::Intake::default(),
            now,
        )
        .record;
        let cmd = Command::Decide {
            decision: Decision::Deny,
            by: admin.clone(),
            source: Source::Rest,
        };
        let mut denied = machine::step(&open, &cmd, now, &Policy::default())
            .expect("a pending request can be denied")
            .record;
        denied.outbox.clear();
        assert_eq!(denied.status, RequestStatus::Denied);
        let record = serde_json::to_vec(&denied).expect("a record serializes");
        [
            (keys::record(&id), record),
            (keys::status(RequestStatus::Denied, &user, &id), Vec::new()),
        ]
    });
    // Atomic batches of the server's largest size, several in flight: one disk sync per
    // batch, so seeding 150,000 keys takes seconds even on a server that syncs every write.
    let writes: Vec<(String, Vec<u8>)> = writes.collect();
    let mut commits = futures::stream::iter(writes.chunks(999))
        .map(|chunk| async move {
            crate::atomic::put_all(js, "$KV.TARS_REQUESTS.", chunk)
                .await
                .expect("a seed batch committed")
        })
        .buffer_unordered(8);
    while commits.next().await.is_some() {}
}

/// How many messages durable `consumer` of `stream` still has to deliver or to see
/// acknowledged: 0 once every delivery, redeliveries included, has been settled.
pub async fn consumer_backlog(
    stream: &async_nats::jetstream::stream::Stream,
    consumer: &str,
) -> Option<u64> {
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(consumer).await.ok()?;
    let info = c.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}

/// Polls `check` every `every` until it finds nothing wrong or `timeout` has passed, and
/// returns what was still wrong then (empty: all well): for checks whose failure must say
/// what is wrong, not only that time ran out.
pub async fn until_right<F, Fut>(timeout: Duration, every: Duration, check: F) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let wrong = check().await;
        if wrong.is_empty() || Instant::now() > deadline {
            return wrong;
        }
        tokio::time::sleep(every).await;
    }
}
