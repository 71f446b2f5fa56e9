//! `POST /requests/` under wrk (32 connections), each request a new user for a new
//! tenant, against the ingress process; beside it the raw JetStream KV create it is built
//! on, measured on the same server.

use std::time::Duration;

use super::stack::{Stack, sync_name};
use super::{plan, procs};

/// wrk's request generator: each thread numbers its requests, and request `n` of thread
/// `t` carries token `bench-<t>-<n mod 2500>` (one of 2,500 KBase users per thread, 5,000
/// in all: within the default `KBASE_CACHE_MAX_ENTRIES` of 10,000) and tenant `t<t>-<n>`,
/// so every request is a new request (never a dedupe hit) and no user is used by two
/// connections at once. With `TARS_BENCH_BODY=invalid` the body fails validation after
/// authentication (422), so a warm-up pass caches every token the measured pass will use
/// without storing anything (an empty tenant name: refused by TARS and by the Python
/// service alike, after authentication).
pub const WRK_SCRIPT: &str = r#"
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
  local tok = "bench-" .. id .. "-" .. (counter % 2500)
  local body = os.getenv("TARS_BENCH_BODY") == "invalid" and '{"tenant_name":""}'
    or ('{"tenant_name":"t' .. id .. "-" .. counter .. '","permission":"read_only"}')
  return wrk.format("POST", "/requests/", {["Authorization"] = "Bearer " .. tok, ["Content-Type"] = "application/json"}, body)
end
"#;

/// wrk's connections (`-c`).
pub const CONNECTIONS: usize = 32;

/// One wrk run's summary.
pub struct Summary(String);

impl Summary {
    /// The trimmed line starting with `key`.
    fn line(&self, key: &str) -> Option<&str> {
        self.0.lines().map(str::trim).find(|l| l.starts_with(key))
    }

    /// The value after `key` on its line (`Requests/sec:   2700.12` → `2700.12`).
    pub fn value(&self, key: &str) -> &str {
        self.line(key)
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .unwrap_or("?")
    }

    /// Requests completed (`27001 requests in 10.00s, …`).
    pub fn requests(&self) -> usize {
        self.0
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Non-2xx answers: wrk prints the line only when there were some.
    pub fn non_2xx(&self) -> usize {
        self.line("Non-2xx or 3xx responses:")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Socket errors (connect, read, write, timeout), summed, with wrk's breakdown (empty
    /// when none: wrk prints the line only when there were some).
    pub fn socket_errors(&self) -> (usize, &str) {
        let Some(line) = self.line("Socket errors:") else {
            return (0, "");
        };
        let line = line["Socket errors:".len()..].trim();
        let sum = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<usize>().ok())
            .sum();
        (sum, line)
    }
}

/// Runs wrk for `secs` against `base`, valid or invalid bodies. No wrk, or no summary
/// from it, is a failed benchmark, never a row of zeros.
pub async fn wrk(base: &str, script: &std::path::Path, secs: u32, invalid: bool) -> Summary {
    let out = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s")])
        .args(["--latency", "-s"])
        .arg(script)
        .arg(format!("{base}/requests/"))
        .env("TARS_BENCH_BODY", if invalid { "invalid" } else { "valid" })
        .output()
        .await;
    let o = match out {
        Ok(o) => o,
        Err(e) => panic!(
            "wrk is not available ({e}): install Debian's wrk (`apt-get install wrk`; \
             `make bench` and `make bench-smoke` do)"
        ),
    };
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && text.contains("Requests/sec"),
        "wrk gave no summary (exit {}):\n{text}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Summary(text)
}

/// The ingress alone (or, with `slow_slack`, with the workers running against a Slack
/// that takes 100 ms per call, to show that submissions never wait for Slack: the service
/// TARS replaces posted to Slack inside the request).
pub async fn run(fsync: bool, slow_slack: bool) {
    let p = plan::get();
    let scenario = match (slow_slack, fsync) {
        (true, _) => "slow-slack",
        (false, true) => "ingress-fsync",
        (false, false) => "ingress",
    };
    let s = Stack::start(scenario, slow_slack, fsync).await;
    if slow_slack {
        s.slack.faults().set_latency(Duration::from_millis(100));
    }
    let script = procs::log_dir().join(format!("{scenario}-wrk.lua"));
    std::fs::write(&script, WRK_SCRIPT).expect("write the wrk script");
    // Warm the auth cache: the same token sequence, bodies that fail validation after
    // authentication, so the cache holds every token the measured run will use.
    wrk(&s.base, &script, p.wrk_warmup_secs, true).await;
    let warm_calls = s.kbase.calls();
    let load = s.snapshot();
    let run = wrk(&s.base, &script, p.wrk_secs, false).await;
    let misses = s.kbase.calls() - warm_calls;
    let requests = run.requests();
    println!(
        "  POST /requests/, {CONNECTIONS} connections, {} s (wrk, one of 5,000 users and a new tenant per request{})",
        p.wrk_secs,
        if slow_slack {
            ", workers running, Slack answering in 100 ms"
        } else {
            ""
        }
    );
    println!(
        "    {} req/s  p50 {}  p90 {}  p99 {}  ({requests} requests)",
        run.value("Requests/sec:"),
        run.value("50%"),
        run.value("90%"),
        run.value("99%")
    );
    let non_2xx = run.non_2xx();
    let (socket_errors, breakdown) = run.socket_errors();
    let detail = if breakdown.is_empty() {
        String::new()
    } else {
        format!(" ({breakdown})")
    };
    println!("    non-2xx: {non_2xx}  socket errors: {socket_errors}{detail}");
    // Up to one KBase call per connection is the warm-up's last requests, still in the
    // ingress when wrk stopped and counted after it; beyond those, at most 1 % of the
    // measured requests may have asked KBase for the cache to count as warm.
    let warm = misses <= CONNECTIONS.max(requests / 100);
    println!(
        "    auth cache {}: the warm-up cached {warm_calls} tokens (KBase calls; the ingress's RSS \
         holds them), the measured run made {misses} KBase calls ({requests} requests; up to \
         {CONNECTIONS} are the warm-up's last)",
        if warm { "warm" } else { "NOT warm" }
    );
    if non_2xx > 0 {
        procs::problem(format!("{scenario}: {non_2xx} non-2xx answers"));
    }
    if socket_errors > 0 {
        procs::problem(format!("{scenario}: {socket_errors} socket errors{detail}"));
    }
    s.footprint(&load, Some((requests, "request")));
    raw_kv_create(&s, p.kv_create_secs, fsync).await;
    s.stop().await;
    let _ = std::fs::remove_file(script);
}

/// The raw operation a submission is built on, on the same server.
async fn raw_kv_create(s: &Stack, secs: u64, fsync: bool) {
    let client = async_nats::connect(s.nats.url())
        .await
        .expect("connect to nats-server");
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value(tars_jetstream::topology::REQUESTS_BUCKET)
        .await
        .expect("the requests bucket");
    let (rate, lat) = super::raw_kv_create(&kv, secs).await;
    println!(
        "  raw JetStream KV create, 32 concurrent, {secs} s, {}:  {rate:.0} ops/s  p50 {}  p99 {}",
        sync_name(fsync),
        super::ms(super::pct(&lat, 0.5)),
        super::ms(super::pct(&lat, 0.99))
    );
}
