//! `tars-bench`: throughput and latency of TARS on this machine, each next to the raw
//! JetStream operation it is built on, measured in the same run.
//!
//! ```text
//! cargo run --release -p tars-tests --bin tars-bench -- [worker|growth|ingress|slow-slack|e2e|all]
//! ```
//!
//! Every submission is a new request from a distinct user for a distinct tenant, so no
//! benchmark number comes from a dedupe hit or a 429; non-2xx answers are counted and
//! printed beside each rate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tars_domain::events::{Envelope, Event};
use tars_domain::{RequestId, TenantName, Username};
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_jetstream::topology::{self, NOTIFIER, TopologyConfig};
use tars_jetstream::worker::{self, Delivery, Handler, Outcome, WorkerConfig};
use tars_observability::metrics::Metrics;
use tars_testkit::NatsServer;
use tars_testkit::standin::{governance::FakeGovernance, kbase::FakeKbase, slack::FakeSlack};
use tokio_util::sync::CancellationToken;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn common(url: &str) -> CommonArgs {
    CommonArgs {
        log_level: "error".into(),
        ..CommonArgs::for_url(url)
    }
}

async fn publish_events(js: &async_nats::jetstream::Context, n: usize) {
    let mut acks = Vec::with_capacity(1024);
    for i in 0..n {
        let user = Username::parse(&format!("u{i}")).unwrap();
        let env = Envelope::new(
            RequestId::new(),
            user.to_string(),
            Event::RequestSubmitted {
                requester: user,
                tenant_name: TenantName::parse(&format!("t{i}")).unwrap(),
                permission: Default::default(),
            },
        );
        acks.push(
            js.publish(env.subject(), serde_json::to_vec(&env).unwrap().into())
                .await
                .unwrap(),
        );
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

struct Count(Arc<AtomicU64>);

impl Handler for Count {
    async fn handle(&self, _d: Delivery) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    }
}

async fn bench_worker() {
    const N: usize = 20_000;
    let server = NatsServer::start().unwrap();
    let client = tars_jetstream::nats::connect(&server.url(), None, "bench")
        .await
        .unwrap();
    let topo = topology::ensure(&client, &TopologyConfig::default())
        .await
        .unwrap();
    publish_events(&topo.js, N).await;

    // Raw: one durable pull consumer, batches of 256, ack each message.
    let raw: async_nats::jetstream::consumer::PullConsumer = topo
        .events
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bench-raw".into()),
            filter_subject: "tars.request.>".into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Instant::now();
    let mut done = 0;
    while done < N {
        let mut batch = raw
            .batch()
            .max_messages(256)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            m.unwrap().ack().await.unwrap();
            done += 1;
        }
    }
    let raw_rate = N as f64 / start.elapsed().as_secs_f64();
    println!(
        "worker: raw JetStream pull(256)+ack            {raw_rate:>9.0} msg/s  ({N} messages)"
    );

    for concurrency in [16, 64] {
        // A fresh consumer per run: same stream, same messages.
        let name = format!("bench-rt-{concurrency}");
        topo.events
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: "tars.request.>".into(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                max_deliver: -1,
                ..Default::default()
            })
            .await
            .unwrap();
        let kind = tars_jetstream::topology::WorkerKind {
            name: Box::leak(name.into_boxed_str()),
            filter: NOTIFIER.filter,
        };
        let count = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let cfg = WorkerConfig {
            concurrency,
            ..WorkerConfig::default()
        };
        let start = Instant::now();
        let task = tokio::spawn(worker::run(
            kind,
            topo.clone(),
            Count(count.clone()),
            cfg,
            Metrics::new(),
            stop.clone(),
        ));
        while count.load(Ordering::Relaxed) < N as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rate = N as f64 / start.elapsed().as_secs_f64();
        stop.cancel();
        task.await.unwrap().unwrap();
        println!(
            "worker: runtime, no-op handler, concurrency {concurrency:<3}{rate:>9.0} msg/s  ({:.0}% of raw)",
            rate / raw_rate * 100.0
        );
    }
}

async fn raw_kv_create(kv: &async_nats::jetstream::kv::Store, secs: u64) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    kv.create(format!("bench.{t}.{i}"), "x".into())
                        .await
                        .unwrap();
                    lat.push(t0.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

struct Stack {
    _server: NatsServer,
    kbase: FakeKbase,
    slack: FakeSlack,
    governance: FakeGovernance,
    base: String,
    stop: CancellationToken,
}

async fn stack(workers: bool, fsync: bool) -> Stack {
    let server = if fsync {
        NatsServer::start()
    } else {
        NatsServer::start_without_fsync()
    }
    .unwrap();
    let kbase = FakeKbase::start().await;
    kbase.accept_any_with_prefix("bench-");
    kbase.add_user("bench-admin", "benchadmin", &["CDM_JUPYTERHUB_ADMIN"]);
    let slack = FakeSlack::start("xoxb-bench", &["C1"]).await;
    let governance = FakeGovernance::start("gov").await;
    governance.allow_any_tenant(true);
    let stop = CancellationToken::new();
    let args = tars_ingress::Args {
        kbase_cache_ttl: Duration::from_secs(600),
        slack_signing_secret: Some("s".into()),
        slack_approvers: "U1:benchadmin".into(),
        slack_bot: tars_slack::config::SlackBotArgs::new("xoxb-bench", &slack.url()),
        ..tars_ingress::Args::local(common(&server.url()), &kbase.url(), &slack.url())
    };
    let app = tars_ingress::Application::build(args, Metrics::new())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(stop.clone()));
    if workers {
        let worker = WorkerArgs {
            concurrency: 32,
            ..WorkerArgs::on(([127, 0, 0, 1], 0).into())
        };
        let url = server.url();
        tokio::spawn(tars_notifier::run(
            tars_notifier::Args {
                common: common(&url),
                worker: worker.clone(),
                slack_bot: tars_slack::config::SlackBotArgs::new("xoxb-bench", &slack.url()),
                slack_channel_id: Some("C1".into()),
                slack_max_posts_per_second: None,
                slack_timeout: std::time::Duration::from_secs(10),
            },
            Metrics::new(),
            stop.clone(),
        ));
        tokio::spawn(tars_decision::run(
            tars_decision::Args {
                request_ttl: Duration::from_secs(86_400),
                ..tars_decision::Args::new(common(&url), worker.clone())
            },
            Metrics::new(),
            stop.clone(),
        ));
        tokio::spawn(tars_governance_applier::run(
            tars_governance_applier::Args {
                common: common(&url),
                worker,
                governance: tars_governance_applier::GovernanceArgs::new(&governance.url(), "gov"),
            },
            Metrics::new(),
            stop.clone(),
        ));
    }
    Stack {
        _server: server,
        kbase,
        slack,
        governance,
        base,
        stop,
    }
}

const WRK_SCRIPT: &str = r#"
local counter = 0
local id = 0
function setup(thread)
  thread:set("id", _G.next_id or 1)
  _G.next_id = (_G.next_id or 1) + 1
end
function init(args)
  id = tonumber(wrk.thread:get("id")) or 0
end
function request()
  counter = counter + 1
  local tok = "bench-" .. id .. "-" .. counter
  local body = os.getenv("TARS_BENCH_BODY") == "invalid" and '{"tenant_name":"!"}'
    or ('{"tenant_name":"t' .. id .. "-" .. counter .. '","permission":"read_only"}')
  return wrk.format("POST", "/requests/", {["Authorization"] = "Bearer " .. tok, ["Content-Type"] = "application/json"}, body)
end
"#;

/// `slow_slack`: the workers run too, against a Slack that takes 100 ms per call, to show
/// that submissions never wait for Slack (the service TARS replaces posted to Slack inside
/// the request).
async fn bench_ingress(fsync: bool, slow_slack: bool) {
    let s = stack(slow_slack, fsync).await;
    if slow_slack {
        s.slack.faults().set_latency(Duration::from_millis(100));
        println!("ingress: with the workers running and Slack answering in 100 ms");
    }
    println!(
        "ingress: nats-server with {}",
        if fsync {
            "sync_interval: always (fsync per write)"
        } else {
            "the default sync interval"
        }
    );
    let script = std::env::temp_dir().join(format!("tars-bench-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let wrk = |secs: u32, invalid: bool| {
        let out = std::process::Command::new("wrk")
            .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency", "-s"])
            .arg(&script)
            .arg(format!("{}/requests/", s.base))
            .env("TARS_BENCH_BODY", if invalid { "invalid" } else { "valid" })
            .output();
        // No wrk, or no summary from it, is a failed benchmark, never a row of zeros.
        let o = match out {
            Ok(o) => o,
            Err(e) => panic!("wrk is not available ({e}); install it with `apt-get install wrk`"),
        };
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && text.contains("Requests/sec"),
            "wrk gave no summary (exit {}):\n{text}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        text
    };
    // Warm the auth cache: the same token sequence, with a body that fails validation after
    // authentication (422), so the cache holds every token the measured run will use.
    let warm = wrk(12, true);
    let auth_calls = s.kbase.calls();
    let run = wrk(10, false);
    println!("ingress: warm-up made {auth_calls} auth calls");
    let field = |text: &str, key: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .map(|l| l.trim().to_owned())
            .unwrap_or_default()
    };
    let _ = warm;
    println!("ingress: POST /requests/, 32 connections, 10 s (wrk, new user + tenant per request)");
    for key in [
        "Requests/sec",
        "50%",
        "90%",
        "99%",
        "Non-2xx",
        "Socket errors",
    ] {
        let line = field(&run, key);
        if !line.is_empty() {
            println!("  {line}");
        }
    }
    if field(&run, "Non-2xx").is_empty() {
        println!("  Non-2xx or 3xx responses: 0");
    }
    let after_auth = s.kbase.calls() - auth_calls;
    println!("  auth calls during the measured run: {after_auth} (cache misses)");
    let js = async_nats::jetstream::new(async_nats::connect(s._server.url()).await.unwrap());
    let kv = js.get_key_value(topology::REQUESTS_BUCKET).await.unwrap();
    let (rate, lat) = raw_kv_create(&kv, 5).await;
    println!(
        "raw JetStream KV create, 32 concurrent, 5 s:  {rate:.0} ops/s  p50 {}  p99 {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
    s.stop.cancel();
    let _ = std::fs::remove_file(script);
}

async fn bench_e2e(fsync: bool) {
    let s = stack(true, fsync).await;
    println!(
        "e2e: nats-server with {}",
        if fsync {
            "sync_interval: always (fsync per write)"
        } else {
            "the default sync interval"
        }
    );
    let http = reqwest::Client::new();
    let submit = |i: usize| {
        let http = http.clone();
        let base = s.base.clone();
        async move {
            let r = http
                .post(format!("{base}/requests/"))
                .bearer_auth(format!("bench-e2e-{i}"))
                .json(&serde_json::json!({"tenant_name": format!("e2e{i}")}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                body["request_id"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    // Latency, one request at a time.
    let mut to_slack = Vec::new();
    let mut to_applied = Vec::new();
    let mut non2xx = 0;
    for i in 0..100 {
        let t0 = Instant::now();
        let (status, id) = submit(i).await;
        if status != 202 {
            non2xx += 1;
            continue;
        }
        // Woken by each answered Slack call, not a polling loop (it would steal the CPU
        // this measures).
        let posted = s
            .slack
            .changes()
            .wait_for(Duration::from_secs(30), || {
                s.slack
                    .messages()
                    .into_iter()
                    .find(|m| m.blocks.to_string().contains(&id))
                    .map(|m| m.posted_at)
            })
            .await
            .unwrap_or_else(|| panic!("request {i} was not posted within 30 s"));
        to_slack.push(posted - t0);
        let t1 = Instant::now();
        let r = http
            .post(format!("{}/approvals/approve", s.base))
            .bearer_auth("bench-admin")
            .json(&serde_json::json!({"request_id": id}))
            .send()
            .await
            .unwrap();
        if r.status() != 202 {
            non2xx += 1;
            continue;
        }
        // The tenant API: the applier adds the member with a POST.
        let members = format!("/tenants/e2e{i}/members/");
        let applied = s
            .governance
            .changes()
            .wait_for(Duration::from_secs(30), || {
                s.governance
                    .calls()
                    .into_iter()
                    .find(|c| {
                        c.method == "POST"
                            && c.path.starts_with(&members)
                            && (200..300).contains(&c.status)
                    })
                    .map(|c| c.at)
            })
            .await
            .unwrap_or_else(|| panic!("request {i} was not applied within 30 s"));
        to_applied.push(applied - t1);
    }
    to_slack.sort();
    to_applied.sort();
    println!(
        "e2e: submit → Slack message posted   p50 {}  p99 {}  (100 requests, {non2xx} non-2xx)",
        ms(pct(&to_slack, 0.5)),
        ms(pct(&to_slack, 0.99))
    );
    println!(
        "e2e: approve → governance call made  p50 {}  p99 {}",
        ms(pct(&to_applied, 0.5)),
        ms(pct(&to_applied, 0.99))
    );

    // Sustained lifecycles: 32 clients submit and approve as fast as they can.
    const M: usize = 2_000;
    let before = s.governance.add_calls();
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (http, base, next, failures) =
                (http.clone(), s.base.clone(), next.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= M {
                        return;
                    }
                    let r = http
                        .post(format!("{base}/requests/"))
                        .bearer_auth(format!("bench-life-{i}"))
                        .json(&serde_json::json!({"tenant_name": format!("life{i}")}))
                        .send()
                        .await
                        .unwrap();
                    if r.status() != 202 {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let body: serde_json::Value = r.json().await.unwrap();
                    let r = http
                        .post(format!("{base}/approvals/approve"))
                        .bearer_auth("bench-admin")
                        .json(&serde_json::json!({"request_id": body["request_id"]}))
                        .send()
                        .await
                        .unwrap();
                    if r.status() != 202 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let submitted_in = start.elapsed();
    let want = before + M - failures.load(Ordering::Relaxed) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.governance.add_calls() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} grants were applied within 120 s",
            s.governance.add_calls() - before
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_applied = start.elapsed();
    // Slack updates trail the grants; wait for them so the notifier's work is counted too.
    let granted_shown = || {
        s.slack
            .messages()
            .iter()
            .filter(|m| m.blocks.to_string().contains("access granted"))
            .count()
    };
    let (slack_done, shown) = loop {
        let updated = granted_shown();
        if updated >= want || start.elapsed() > all_applied + Duration::from_secs(60) {
            break (start.elapsed(), updated);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "e2e: {M} lifecycles (submit, approve, apply, Slack post + updates): {:.0}/s to applied, {:.0}/s including Slack updates ({shown} of {want} messages showed the grant); submissions took {:.1} s; {} non-2xx",
        M as f64 / all_applied.as_secs_f64(),
        shown as f64 / slack_done.as_secs_f64(),
        submitted_in.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    s.stop.cancel();
}

/// Times `n` sequential GETs of `path`; returns (p50, p99, non-2xx).
async fn time_gets(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    n: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).bearer_auth(token).send().await;
        let ok = match r {
            Ok(r) => {
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        };
        times.push(t.elapsed());
        failed += usize::from(!ok);
    }
    times.sort();
    (pct(&times, 0.5), pct(&times, 0.99), failed)
}

/// The resident set of a process, from `/proc` (kB → MB).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Flat cost: with 1k, 10k and 100k finished requests stored, what a user with one
/// request waits for, one expiry sweep, and the decision worker's memory. Each size gets
/// a fresh server; the user's calls are timed after 20 untimed ones (the KBase token is
/// then cached: the numbers are the store's cost, not the auth service's).
async fn bench_growth() {
    let decision_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("tars-decision");
    println!(
        "growth: GET /requests by a user with one request, GET /requests/{{id}}, one expiry sweep, \
         and the RSS of a tars-decision process, with N finished requests stored \
         (default sync interval; 200 sequential calls each, auth cache warm)"
    );
    println!(
        "{:>8} | {:>22} | {:>22} | {:>10} | {:>12} | non-2xx",
        "stored", "GET /requests p50/p99", "GET /requests/{id}", "sweep p50", "decision RSS"
    );
    for n in [1_000usize, 10_000, 100_000] {
        let s = stack(false, false).await;
        let url = s._server.url();
        let http = reqwest::Client::new();
        let token = "bench-growth";
        let r: serde_json::Value = http
            .post(format!("{}/requests/", s.base))
            .bearer_auth(token)
            .json(&serde_json::json!({"tenant_name": "flat"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["request_id"].as_str().unwrap().to_owned();
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        tars_tests::seed_finished(&js, "old", n).await;
        // The relay reads every record revision once: wait until it has read the seeded
        // ones (a year of history was relayed long ago), so the timings are steady state.
        let relay_started = Instant::now();
        let relay: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("KV_TARS_REQUESTS")
            .await
            .unwrap()
            .get_consumer("relay")
            .await
            .unwrap();
        tars_tests::eventually(Duration::from_secs(120), "the relay caught up", || {
            let mut relay = relay.clone();
            async move {
                let info = relay.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
        let relayed = relay_started.elapsed();
        let list_url = format!("{}/requests", s.base);
        let one_url = format!("{}/requests/{id}", s.base);
        time_gets(&http, &list_url, token, 20).await;
        let (l50, l99, lf) = time_gets(&http, &list_url, token, 200).await;
        let (g50, g99, gf) = time_gets(&http, &one_url, token, 200).await;
        let conn = tars_jetstream::service::connect(&common(&url), "bench-sweeper", Metrics::new())
            .await
            .unwrap();
        let sweeper = tars_decision::Worker::new(&conn, tars_domain::machine::Policy::default());
        let mut sweeps = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            sweeper.expire_stale(tars_domain::now()).await.unwrap();
            sweeps.push(t.elapsed());
        }
        sweeps.sort();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let rss = match std::process::Command::new(&decision_bin)
            .env("NATS_URL", &url)
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("EXPIRY_SWEEP_INTERVAL", "1s")
            .env("LOG_LEVEL", "error")
            .spawn()
        {
            Ok(mut child) => {
                // RSS after three sweeps (each sets the oldest-pending gauge, which grows
                // by the sweep interval), read while the process runs.
                let gauge = || async {
                    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
                        .await
                        .ok()?
                        .text()
                        .await
                        .ok()?;
                    text.lines()
                        .find_map(|l| l.strip_prefix("tars_oldest_pending_request_seconds "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| *v > 0.0)
                };
                let first =
                    tars_tests::eventually(Duration::from_secs(60), "a first sweep", gauge).await;
                tars_tests::eventually(Duration::from_secs(60), "two more sweeps", || async {
                    gauge().await.filter(|v| *v >= first + 2.0)
                })
                .await;
                let rss = rss_mb(child.id());
                let _ = child.kill();
                let _ = child.wait();
                format!("{rss:.1} MB")
            }
            Err(e) => format!("n/a ({e}: build it with `cargo build --release -p tars-decision`)"),
        };
        println!(
            "{n:>8} | {:>22} | {:>22} | {:>10} | {:>12} | {} (relay caught up in {:.1} s)",
            format!("{} / {}", ms(l50), ms(l99)),
            format!("{} / {}", ms(g50), ms(g99)),
            ms(pct(&sweeps, 0.5)),
            rss,
            lf + gf,
            relayed.as_secs_f64()
        );
        s.stop.cancel();
    }
}

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    println!(
        "tars-bench on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if which == "worker" || which == "all" {
        bench_worker().await;
    }
    if which == "growth" || which == "all" {
        bench_growth().await;
    }
    if which == "slow-slack" || which == "all" {
        bench_ingress(false, true).await;
    }
    for fsync in [true, false] {
        if which == "ingress" || which == "all" {
            bench_ingress(fsync, false).await;
        }
        if which == "e2e" || which == "all" {
            bench_e2e(fsync).await;
        }
    }
}
