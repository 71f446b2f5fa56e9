//! The four services on a cluster (streams and bucket at three replicas), the stand-ins
//! they call, and the load and checks both cluster tests run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tars_observability::metrics::Metrics;
use tars_testkit::standin::governance::FakeGovernance;
use tars_testkit::standin::kbase::FakeKbase;
use tars_testkit::standin::slack::FakeSlack;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stack::{ADMIN_TOKEN, BOT_TOKEN, CHANNEL, GOV_TOKEN, common, worker_args};

/// How a client treats the ingress's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Every call must be accepted the first time (202).
    Strict,
    /// A 503 (NATS unavailable) is tried again, as its `Retry-After` invites; a submission
    /// tried again finds its request (200), an approval tried again may find it decided by
    /// the attempt that answered 503 (409).
    Retrying,
}

pub struct Pipeline {
    pub kbase: FakeKbase,
    pub slack: FakeSlack,
    pub governance: FakeGovernance,
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    served: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    /// Calls the ingress answered 503 (and were tried again).
    retried: std::sync::atomic::AtomicUsize,
    /// Approvals answered 404 for a request the ingress had accepted.
    stale: std::sync::Mutex<Vec<String>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipeline {
    /// All four services at once on `url`: their topology declarations race on a cluster
    /// that may still be electing leaders.
    pub async fn start(url: &str) -> Self {
        let kbase = FakeKbase::start().await;
        kbase.add_user(ADMIN_TOKEN, "bob", &["CDM_JUPYTERHUB_ADMIN"]);
        let slack = FakeSlack::start(BOT_TOKEN, &[CHANNEL]).await;
        let governance = FakeGovernance::start(GOV_TOKEN).await;
        governance.allow_any_tenant(true);
        let replicated = || tars_jetstream::config::CommonArgs {
            replicas: 3,
            ..common(url)
        };
        let stop = CancellationToken::new();
        let ingress = tars_ingress::Application::build(
            tars_ingress::Args {
                submit_rate_per_minute: 10_000,
                read_rate_per_minute: 100_000,
                ..tars_ingress::Args::local(replicated(), &kbase.url(), &slack.url())
            },
            Metrics::new(),
        );
        let notifier = tars_notifier::run(
            tars_notifier::Args {
                common: replicated(),
                worker: worker_args(),
                slack_bot: tars_slack::config::SlackBotArgs::new(BOT_TOKEN, &slack.url()),
                slack_channel_id: Some(CHANNEL.into()),
                slack_max_posts_per_second: None,
                slack_timeout: Duration::from_secs(10),
            },
            Metrics::new(),
            stop.clone(),
        );
        let decision = tars_decision::run(
            tars_decision::Args::new(replicated(), worker_args()),
            Metrics::new(),
            stop.clone(),
        );
        let applier = tars_governance_applier::run(
            tars_governance_applier::Args {
                common: replicated(),
                worker: worker_args(),
                governance: tars_governance_applier::GovernanceArgs::new(
                    &governance.url(),
                    GOV_TOKEN,
                ),
            },
            Metrics::new(),
            stop.clone(),
        );
        let workers = vec![
            tokio::spawn(async move { notifier.await.unwrap() }),
            tokio::spawn(async move { decision.await.unwrap() }),
            tokio::spawn(async move { applier.await.unwrap() }),
        ];
        let app = ingress.await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let served = tokio::spawn({
            let stop = stop.clone();
            async move { app.run_until_stopped(stop).await.unwrap() }
        });
        Self {
            kbase,
            slack,
            governance,
            base,
            http: reqwest::Client::new(),
            stop,
            served,
            workers,
            retried: Default::default(),
            stale: Default::default(),
        }
    }

    /// Calls the ingress; the status and JSON answer.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{path}: {e:?}; the ingress has stopped: {}",
                    self.served.is_finished()
                )
            });
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or_default())
    }

    /// Reads from the ingress as the admin.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or_default())
    }

    /// Calls the ingress until it answers something but 503 (a minute at most), when
    /// `client` retries; returns that answer and whether a 503 came first.
    async fn call(
        &self,
        client: Client,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (u16, Value, bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut refused = false;
        loop {
            let (status, answer) = self.post(path, token, body).await;
            if status != 503 || client == Client::Strict {
                return (status, answer, refused);
            }
            assert!(
                Instant::now() < deadline,
                "{path} {body}: still 503 after a minute: {answer}"
            );
            refused = true;
            self.retried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A client's back-off between attempts, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The approvals the ingress answered 404 ("not found") for a request it had accepted:
    /// reads of a replica that did not have the record yet.
    pub fn stale_reads(&self) -> Vec<String> {
        lock(&self.stale).clone()
    }

    /// How many calls were answered 503 and tried again.
    pub fn retried(&self) -> usize {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// User `member<i>` asks for read-only access to tenant `c<i>` and the admin approves
    /// it; returns the request id once both are accepted.
    pub async fn submit_and_approve(&self, i: usize, client: Client) -> String {
        let token = format!("cluster-{i}");
        self.kbase.add_user(&token, &format!("member{i}"), &[]);
        let body = json!({"tenant_name": format!("c{i}")});
        let (status, answer, refused) = self.call(client, "/requests/", &token, &body).await;
        // A submission tried again finds the request its refused attempt opened (200,
        // pending). So may a first attempt: the store rides out a NATS timeout by writing
        // again, and when the timed-out write had landed, the ingress takes the second
        // write's "wrong revision" for a concurrent submission and finds its own request.
        let open = status == 200 && answer["status"] == "pending";
        assert!(
            status == 202 || (client == Client::Retrying && open),
            "submission {i}: {status} {answer} (after a 503: {refused})"
        );
        let id = answer["request_id"].as_str().unwrap().to_owned();
        let body = json!({"request_id": id});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, answer, refused) = self
                .call(client, "/approvals/approve", ADMIN_TOKEN, &body)
                .await;
            // "Not found" for a request the ingress has accepted: it read a replica that
            // does not have the record yet. Noted (a failure, reported with the rest at the
            // end) and tried again, so the run goes on to show what else it causes.
            if status == 404 && client == Client::Retrying && Instant::now() < deadline {
                lock(&self.stale).push(format!("approval {i} ({id}): {answer}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert!(
                status == 202 || (refused && status == 409),
                "approval {i} ({id}): {status} {answer}"
            );
            return id;
        }
    }

    /// Requests `range`, `chunk` at a time.
    pub async fn load(
        &self,
        range: std::ops::Range<usize>,
        chunk: usize,
        client: Client,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for part in range.collect::<Vec<_>>().chunks(chunk) {
            let calls = part.iter().map(|i| self.submit_and_approve(*i, client));
            ids.extend(futures::future::join_all(calls).await);
        }
        ids
    }

    /// How many of requests `range` the governance stand-in has granted.
    pub fn granted(&self, range: std::ops::Range<usize>) -> usize {
        range
            .map(|i| self.governance.members_of(&format!("c{i}")).len())
            .sum()
    }

    /// Requests `0..ids.len()` (with these ids) reach `applied`, each granted exactly once
    /// and posted to Slack exactly once, and nothing is dead-lettered; otherwise fails with
    /// every request that went wrong and why.
    pub async fn assert_each_applied_once(
        &self,
        js: &async_nats::jetstream::Context,
        ids: &[String],
    ) {
        let n = ids.len();
        let deadline = Instant::now() + Duration::from_secs(120);
        // Until every request is granted or dead-lettered (which nothing in these tests
        // should be) and posted, and then until every record says `applied` too (the
        // applier records it after the grant), or the deadline.
        loop {
            let past = Instant::now() > deadline;
            if past || self.settled(js, ids).await {
                let problems = self.problems(js, ids).await;
                if problems.is_empty() {
                    return;
                }
                assert!(
                    !past,
                    "{} of {n} requests went wrong:\n{}",
                    problems.len(),
                    problems.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether each of `ids` is granted or dead-lettered, and posted.
    async fn settled(&self, js: &async_nats::jetstream::Context, ids: &[String]) -> bool {
        let posted = self.posts(ids);
        let dead = dead_letters(js).await;
        posted.len() == ids.len()
            && ids.iter().enumerate().all(|(i, id)| {
                self.granted(i..i + 1) == 1 || dead.iter().any(|d| d.contains(id.as_str()))
            })
    }

    /// What is wrong with requests `0..ids.len()` now: not `applied`, not granted exactly
    /// once, dead-lettered, not posted exactly once.
    async fn problems(&self, js: &async_nats::jetstream::Context, ids: &[String]) -> Vec<String> {
        let n = ids.len();
        let posted = self.posts(ids);
        let dead = dead_letters(js).await;
        let mut problems = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let members = self.governance.members_of(&format!("c{i}"));
            let want = vec![(format!("member{i}"), "read_only".to_owned())];
            let (code, record) = self.get(&format!("/requests/{id}")).await;
            let status = match record["status"].as_str() {
                Some(s) => s.to_owned(),
                None => format!("unknown (GET answered {code} {record})"),
            };
            let letters: Vec<&String> = dead.iter().filter(|d| d.contains(id.as_str())).collect();
            if members != want || status != "applied" || !letters.is_empty() {
                problems.push(format!(
                    "request {i} ({id}): status {status}, members of c{i} {members:?}, dead-lettered {letters:?}"
                ));
            }
            match posted.get(id.as_str()) {
                Some(1) => {}
                k => problems.push(format!("request {i} ({id}) posted to Slack {k:?} times")),
            }
        }
        let adds = self.governance.add_calls();
        if adds != n {
            problems.push(format!("{adds} governance changes for {n} requests"));
        }
        problems
    }

    /// How many Slack posts name each of `ids`.
    fn posts<'a>(&self, ids: &'a [String]) -> HashMap<&'a str, usize> {
        let mut per_request: HashMap<&str, usize> = HashMap::new();
        for m in self.slack.messages() {
            let text = m.blocks.to_string();
            if let Some(id) = ids.iter().find(|id| text.contains(id.as_str())) {
                *per_request.entry(id.as_str()).or_default() += 1;
            }
        }
        per_request
    }

    /// Stops the services and waits for each to end cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap();
        for w in self.workers {
            w.await.unwrap();
        }
    }
}

/// Every message in `TARS_DLQ`: its subject, reason header and payload.
async fn dead_letters(js: &async_nats::jetstream::Context) -> Vec<String> {
    let Ok(mut dlq) = js.get_stream(tars_jetstream::topology::DLQ_STREAM).await else {
        return vec!["TARS_DLQ unreadable".into()];
    };
    let Ok(info) = dlq.info().await else {
        return vec!["TARS_DLQ unreadable".into()];
    };
    let (first, last, messages) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut letters = Vec::new();
    for seq in first..=last {
        if messages == 0 {
            break;
        }
        if let Ok(m) = dlq.get_raw_message(seq).await {
            let reason = m
                .headers
                .get("Tars-Dlq-Reason")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            letters.push(format!("{}: {reason}", m.subject));
        }
    }
    letters
}
