//! Accepted **and posted**: what an approver sees, submissions a second that are both
//! accepted and on the Slack channel, counted from the start of the load until the last
//! accepted request's message arrived (TARS accepts before it posts, so the notifier's
//! backlog after the load counts against it). With `TARS_BENCH_COMPARE_CMD` (a program
//! and its arguments, run without a shell) the same load, the same stand-ins and the
//! same count run against another service of the same API in the same run: the Python
//! service TARS replaces posts to Slack inside the request.
//!
//! The compared service gets the stand-ins' addresses as the Python service reads them
//! (`PORT`, `KBASE_AUTH_URL`, `SLACK_API_URL`, `SLACK_BOT_TOKEN`, `SLACK_SIGNING_SECRET`,
//! `SLACK_CHANNEL_ID`, `GOVERNANCE_API_URL`); nothing of it is in this repository.

use std::time::{Duration, Instant};

use tars_testkit::nats_server::free_port;
use tars_testkit::standin::{governance::FakeGovernance, kbase::FakeKbase, slack::FakeSlack};

use super::ingress::{CONNECTIONS, Summary, WRK_SCRIPT, wrk};
use super::stack::{self, Stack};
use super::{plan, procs};

/// One service's run: wrk's summary, the requests it accepted, the messages posted for
/// them and when the last one arrived.
struct Outcome {
    run: Summary,
    accepted: usize,
    posted: usize,
    /// From the start of the load until the last accepted request was posted (`None`: not
    /// all were, within the deadline).
    until_posted: Option<Duration>,
    load: Duration,
}

impl Outcome {
    /// Accepted and posted per second, over the whole window.
    fn rate(&self) -> Option<f64> {
        self.until_posted
            .map(|d| self.accepted as f64 / d.as_secs_f64())
    }

    fn print(&self, who: &str) {
        let non_2xx = self.run.non_2xx();
        let (socket_errors, _) = self.run.socket_errors();
        println!(
            "  {who}: {} req/s  p50 {}  p99 {}  non-2xx {non_2xx}  socket errors {socket_errors}",
            self.run.value("Requests/sec:"),
            self.run.value("50%"),
            self.run.value("99%"),
        );
        match (self.until_posted, self.rate()) {
            (Some(d), Some(rate)) => println!(
                "    {} accepted, {} posted; the last posted {:.2} s after the load stopped: \
                 accepted and posted {rate:.0}/s",
                self.accepted,
                self.posted,
                d.saturating_sub(self.load).as_secs_f64()
            ),
            _ => println!(
                "    {} accepted, only {} posted within {:?}",
                self.accepted,
                self.posted,
                plan::COMPLETION_DEADLINE
            ),
        }
        if non_2xx > 0 || socket_errors > 0 || self.until_posted.is_none() {
            procs::problem(format!(
                "posted ({who}): {non_2xx} non-2xx, {socket_errors} socket errors, {} of {} posted",
                self.posted, self.accepted
            ));
        }
    }
}

/// Warms `base`'s token cache: the measured pass's tokens, bodies refused after
/// authentication (nothing posted, nothing stored).
async fn warm(base: &str, script: &std::path::Path) {
    wrk(base, script, plan::get().wrk_warmup_secs, true).await;
}

/// Loads `base` for the plan's wrk run and waits until Slack holds a message for every
/// accepted request.
async fn load(base: &str, slack: &FakeSlack, script: &std::path::Path) -> Outcome {
    let p = plan::get();
    let before = slack.with_messages(<[_]>::len);
    let start = Instant::now();
    let run = wrk(base, script, p.wrk_secs, false).await;
    let load = start.elapsed();
    let accepted = run.requests().saturating_sub(run.non_2xx());
    let posted = || slack.with_messages(<[_]>::len).saturating_sub(before);
    let until_posted = slack
        .changes()
        .wait_for(plan::COMPLETION_DEADLINE, || {
            (posted() >= accepted).then(|| start.elapsed())
        })
        .await;
    Outcome {
        run,
        accepted,
        posted: posted(),
        until_posted,
        load,
    }
}

/// TARS (the four services, default sync), then the compared service if there is one.
pub async fn run() {
    let mut s = Stack::start("posted", true, false).await;
    let script = procs::log_dir().join("posted-wrk.lua");
    std::fs::write(&script, WRK_SCRIPT).expect("write the wrk script");
    println!(
        "  POST /requests/, {CONNECTIONS} connections, {} s (wrk, one of 5,000 users and a new \
         tenant per request, auth cache warm), until every accepted request is on the channel",
        plan::get().wrk_secs
    );
    warm(&s.base, &script).await;
    let before = s.snapshot();
    let tars = load(&s.base, &s.slack, &script).await;
    s.assert_running();
    tars.print("TARS");
    s.footprint(&before, Some((tars.accepted, "posted request")));
    s.stop().await;
    let Some(cmd) = std::env::var("TARS_BENCH_COMPARE_CMD")
        .ok()
        .filter(|c| !c.trim().is_empty())
    else {
        println!("  (TARS_BENCH_COMPARE_CMD is not set: no service to compare with)");
        let _ = std::fs::remove_file(script);
        return;
    };
    let other = compare(&cmd, &script).await;
    if let (Some(t), Some(o)) = (tars.rate(), other.and_then(|o| o.rate())) {
        println!("  accepted and posted, TARS / compared: {:.1}×", t / o);
    }
    let _ = std::fs::remove_file(script);
}

/// Runs `cmd` against fresh stand-ins and measures it the same way.
async fn compare(cmd: &str, script: &std::path::Path) -> Option<Outcome> {
    let kbase = FakeKbase::start().await;
    kbase.accept_any_with_prefix("bench-");
    let slack = FakeSlack::start(stack::SLACK_TOKEN, &[stack::CHANNEL]).await;
    let governance = FakeGovernance::start(stack::GOVERNANCE_TOKEN).await;
    let port = free_port();
    let mut words = cmd.split_whitespace();
    let program = words.next()?;
    let log = procs::log_dir().join("posted-compared.log");
    let out = std::fs::File::create(&log).expect("create a log file");
    let err = out.try_clone().expect("clone a log file handle");
    let spawned = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(words)
        .env("PORT", port.to_string())
        .env("KBASE_AUTH_URL", kbase.url())
        .env("SLACK_API_URL", slack.url())
        .env("SLACK_BOT_TOKEN", stack::SLACK_TOKEN)
        .env("SLACK_SIGNING_SECRET", stack::SIGNING_SECRET)
        .env("SLACK_CHANNEL_ID", stack::CHANNEL)
        .env("GOVERNANCE_API_URL", governance.url())
        .env("LOG_LEVEL", "WARNING")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn TARS_BENCH_COMPARE_CMD {cmd:?}: {e}"));
    let pid = child.id().expect("a running child has an id");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Any HTTP answer means it listens (its health path is its own business).
    while http.get(format!("{base}/health")).send().await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            procs::problem(format!(
                "the compared service exited with {status} before it answered (log: {})",
                log.display()
            ));
            return None;
        }
        assert!(
            spawned.elapsed() < plan::READY_DEADLINE,
            "the compared service did not answer within {:?} (log: {})",
            plan::READY_DEADLINE,
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_in = spawned.elapsed();
    warm(&base, script).await;
    let at_start = procs::usage(pid);
    let outcome = load(&base, &slack, script).await;
    let used = procs::usage(pid);
    outcome.print(&format!("compared ({cmd})"));
    let cpu = used.cpu.saturating_sub(at_start.cpu);
    println!(
        "    its process: ready in {}, CPU {:.2} s under load ({:.0} µs per posted request), \
         RSS {:.1} MB (peak {:.1} MB); KBase calls {} (the warm-up's: the auth cache was warm)",
        super::ms(ready_in),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / outcome.posted.max(1) as f64,
        used.rss_kb as f64 / 1024.0,
        used.peak_kb as f64 / 1024.0,
        kbase.calls()
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    Some(outcome)
}
