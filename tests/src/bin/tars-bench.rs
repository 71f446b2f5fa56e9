//! `tars-bench`: throughput and latency of TARS on this machine, each next to the raw
//! JetStream operation it is built on, measured in the same run.
//!
//! ```text
//! cargo run --release -p tars-tests --bin tars-bench -- [worker|growth|slow-slack|posted|ingress|e2e|all] [--smoke]
//! ```
//!
//! The services run as they are deployed: the real binaries, each its own process, from
//! `$TARS_BENCH_BIN_DIR` (default `target/release`; an older build's binaries measure
//! that build with this harness), started with the environment a deployment gives them
//! and waited on until `/readyz` answers. nats-server and the stand-ins (Slack, KBase,
//! governance) run here. Each part prints every process's start-up time, idle CPU, CPU
//! under load and resident set (peak too), read from `/proc`.
//!
//! Every submission is a new request from a distinct user for a distinct tenant, so no
//! benchmark number comes from a dedupe hit or a 429; non-2xx answers, socket errors and
//! lifecycles that did not complete are counted and printed beside each rate, and make
//! the run exit non-zero. `--smoke` runs every part briefly through the same code (CI).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tars_domain::events::{Envelope, Event};
use tars_domain::{RequestId, TenantName, Username};
use tars_jetstream::config::CommonArgs;
use tars_jetstream::topology::{self, NOTIFIER, TopologyConfig};
use tars_jetstream::worker::{self, Delivery, Handler, Outcome, WorkerConfig};
use tars_observability::metrics::Metrics;
use tars_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

#[path = "tars-bench/e2e.rs"]
mod e2e;
#[path = "tars-bench/growth.rs"]
mod growth;
#[path = "tars-bench/ingress.rs"]
mod ingress;
#[path = "tars-bench/plan.rs"]
mod plan;
#[path = "tars-bench/posted.rs"]
mod posted;
#[path = "tars-bench/procs.rs"]
mod procs;
#[path = "tars-bench/stack.rs"]
mod stack;

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

/// The no-op handler: counts, and wakes the bench when the last message is in.
struct NoOp(Arc<Count>);

struct Count {
    seen: AtomicU64,
    target: u64,
    all_in: tokio::sync::Notify,
}

impl Handler for NoOp {
    async fn handle(&self, _d: Delivery) -> Outcome {
        if self.0.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.0.target {
            self.0.all_in.notify_one();
        }
        Outcome::Ack
    }
}

/// The worker runtime with a no-op handler against a raw pull + ack loop on the same
/// stream, over a curve of `WORKER_CONCURRENCY` values (the default is chosen from it).
async fn bench_worker() {
    let smoke = plan::get().smoke;
    let n: usize = if smoke { 2_000 } else { 20_000 };
    let curve: &[usize] = if smoke {
        &[16, 32]
    } else {
        &[1, 4, 8, 16, 32, 64, 128]
    };
    let server = NatsServer::start().unwrap();
    let client = tars_jetstream::nats::connect(&server.url(), None, "bench")
        .await
        .unwrap();
    let topo = topology::ensure(&client, &TopologyConfig::default())
        .await
        .unwrap();
    publish_events(&topo.js, n).await;

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
    while done < n {
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
    let raw_rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "worker: raw JetStream pull(256)+ack            {raw_rate:>9.0} msg/s  ({n} messages)"
    );

    for &concurrency in curve {
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
        let count = Arc::new(Count {
            seen: AtomicU64::new(0),
            target: n as u64,
            all_in: tokio::sync::Notify::new(),
        });
        let stop = CancellationToken::new();
        let cfg = WorkerConfig {
            concurrency,
            ..WorkerConfig::default()
        };
        let start = Instant::now();
        let task = tokio::spawn(worker::run(
            kind,
            topo.clone(),
            NoOp(count.clone()),
            cfg,
            Metrics::new(),
            stop.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(120), count.all_in.notified())
            .await
            .expect("the runtime handled every message within 2 minutes");
        let rate = n as f64 / start.elapsed().as_secs_f64();
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

/// The parts, in the order `all` runs them.
const PARTS: [&str; 6] = ["worker", "growth", "slow-slack", "posted", "ingress", "e2e"];

/// A part's header.
fn section(title: &str) {
    println!("\n== {title} ==");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("all", String::as_str);
    if which != "all" && !PARTS.contains(&which) {
        eprintln!(
            "usage: tars-bench [{}|all] [--smoke]; got {which:?}",
            PARTS.join("|")
        );
        std::process::exit(2);
    }
    plan::choose(args.iter().any(|a| a == "--smoke"));
    procs::print_logs_on_panic();
    println!(
        "tars-bench{} on {} cores",
        if plan::get().smoke {
            " --smoke (every part briefly: the numbers mean nothing)"
        } else {
            ""
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let runs = |part: &str| which == "all" || which == part;
    if which != "worker" {
        println!("services from {}", procs::bin_dir().display());
    }
    if runs("worker") {
        section("worker: the worker runtime with a no-op handler, in this process");
        bench_worker().await;
    }
    if runs("growth") {
        section("growth: cost with history");
        growth::run().await;
    }
    if runs("slow-slack") {
        section("slow-slack: ingress with the workers running and Slack answering in 100 ms");
        ingress::run(false, true).await;
    }
    if runs("posted") {
        section(
            "posted: accepted and posted, TARS and (TARS_BENCH_COMPARE_CMD) the service it replaces",
        );
        posted::run().await;
    }
    for fsync in [true, false] {
        if runs("ingress") {
            section(&format!(
                "ingress: nats-server with {}",
                stack::sync_name(fsync)
            ));
            ingress::run(fsync, false).await;
        }
        if runs("e2e") {
            section(&format!(
                "e2e: nats-server with {}",
                stack::sync_name(fsync)
            ));
            e2e::run(fsync).await;
        }
    }
    std::process::exit(procs::exit_status());
}
