//! Flat cost: with N finished requests stored, what a user with one request waits for,
//! one expiry sweep, and the memory of a real `tars-decision` process. Each size gets a
//! fresh server; the user's calls are timed after 20 untimed ones (the KBase token is
//! then cached: the numbers are the store's cost, not the auth service's).

use std::time::{Duration, Instant};

use tars_observability::metrics::Metrics;

use super::stack::Stack;
use super::{ms, pct, plan, procs};

/// Times `n` sequential GETs of `url`; returns (p50, p99, non-2xx).
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
        let ok = match http.get(url).bearer_auth(token).send().await {
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

/// Waits until the relay (which reads every record revision once) has read the seeded
/// ones, as a year of history was relayed long ago, so the timings are steady state.
async fn relay_caught_up(js: &async_nats::jetstream::Context) -> Duration {
    let started = Instant::now();
    let relay: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("KV_TARS_REQUESTS")
        .await
        .expect("the requests bucket's stream")
        .get_consumer("relay")
        .await
        .expect("the relay consumer");
    tars_tests::eventually(Duration::from_secs(120), "the relay caught up", || {
        let mut relay = relay.clone();
        async move {
            let info = relay.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    started.elapsed()
}

/// p50 of 20 expiry sweeps, run in this process against the stored requests.
async fn sweep_p50(url: &str) -> Duration {
    let conn =
        tars_jetstream::service::connect(&super::common(url), "bench-sweeper", Metrics::new())
            .await
            .expect("connect the sweeper");
    let sweeper = tars_decision::Worker::new(&conn, tars_domain::machine::Policy::default());
    let mut sweeps = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        sweeper
            .expire_stale(tars_domain::now())
            .await
            .expect("a sweep");
        sweeps.push(t.elapsed());
    }
    sweeps.sort();
    pct(&sweeps, 0.5)
}

/// The oldest-pending gauge a sweep sets, from a decision process's `/metrics`.
async fn oldest_pending(port: u16) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("tars_oldest_pending_request_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
}

/// Starts a `tars-decision` process sweeping every second and returns its resident set
/// (MB) after three sweeps (each sets the oldest-pending gauge, which grows by the sweep
/// interval), read while it runs.
async fn decision_rss(s: &mut Stack) -> f64 {
    let mut env = s.env_of("tars-decision");
    env.push(("EXPIRY_SWEEP_INTERVAL", "1s".into()));
    let decision = s.add("tars-decision", &env).await;
    let (port, pid) = (decision.health_port, decision.pid());
    let first = tars_tests::eventually(Duration::from_secs(60), "a first sweep", || {
        oldest_pending(port)
    })
    .await;
    tars_tests::eventually(Duration::from_secs(60), "two more sweeps", || async move {
        oldest_pending(port).await.filter(|v| *v >= first + 2.0)
    })
    .await;
    procs::usage(pid).rss_kb as f64 / 1024.0
}

/// One size: a fresh stack, `n` finished requests stored, then the timings.
async fn at_size(n: usize) {
    let calls = plan::get().growth_calls;
    let mut s = Stack::start(&format!("growth-{n}"), false, false).await;
    let url = s.nats.url();
    let http = reqwest::Client::new();
    let token = "bench-growth";
    let r: serde_json::Value = http
        .post(format!("{}/requests/", s.base))
        .bearer_auth(token)
        .json(&serde_json::json!({"tenant_name": "flat"}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("a JSON answer");
    let id = r["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request id in {r}"))
        .to_owned();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
    tars_tests::seed_finished(&js, "old", n).await;
    let relayed = relay_caught_up(&js).await;
    let list_url = format!("{}/requests", s.base);
    let one_url = format!("{}/requests/{id}", s.base);
    time_gets(&http, &list_url, token, 20).await;
    let load = s.snapshot();
    let (l50, l99, lf) = time_gets(&http, &list_url, token, calls).await;
    let (g50, g99, gf) = time_gets(&http, &one_url, token, calls).await;
    let sweep = sweep_p50(&url).await;
    let rss = decision_rss(&mut s).await;
    println!(
        "{n:>8} | {:>22} | {:>22} | {:>10} | {:>9.1} MB | {} (relay caught up in {:.1} s)",
        format!("{} / {}", ms(l50), ms(l99)),
        format!("{} / {}", ms(g50), ms(g99)),
        ms(sweep),
        rss,
        lf + gf,
        relayed.as_secs_f64()
    );
    if lf + gf > 0 {
        procs::problem(format!("growth at {n}: {} non-2xx reads", lf + gf));
    }
    s.footprint(&load, Some((2 * calls, "call")));
    s.stop().await;
}

pub async fn run() {
    let p = plan::get();
    println!(
        "growth: GET /requests by a user with one request, GET /requests/{{id}}, one expiry sweep, \
         and the RSS of a tars-decision process, with N finished requests stored \
         (default sync interval; {} sequential calls each, auth cache warm)",
        p.growth_calls
    );
    println!(
        "{:>8} | {:>22} | {:>22} | {:>10} | {:>12} | non-2xx",
        "stored", "GET /requests p50/p99", "GET /requests/{id}", "sweep p50", "decision RSS"
    );
    for &n in p.growth_sizes {
        at_size(n).await;
    }
}
