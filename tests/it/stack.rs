//! The whole of TARS in this process: a nats-server, the stand-ins, the ingress and
//! (optionally) the three workers, each with its own metrics, on free ports.

use std::time::Duration;

use serde_json::Value;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_observability::metrics::Metrics;
use tars_testkit::standin::governance::FakeGovernance;
use tars_testkit::standin::interact::SlackInteractor;
use tars_testkit::standin::kbase::FakeKbase;
use tars_testkit::standin::slack::FakeSlack;
use tokio_util::sync::CancellationToken;

use crate::support::Nats;

pub const USER_TOKEN: &str = "user-token-alice";
pub const ADMIN_TOKEN: &str = "admin-token-bob";
pub const ADMIN2_TOKEN: &str = "admin-token-carol";
pub const SIGNING_SECRET: &str = "test-signing-secret";
pub const BOT_TOKEN: &str = "xoxb-test";
pub const CHANNEL: &str = "C_APPROVALS";
/// A second channel the stand-in knows, for policies that route a tenant elsewhere.
pub const OTHER_CHANNEL: &str = "C0GENOMICS";
pub const GOV_TOKEN: &str = "gov-token";
/// The Slack user allowed to approve, mapped to the KBase admin `bob`.
pub const SLACK_APPROVER: &str = "U_BOB";

pub struct Options {
    pub workers: bool,
    pub submit_rate: u32,
    pub max_open: usize,
    pub kbase_token_mode: bool,
    pub request_ttl: Duration,
    /// `KBASE_REQUIRED_ROLES`.
    pub required_roles: &'static str,
    /// `SLACK_MAX_POSTS_PER_SECOND`.
    pub slack_pacing: Option<f64>,
    /// `SLACK_TIMEOUT` (the posting lease is three times it).
    pub slack_timeout: Duration,
    /// `GOVERNANCE_API`, for the ingress's tenant check and the applier.
    pub governance_api: tars_governance_applier::Api,
    /// Serve the ingress's `/metrics` on its own listener (`METRICS_ADDR`).
    pub separate_metrics: bool,
    /// `READ_RATE_PER_MINUTE`.
    pub read_rate: u32,
    /// `FAILED_AUTH_PER_MINUTE`.
    pub failed_auth_rate: u32,
    /// `SLACK_APPROVERS_REVIEWED` (with the default 90-day `SLACK_APPROVERS_MAX_AGE`).
    pub approvers_reviewed: Option<String>,
    /// The text of an `APPROVAL_POLICY` file for the ingress.
    pub policy: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: false,
            submit_rate: 1000,
            max_open: 20,
            kbase_token_mode: false,
            request_ttl: Duration::from_secs(7 * 86_400),
            required_roles: "",
            slack_pacing: None,
            slack_timeout: Duration::from_secs(10),
            governance_api: tars_governance_applier::Api::Tenants,
            separate_metrics: false,
            read_rate: 100_000,
            failed_auth_rate: 100_000,
            approvers_reviewed: None,
            policy: None,
        }
    }
}

pub struct Stack {
    pub nats: Nats,
    pub kbase: FakeKbase,
    pub slack: FakeSlack,
    pub governance: FakeGovernance,
    pub base: String,
    pub http: reqwest::Client,
    pub interactor: SlackInteractor,
    /// The ingress's metrics (its store counts its reads here).
    pub ingress_metrics: Metrics,
    /// The ingress's separate metrics listener, with `separate_metrics`.
    pub metrics_base: Option<String>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    slack_pacing: Option<f64>,
    slack_timeout: Duration,
    governance_api: tars_governance_applier::Api,
    /// The notifier's metrics (the notifiers this stack starts count here).
    pub notifier_metrics: Metrics,
}

/// Settings of every service in a test stack; a short `ack_wait` makes a killed worker's
/// messages come back within seconds.
pub fn common(url: &str) -> CommonArgs {
    CommonArgs {
        log_level: "warn".into(),
        ack_wait: Duration::from_secs(3),
        ..CommonArgs::for_url(url)
    }
}

/// Workers as in production, but retrying after 50 ms (doubling to 1 s) so fault tests
/// run in seconds.
pub fn worker_args() -> WorkerArgs {
    WorkerArgs {
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
        wait_base: Duration::from_millis(50),
        wait_max: Duration::from_millis(500),
        ..WorkerArgs::on(([127, 0, 0, 1], 0).into())
    }
}

impl Stack {
    pub async fn start(opts: Options) -> Self {
        let nats = Nats::start().await;
        let kbase = FakeKbase::start().await;
        kbase.add_user(USER_TOKEN, "alice", &[]);
        kbase.add_user(ADMIN_TOKEN, "bob", &["CDM_JUPYTERHUB_ADMIN"]);
        kbase.add_user(ADMIN2_TOKEN, "carol", &["CDM_JUPYTERHUB_ADMIN"]);
        let slack = FakeSlack::start(BOT_TOKEN, &[CHANNEL, OTHER_CHANNEL]).await;
        let policy = opts.policy.map(|text| {
            let path = tars_testkit::nats_server::temp_dir("tars-policy").join("policy.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let governance = FakeGovernance::start(GOV_TOKEN).await;
        governance.allow_any_tenant(true);
        let ingress_metrics = Metrics::new();
        let args = tars_ingress::Args {
            kbase_required_roles: opts.required_roles.into(),
            slack_signing_secret: Some(SIGNING_SECRET.into()),
            slack_approval_mode: if opts.kbase_token_mode {
                "kbase-token"
            } else {
                "allowlist"
            }
            .into(),
            slack_approvers: format!("{SLACK_APPROVER}:bob"),
            slack_approvers_reviewed: opts.approvers_reviewed.clone(),
            approval_policy: policy,
            metrics_addr: opts.separate_metrics.then(|| ([127, 0, 0, 1], 0).into()),
            slack_team_id: Some("T1".into()),
            slack_channel_id: Some(CHANNEL.into()),
            slack_bot: tars_slack::config::SlackBotArgs::new(BOT_TOKEN, &slack.url()),
            submit_rate_per_minute: opts.submit_rate,
            read_rate_per_minute: opts.read_rate,
            failed_auth_per_minute: opts.failed_auth_rate,
            max_open_requests_per_user: opts.max_open,
            request_timeout: Duration::from_secs(10),
            governance: tars_governance_applier::GovernanceArgs {
                governance_api: opts.governance_api,
                ..tars_governance_applier::GovernanceArgs::new(&governance.url(), GOV_TOKEN)
            },
            ..tars_ingress::Args::local(common(&nats.server.url()), &kbase.url(), &slack.url())
        };
        let app = tars_ingress::Application::build(args, ingress_metrics.clone())
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let metrics_base = app.metrics_port().map(|p| format!("http://127.0.0.1:{p}"));
        let shutdown = CancellationToken::new();
        let mut tasks = vec![tokio::spawn({
            let s = shutdown.clone();
            async move { app.run_until_stopped(s).await.unwrap() }
        })];
        let mut stack = Self {
            interactor: SlackInteractor::new(SIGNING_SECRET, &base).in_channel(CHANNEL),
            ingress_metrics,
            metrics_base,
            nats,
            kbase,
            slack,
            governance,
            base,
            http: reqwest::Client::new(),
            shutdown,
            tasks: Vec::new(),
            slack_pacing: opts.slack_pacing,
            slack_timeout: opts.slack_timeout,
            governance_api: opts.governance_api,
            notifier_metrics: Metrics::new(),
        };
        if opts.workers {
            stack.start_notifier();
            stack.start_decision(opts.request_ttl);
            tasks.push(stack.spawn_applier(stack.shutdown.clone(), Metrics::new()));
        }
        stack.tasks.extend(tasks);
        stack
    }

    /// Stops every service of this stack (ingress and workers) and waits until each has
    /// finished; nats-server and the stand-ins keep running.
    pub async fn stop_services(&mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
    }

    /// The token that stops every service of this stack (fired on drop).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn start_notifier(&mut self) {
        let args = tars_notifier::Args {
            common: common(&self.nats.server.url()),
            worker: worker_args(),
            slack_bot: tars_slack::config::SlackBotArgs::new(BOT_TOKEN, &self.slack.url()),
            slack_channel_id: Some(CHANNEL.into()),
            slack_max_posts_per_second: self.slack_pacing,
            slack_timeout: self.slack_timeout,
        };
        let s = self.shutdown.clone();
        let metrics = self.notifier_metrics.clone();
        self.tasks.push(tokio::spawn(async move {
            tars_notifier::run(args, metrics, s).await.unwrap()
        }));
    }

    pub fn start_decision(&mut self, ttl: Duration) {
        let args = tars_decision::Args {
            request_ttl: ttl,
            sweep_interval: Duration::from_millis(200),
            ..tars_decision::Args::new(common(&self.nats.server.url()), worker_args())
        };
        let s = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            tars_decision::run(args, Metrics::new(), s).await.unwrap()
        }));
    }

    /// A decision worker on this stack's NATS to call sweeps on with an injected clock,
    /// counting its reads in its own metrics (the policy's TTL is the default, 7 days).
    pub async fn sweeper(&self) -> (tars_decision::Worker, Metrics) {
        let metrics = Metrics::new();
        let conn = tars_jetstream::service::connect(
            &common(&self.nats.server.url()),
            "test-sweeper",
            metrics.clone(),
        )
        .await
        .unwrap();
        (
            tars_decision::Worker::new(&conn, tars_domain::machine::Policy::default()),
            metrics,
        )
    }

    /// How many `DELETE`s (revocations) the governance stand-in has answered.
    pub fn governance_deletes(&self) -> usize {
        self.governance
            .calls()
            .iter()
            .filter(|c| c.method == "DELETE")
            .count()
    }

    /// The governance-applier's settings for this stack.
    pub fn applier_args(&self) -> tars_governance_applier::Args {
        tars_governance_applier::Args {
            common: common(&self.nats.server.url()),
            worker: worker_args(),
            governance: tars_governance_applier::GovernanceArgs {
                governance_api: self.governance_api,
                ..tars_governance_applier::GovernanceArgs::new(&self.governance.url(), GOV_TOKEN)
            },
        }
    }

    /// Starts a governance-applier that stops when `stop` fires.
    pub fn spawn_applier(
        &self,
        stop: CancellationToken,
        metrics: Metrics,
    ) -> tokio::task::JoinHandle<()> {
        let args = self.applier_args();
        tokio::spawn(async move {
            tars_governance_applier::run(args, metrics, stop)
                .await
                .unwrap()
        })
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Submits read_only access to `tenant` (for `duration`, if given) as `token`; returns
    /// the request id.
    pub async fn submit_for(&self, token: &str, tenant: &str, duration: Option<&str>) -> String {
        let mut body = serde_json::json!({"tenant_name": tenant, "permission": "read_only"});
        if let Some(d) = duration {
            body["duration"] = serde_json::json!(d);
        }
        let (status, answer, _) = self.post("/requests/", Some(token), body).await;
        assert_eq!(status, 202, "{answer}");
        answer["request_id"].as_str().unwrap().to_owned()
    }

    /// Alice's read_only request on `tenant` (for `duration`, if given), approved by bob
    /// over REST and applied; returns its id and record.
    pub async fn applied(&self, tenant: &str, duration: Option<&str>) -> (String, Value) {
        let id = self.submit_for(USER_TOKEN, tenant, duration).await;
        self.approve(&id).await;
        wait_status(self, &id, "applied").await;
        let (_, rec) = self
            .get(&format!("/requests/{id}"), Some(ADMIN_TOKEN))
            .await;
        (id, rec)
    }

    /// Submits as the user; returns the request id.
    pub async fn submit(&self, tenant: &str, permission: &str) -> String {
        let (status, body, _) = self
            .post("/requests/", Some(USER_TOKEN), serde_json::json!({"tenant_name": tenant, "permission": permission, "justification": "analysis"}))
            .await;
        assert_eq!(status, 202, "{body}");
        body["request_id"].as_str().unwrap().to_owned()
    }

    /// Approves `id` over REST as the admin `bob`; the ingress must accept it (202).
    pub async fn approve(&self, id: &str) {
        let (status, body, _) = self
            .post(
                "/approvals/approve",
                Some(ADMIN_TOKEN),
                serde_json::json!({"request_id": id}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    /// Submits one request each for `n` distinct users and approves them all over REST;
    /// returns the ids.
    pub async fn submit_and_approve_many(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
            let calls = chunk.iter().map(|i| {
                let token = format!("many-{i}");
                self.kbase.add_user(&token, &format!("user{i}"), &[]);
                async move {
                    let (status, body, _) = self
                        .post(
                            "/requests",
                            Some(&token),
                            serde_json::json!({"tenant_name": format!("t{i}")}),
                        )
                        .await;
                    assert_eq!(status, 202, "{body}");
                    let id = body["request_id"].as_str().unwrap().to_owned();
                    self.approve(&id).await;
                    id
                }
            });
            ids.extend(futures::future::join_all(calls).await);
        }
        ids
    }

    pub async fn status_of(&self, id: &str) -> String {
        let (_, body) = self
            .get(&format!("/requests/{id}"), Some(ADMIN_TOKEN))
            .await;
        body["status"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until TARS_EVENTS holds `n` messages on `subject` (events of state changes
    /// are published by the relay, shortly after the write), then returns the count.
    pub async fn wait_count(&self, subject: &str, n: u64) -> u64 {
        crate::support::eventually(Duration::from_secs(10), subject, || async {
            (self.count_subject(subject).await >= n).then_some(())
        })
        .await;
        self.count_subject(subject).await
    }

    /// Messages in TARS_EVENTS on `subject`.
    pub async fn count_subject(&self, subject: &str) -> u64 {
        let s = self
            .nats
            .topology
            .js
            .get_stream(tars_jetstream::topology::EVENTS_STREAM)
            .await
            .unwrap();
        let info = s.info_with_subjects(subject).await.unwrap();
        use futures::TryStreamExt;
        let subjects: Vec<(String, usize)> = info.try_collect().await.unwrap();
        subjects.iter().map(|(_, n)| *n as u64).sum()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits until `id` has status `want` (read over REST as an admin), a minute at most.
pub async fn wait_status(s: &Stack, id: &str, want: &str) {
    crate::support::eventually(
        Duration::from_secs(60),
        &format!("{id} to be {want}"),
        || async { (s.status_of(id).await == want).then_some(()) },
    )
    .await;
}

/// An RFC 3339 time in a JSON answer.
pub fn time_of(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}
