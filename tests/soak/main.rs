//! A seeded chaos soak: the real service binaries (two ingresses, two replicas of each
//! worker) on a 3-node NATS cluster at three replicas, a mix of lifecycles, and faults
//! drawn from a seed while the load runs: SIGKILL of any TARS process (restarted), a NATS
//! node killed and brought back, Slack down for a while, the governance API answering 503
//! in bursts, and a rolling restart (SIGTERM, then a fresh process, one after the other).
//! At the end an invariant checker reads what users depend on:
//!
//! - every accepted request ends in the state its lifecycle calls for;
//! - exactly one membership change per grant and per removal in the governance API, and
//!   members exactly for the requests whose access holds;
//! - one Slack message per request, showing its final state;
//! - a DM to the requester per outcome it still holds when told (the final one always; a
//!   grant revoked before it was told is not told), and none twice unless a notifier was
//!   killed (a DM is sent, then noted, so a death between the two sends it again);
//! - no dead letters, and no process that exited on its own.
//!
//! It prints its seed; `TARS_SOAK_SEED=<seed>` replays the same schedule and mix (the
//! timing of the machine still varies). `TARS_SOAK_REQUESTS` sets the size (150 by default,
//! the short soak `make test` runs; `make soak` runs the long one).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tars_testkit::NatsCluster;
use tars_testkit::nats_server::{free_port, temp_dir};
use tars_testkit::standin::governance::FakeGovernance;
use tars_testkit::standin::kbase::FakeKbase;
use tars_testkit::standin::slack::FakeSlack;

const BOT_TOKEN: &str = "xoxb-soak";
const CHANNEL: &str = "C_SOAK";
const GOV_TOKEN: &str = "gov-soak";
const SIGNING_SECRET: &str = "soak-signing-secret";
const ADMIN: &str = "token-bob";
const ADMIN2: &str = "token-carol";

/// How long everything may take to settle once the load and the faults are over.
const SETTLE: Duration = Duration::from_secs(120);

/// A small seeded generator (xorshift64*): the same seed, the same draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a request goes through, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Approve,
    Deny,
    /// Approved for a few seconds: ends revoked on its own.
    TimeBound,
    /// Approved, then revoked by an admin.
    EarlyRevoke,
    /// Approved by the policy at submit.
    Auto,
    /// Needs two approvers.
    TwoApprovers,
}

impl Life {
    const ALL: [Life; 6] = [
        Life::Approve,
        Life::Deny,
        Life::TimeBound,
        Life::EarlyRevoke,
        Life::Auto,
        Life::TwoApprovers,
    ];

    fn tenant(self) -> &'static str {
        match self {
            Life::Auto => "open",
            Life::TwoApprovers => "pair",
            _ => "plain",
        }
    }

    fn final_status(self) -> &'static str {
        match self {
            Life::Deny => "denied",
            Life::TimeBound | Life::EarlyRevoke => "revoked",
            _ => "applied",
        }
    }

    fn grants(self) -> usize {
        usize::from(self != Life::Deny)
    }

    fn removals(self) -> usize {
        usize::from(matches!(self, Life::TimeBound | Life::EarlyRevoke))
    }

    /// How many DMs the requester gets: one per outcome, the final one always; a grant
    /// whose access was removed before the notifier told it is not told any more (a DM
    /// never reports a state the request has left).
    fn told(self) -> std::ops::RangeInclusive<usize> {
        1..=1 + self.removals()
    }
}

/// One service process; restarted with the same command after a death.
struct Service {
    name: String,
    bin: &'static str,
    env: Vec<(&'static str, String)>,
    child: Child,
}

impl Service {
    fn spawn(bin: &'static str, env: &[(&'static str, String)], log: &std::path::Path) -> Child {
        let path = tars_tests::service_binary(bin);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(path)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    fn restart(&mut self, logs: &std::path::Path) {
        self.child = Self::spawn(self.bin, &self.env, &logs.join(&self.name));
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

/// Waits for a check of the whole run to find nothing wrong, looking every half second
/// (each look reads every request); returns what is still wrong when `within` is over.
async fn settle<F, Fut>(within: Duration, check: F) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    tars_tests::until_right(within, Duration::from_millis(500), check).await
}

struct Soak {
    cluster: Mutex<NatsCluster>,
    slack: FakeSlack,
    governance: FakeGovernance,
    kbase: FakeKbase,
    services: Mutex<Vec<Service>>,
    ingresses: Vec<String>,
    http: reqwest::Client,
    logs: std::path::PathBuf,
    /// Whether a notifier was killed (a DM sent and not yet noted is sent again).
    notifier_killed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn policy_file() -> std::path::PathBuf {
    let path = temp_dir("tars-soak-policy").join("policy.toml");
    std::fs::write(
        &path,
        "[tenants.open]\nauto_approve = [\"read_only\"]\n\n[tenants.pair]\napprovals = { read_only = 2 }\n",
    )
    .unwrap();
    path
}

impl Soak {
    async fn start() -> Self {
        let cluster = NatsCluster::start().unwrap();
        let slack = FakeSlack::start(BOT_TOKEN, &[CHANNEL]).await;
        let governance = FakeGovernance::start(GOV_TOKEN).await;
        governance.allow_any_tenant(true);
        let kbase = FakeKbase::start().await;
        kbase.add_user(ADMIN, "bob", &["CDM_JUPYTERHUB_ADMIN"]);
        kbase.add_user(ADMIN2, "carol", &["CDM_JUPYTERHUB_ADMIN"]);
        let logs = temp_dir("tars-soak-logs");
        let policy = policy_file();
        let common = |metrics: u16| -> Vec<(&'static str, String)> {
            vec![
                ("NATS_URL", cluster.url()),
                ("TARS_REPLICAS", "3".into()),
                ("TARS_ACK_WAIT", "5s".into()),
                ("LOG_LEVEL", "warn".into()),
                ("LOG_FORMAT", "text".into()),
                ("METRICS_ADDR", format!("127.0.0.1:{metrics}")),
                ("WORKER_RETRY_BASE", "100ms".into()),
                ("WORKER_RETRY_MAX", "2s".into()),
                ("WORKER_WAIT_BASE", "200ms".into()),
                ("WORKER_WAIT_MAX", "2s".into()),
                ("WORKER_SHUTDOWN_GRACE", "5s".into()),
            ]
        };
        let mut services = Vec::new();
        let mut ingresses = Vec::new();
        for i in 0..2 {
            let listen = free_port();
            ingresses.push(format!("http://127.0.0.1:{listen}"));
            let mut env = common(free_port());
            env.extend([
                ("LISTEN_ADDR", format!("127.0.0.1:{listen}")),
                ("KBASE_AUTH_URL", kbase.url()),
                ("SUBMIT_RATE_PER_MINUTE", "100000".into()),
                ("READ_RATE_PER_MINUTE", "1000000".into()),
                ("FAILED_AUTH_PER_MINUTE", "100000".into()),
                ("MAX_OPEN_REQUESTS_PER_USER", "200".into()),
                ("SLACK_SIGNING_SECRET", SIGNING_SECRET.into()),
                ("SLACK_APPROVERS", "U_BOB:bob".into()),
                ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
                ("SLACK_API_URL", slack.url()),
                ("GOVERNANCE_API_URL", governance.url()),
                ("GOVERNANCE_TOKEN", GOV_TOKEN.into()),
                ("APPROVAL_POLICY", policy.display().to_string()),
            ]);
            services.push(("ingress", i, "tars-ingress", env));
        }
        for i in 0..2 {
            let mut env = common(free_port());
            env.extend([
                ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
                ("SLACK_API_URL", slack.url()),
                ("SLACK_CHANNEL_ID", CHANNEL.into()),
                ("SLACK_TIMEOUT", "2s".into()),
            ]);
            services.push(("notifier", i, "tars-notifier", env));
            let mut env = common(free_port());
            env.push(("EXPIRY_SWEEP_INTERVAL", "1s".into()));
            services.push(("decision", i, "tars-decision", env));
            let mut env = common(free_port());
            env.extend([
                ("GOVERNANCE_API_URL", governance.url()),
                ("GOVERNANCE_TOKEN", GOV_TOKEN.into()),
            ]);
            services.push(("governance-applier", i, "tars-governance-applier", env));
        }
        let services: Vec<Service> = services
            .into_iter()
            .map(|(kind, i, bin, env)| {
                let name = format!("{kind}-{i}");
                let child = Service::spawn(bin, &env, &logs.join(&name));
                Service {
                    name,
                    bin,
                    env,
                    child,
                }
            })
            .collect();
        let soak = Self {
            cluster: Mutex::new(cluster),
            slack,
            governance,
            kbase,
            services: Mutex::new(services),
            ingresses,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            logs,
            notifier_killed: Default::default(),
        };
        for base in &soak.ingresses {
            let url = format!("{base}/readyz");
            tars_tests::eventually(Duration::from_secs(60), "an ingress ready", || async {
                let r = soak.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
        }
        soak
    }

    /// POSTs to whichever ingress answers, trying again (the other one, after a moment)
    /// on a refused connection or a 503, as a client of a load balancer would.
    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut i = 0usize;
        loop {
            let base = &self.ingresses[i % self.ingresses.len()];
            i += 1;
            let sent = self
                .http
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await;
            if let Ok(r) = sent {
                let status = r.status().as_u16();
                if status != 503 && status != 500 {
                    let body = r.json().await.unwrap_or(Value::Null);
                    return (status, body);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{path}: no ingress answered for 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        for base in &self.ingresses {
            if let Ok(r) = self
                .http
                .get(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                && r.status().is_success()
            {
                return r.json().await.ok();
            }
        }
        None
    }

    async fn status_of(&self, id: &str) -> Option<String> {
        let rec = self.get(&format!("/requests/{id}")).await?;
        rec["status"].as_str().map(str::to_owned)
    }

    /// Submits request `n` and drives it through `life` (decisions, revocation), trying
    /// each call again as a client would; returns its id.
    async fn drive(&self, n: usize, life: Life) -> String {
        let token = format!("soak-user-{n}");
        let user = format!("soaker{n}");
        self.kbase.add_user(&token, &user, &[]);
        self.slack
            .add_user(&format!("{user}@example.org"), &format!("U_SOAK{n}"));
        let mut body = json!({"tenant_name": life.tenant(), "permission": "read_only"});
        if life == Life::TimeBound {
            body["duration"] = json!("3s");
        }
        let (status, answer) = self.post("/requests/", &token, body).await;
        assert!(
            status == 202 || status == 200,
            "submit {n}: {status} {answer}"
        );
        let id = answer["request_id"].as_str().unwrap().to_owned();
        let decide = |path: &'static str, token: &'static str| {
            let id = id.clone();
            async move {
                let (status, answer) = self.post(path, token, json!({"request_id": id})).await;
                // 409: decided already (by this call's earlier attempt).
                assert!(
                    status == 202 || status == 409,
                    "{path} {id}: {status} {answer}"
                );
            }
        };
        match life {
            Life::Approve | Life::TimeBound | Life::EarlyRevoke => {
                decide("/approvals/approve", ADMIN).await
            }
            Life::Deny => decide("/approvals/deny", ADMIN).await,
            Life::TwoApprovers => {
                decide("/approvals/approve", ADMIN).await;
                decide("/approvals/approve", ADMIN2).await;
            }
            Life::Auto => {}
        }
        if life == Life::EarlyRevoke {
            tars_tests::eventually(SETTLE, &format!("{id} applied"), || async {
                (self.status_of(&id).await.as_deref() == Some("applied")).then_some(())
            })
            .await;
            let (status, answer) = self
                .post(
                    &format!("/requests/{id}/revoke"),
                    ADMIN,
                    json!({"reason": "soak"}),
                )
                .await;
            assert!(
                status == 202 || status == 409,
                "revoke {id}: {status} {answer}"
            );
        }
        id
    }
}

/// One fault, drawn from the seed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillService(usize),
    KillNode(usize),
    SlackDown(u64),
    GovernanceBurst(usize),
    RollingRestart,
}

fn draw(rng: &mut Rng, services: usize) -> Fault {
    match rng.below(10) {
        0..=3 => Fault::KillService(rng.below(services as u64) as usize),
        4 | 5 => Fault::KillNode(rng.below(3) as usize),
        6 | 7 => Fault::SlackDown(1 + rng.below(4)),
        8 => Fault::GovernanceBurst(1 + rng.below(20) as usize),
        _ => Fault::RollingRestart,
    }
}

impl Soak {
    /// Signals service `i` and waits (without blocking the runtime) until it has exited.
    async fn end(&self, i: usize, sig: &str) -> std::process::ExitStatus {
        lock(&self.services)[i].signal(sig);
        loop {
            if let Ok(Some(status)) = lock(&self.services)[i].child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Carries out one fault, and undoes it (a process or node comes back).
    async fn inflict(&self, fault: Fault, rng: &mut Rng) {
        let pause = Duration::from_millis(300 + rng.below(1500));
        match fault {
            Fault::KillService(i) => {
                if lock(&self.services)[i].name.starts_with("notifier") {
                    self.notifier_killed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.end(i, "-KILL").await;
                tokio::time::sleep(pause).await;
                lock(&self.services)[i].restart(&self.logs);
            }
            Fault::KillNode(n) => {
                lock(&self.cluster).nodes[n].kill();
                tokio::time::sleep(pause * 2).await;
                lock(&self.cluster).nodes[n].start_again().unwrap();
            }
            Fault::SlackDown(secs) => {
                self.slack.served().go_down().await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
                self.slack.served().come_back().await.unwrap();
            }
            Fault::GovernanceBurst(n) => self.governance.faults().fail_next(n, 503),
            Fault::RollingRestart => {
                let count = lock(&self.services).len();
                for i in 0..count {
                    // SIGTERM: the process drains and exits by itself, then a fresh one.
                    let stopped = self.end(i, "-TERM").await;
                    let name = lock(&self.services)[i].name.clone();
                    assert!(stopped.success(), "{name} stopped uncleanly: {stopped}");
                    lock(&self.services)[i].restart(&self.logs);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// Processes that exited without being told to.
    fn exited_on_their_own(&self) -> Vec<String> {
        lock(&self.services)
            .iter_mut()
            .filter_map(|s| match s.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ({status})", s.name)),
                _ => None,
            })
            .collect()
    }

    async fn stop(&self) {
        let count = lock(&self.services).len();
        for i in 0..count {
            self.end(i, "-TERM").await;
        }
    }
}

/// The user and tenant path of a governance membership call.
fn member_path(tenant: &str, user: &str) -> String {
    format!("/tenants/{tenant}/members/{user}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_soak_keeps_every_guarantee() {
    let seed: u64 = std::env::var("TARS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let size: usize = std::env::var("TARS_SOAK_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    eprintln!(
        "soak: seed {seed}, {size} requests (replay: TARS_SOAK_SEED={seed} TARS_SOAK_REQUESTS={size})"
    );
    let started = Instant::now();
    let soak = Soak::start().await;
    eprintln!("soak: services' logs in {}", soak.logs.display());
    let mut rng = Rng(seed);
    let lives: Vec<Life> = (0..size)
        .map(|_| Life::ALL[rng.below(Life::ALL.len() as u64) as usize])
        .collect();
    let mut faults_rng = Rng(seed.rotate_left(17) | 1);

    // The load: requests a few at a time, each driven to its end by its own task.
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        use futures::StreamExt;
        // Requests arrive every 250 ms (the scenario's pace, so that the faults meet a
        // load in progress), each driven to its end by its own future.
        let begin = tokio::time::Instant::now();
        let soak = &soak;
        let ids: Vec<String> = futures::stream::iter(lives.iter().enumerate())
            .map(|(n, life)| async move {
                tokio::time::sleep_until(begin + Duration::from_millis(250) * n as u32).await;
                soak.drive(n, *life).await
            })
            .buffered(64)
            .collect()
            .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        ids
    };
    let schedule = async {
        let mut inflicted = Vec::new();
        let services = lock(&soak.services).len();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500 + faults_rng.below(1000))).await;
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let fault = draw(&mut faults_rng, services);
            eprintln!(
                "soak: {:?} at {:.1} s",
                fault,
                started.elapsed().as_secs_f64()
            );
            soak.inflict(fault, &mut faults_rng).await;
            inflicted.push(fault);
        }
        inflicted
    };
    let (ids, inflicted) = tokio::join!(load, schedule);
    eprintln!(
        "soak: load done at {:.1} s with {} faults",
        started.elapsed().as_secs_f64(),
        inflicted.len()
    );

    // Every request reaches the state its lifecycle calls for.
    let mut problems = settle(SETTLE, || async {
        let mut wrong = Vec::new();
        for (n, (id, life)) in ids.iter().zip(&lives).enumerate() {
            let status = soak.status_of(id).await;
            if status.as_deref() != Some(life.final_status()) {
                wrong.push(format!("request {n} {id} ({life:?}): {status:?}"));
            }
        }
        wrong
    })
    .await;
    // ... and its message shows it.
    let store = {
        let url = lock(&soak.cluster).url();
        let client = tars_jetstream::nats::connect(&url, None, "soak-check")
            .await
            .unwrap();
        let topology = tars_jetstream::topology::declare(
            &client,
            &tars_jetstream::topology::TopologyConfig {
                replicas: 3,
                ..Default::default()
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        tars_jetstream::store::RequestStore::new(
            &topology,
            &tars_observability::metrics::Metrics::new(),
        )
    };
    problems.extend(
        settle(SETTLE, || async {
            let messages = soak.slack.messages();
            let mut wrong = Vec::new();
            for (n, id) in ids.iter().enumerate() {
                let Ok(rid) = tars_domain::RequestId::parse(id) else {
                    wrong.push(format!("request {n}: id {id}"));
                    continue;
                };
                let Ok(Some(rec)) = store.get(&rid).await else {
                    wrong.push(format!("request {n} {id}: no record"));
                    continue;
                };
                let (_, blocks) = tars_slack::blocks::render_mentioning(&rec.value, &[]);
                let shown: Vec<_> = messages
                    .iter()
                    .filter(|m| m.blocks.to_string().contains(id.as_str()))
                    .collect();
                if shown.len() != 1 {
                    wrong.push(format!("request {n} {id}: {} messages", shown.len()));
                } else if shown[0].blocks != blocks {
                    wrong.push(format!(
                        "request {n} {id}: the message does not show {}",
                        rec.value.status.as_str()
                    ));
                }
            }
            wrong
        })
        .await,
    );
    // ... and its requester was told each outcome.
    let killed_notifier = soak
        .notifier_killed
        .load(std::sync::atomic::Ordering::Relaxed);
    problems.extend(
        settle(SETTLE, || async {
            let dms = soak.slack.dms();
            let mut wrong = Vec::new();
            for (n, life) in lives.iter().enumerate() {
                let got = dms
                    .iter()
                    .filter(|(u, _)| *u == format!("U_SOAK{n}"))
                    .count();
                let told = life.told();
                let ok = if killed_notifier {
                    got >= *told.start() && got <= 2 * told.end()
                } else {
                    told.contains(&got)
                };
                if !ok {
                    wrong.push(format!(
                        "request {n} ({life:?}): {got} DMs, {told:?} expected"
                    ));
                }
            }
            wrong
        })
        .await,
    );
    // One membership change per grant and per removal, and members exactly where access
    // holds.
    let calls = soak.governance.calls();
    for (n, life) in lives.iter().enumerate() {
        let path = member_path(life.tenant(), &format!("soaker{n}"));
        let count = |method: &str| {
            calls
                .iter()
                .filter(|c| {
                    c.method == method
                        && c.path.split('?').next() == Some(path.as_str())
                        && (200..300).contains(&c.status)
                })
                .count()
        };
        let (adds, removes) = (count("POST"), count("DELETE"));
        if adds != life.grants() || removes != life.removals() {
            problems.push(format!(
                "request {n} ({life:?}): {adds} adds, {removes} removals"
            ));
        }
    }
    for tenant in ["plain", "open", "pair"] {
        let mut members: Vec<String> = soak
            .governance
            .members_of(tenant)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        members.sort();
        let mut want: Vec<String> = lives
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tenant() == tenant && l.final_status() == "applied")
            .map(|(n, _)| format!("soaker{n}"))
            .collect();
        want.sort();
        if members != want {
            problems.push(format!(
                "tenant {tenant}: members {members:?}, want {want:?}"
            ));
        }
    }
    let dead = soak.get("/admin/dead-letters").await.unwrap_or(Value::Null);
    if dead["dead_letters"] != json!([]) {
        problems.push(format!("dead letters: {}", dead["dead_letters"]));
    }
    let exited = soak.exited_on_their_own();
    if !exited.is_empty() {
        problems.push(format!("exited on their own: {exited:?}"));
    }
    soak.stop().await;
    eprintln!(
        "soak: seed {seed}, {size} requests, {} faults ({inflicted:?}), {:.1} s, {} problems",
        inflicted.len(),
        started.elapsed().as_secs_f64(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "seed {seed} broke a guarantee (logs in {}):\n{}",
        soak.logs.display(),
        problems.join("\n")
    );
}
