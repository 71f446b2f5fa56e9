//! End to end through the four service processes: a request is submitted, posted to
//! Slack, approved (REST, as an admin), applied in the governance API and its message
//! updated to show the grant. Latency one lifecycle at a time, then a sustained run
//! whose rate counts completed lifecycles only. Every wait is woken by the stand-ins'
//! change notifications, never a polling loop (it would steal the CPU this measures).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tars_testkit::standin::Changes;
use tars_testkit::standin::slack::SlackMessage;

use super::plan::{self, COMPLETION_DEADLINE, STEP_DEADLINE};
use super::procs;
use super::stack::{ADMIN_TOKEN, Stack};

/// Clients of the sustained run.
const CLIENTS: usize = 32;

/// The request a Slack message is about (the metadata TARS posts it with).
fn request_of(m: &SlackMessage) -> Option<&str> {
    m.metadata["event_payload"]["request_id"].as_str()
}

/// Whether a message shows the grant: its fallback text ends with the request's status.
fn shows_grant(m: &SlackMessage) -> bool {
    m.text.ends_with("(applied)")
}

/// The tenant a governance path names (`/tenants/<tenant>/members/…`).
fn tenant_of(path: &str) -> Option<&str> {
    path.strip_prefix("/tenants/")?.split('/').next()
}

/// Submits a request for `tenant` as the user of `token`: its id on 202, else why not.
async fn submit(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    tenant: &str,
) -> Result<String, String> {
    let r = http
        .post(format!("{base}/requests/"))
        .bearer_auth(token)
        .json(&serde_json::json!({"tenant_name": tenant}))
        .send()
        .await
        .map_err(|e| format!("submit: {e}"))?;
    if r.status() != 202 {
        return Err(format!("submit: {}", r.status()));
    }
    let body: serde_json::Value = r.json().await.map_err(|e| format!("submit: {e}"))?;
    body["request_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("submit: no request_id in {body}"))
}

/// Approves request `id` as the admin (REST).
async fn approve(http: &reqwest::Client, base: &str, id: &str) -> Result<(), String> {
    let r = http
        .post(format!("{base}/approvals/approve"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"request_id": id}))
        .send()
        .await
        .map_err(|e| format!("approve: {e}"))?;
    if r.status() == 202 {
        Ok(())
    } else {
        Err(format!("approve: {}", r.status()))
    }
}

/// Latencies of lifecycles run one at a time, and what went wrong.
#[derive(Default)]
struct Samples {
    to_posted: Vec<Duration>,
    to_applied: Vec<Duration>,
    to_shown: Vec<Duration>,
    failures: Vec<String>,
}

/// One lifecycle, each step waited for (with a deadline) before the next.
async fn one_lifecycle(s: &Stack, http: &reqwest::Client, i: usize, out: &mut Samples) {
    let tenant = format!("e2e{i}");
    let t0 = Instant::now();
    let id = match submit(http, &s.base, &format!("bench-e2e-{i}"), &tenant).await {
        Ok(id) => id,
        Err(e) => return out.failures.push(format!("lifecycle {i}: {e}")),
    };
    let posted = s
        .slack
        .changes()
        .wait_for(STEP_DEADLINE, || {
            s.slack.with_messages(|ms| {
                ms.iter()
                    .find(|m| request_of(m) == Some(&id))
                    .map(|m| m.posted_at)
            })
        })
        .await;
    let Some(posted) = posted else {
        return out.failures.push(format!(
            "lifecycle {i}: not posted within {STEP_DEADLINE:?}"
        ));
    };
    out.to_posted.push(posted - t0);
    let t1 = Instant::now();
    if let Err(e) = approve(http, &s.base, &id).await {
        return out.failures.push(format!("lifecycle {i}: {e}"));
    }
    let members = format!("/tenants/{tenant}/members/");
    let applied = s
        .governance
        .changes()
        .wait_for(STEP_DEADLINE, || {
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
        .await;
    let Some(applied) = applied else {
        return out.failures.push(format!(
            "lifecycle {i}: not applied within {STEP_DEADLINE:?}"
        ));
    };
    out.to_applied.push(applied - t1);
    // The stand-in does not stamp updates: the waiter, woken by the update's answer,
    // takes the time.
    let shown = s
        .slack
        .changes()
        .wait_for(STEP_DEADLINE, || {
            s.slack
                .with_messages(|ms| {
                    ms.iter()
                        .any(|m| request_of(m) == Some(&id) && shows_grant(m))
                })
                .then(Instant::now)
        })
        .await;
    match shown {
        Some(shown) => out.to_shown.push(shown - t1),
        None => out.failures.push(format!(
            "lifecycle {i}: message not updated within {STEP_DEADLINE:?}"
        )),
    }
}

/// Prints p50 and p99 of `samples`.
fn latency(what: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "    {what:<40} p50 {}  p99 {}",
        super::ms(super::pct(samples, 0.5)),
        super::ms(super::pct(samples, 0.99))
    );
}

/// Prints how many `failures` there were (0 printed too) and the first few; records
/// them as a problem of the run.
fn report_failures(what: &str, failures: &[String]) {
    println!("    failures: {}", failures.len());
    for f in failures.iter().take(5) {
        println!("      {f}");
    }
    if !failures.is_empty() {
        procs::problem(format!("{what}: {} failures", failures.len()));
    }
}

/// Waits, woken by each of `changes`, until `count()` reaches `want` or `deadline`
/// passes. Returns the last count and when it last grew: the moment the last counted
/// item completed, as a waiter woken by every change sees it.
async fn count_until(
    changes: &Changes,
    want: usize,
    since: Instant,
    deadline: Instant,
    count: impl Fn() -> usize,
) -> (usize, Instant) {
    let mut last = (0, since);
    changes
        .wait_for(deadline.saturating_duration_since(Instant::now()), || {
            let n = count();
            if n > last.0 {
                last = (n, Instant::now());
            }
            (n >= want).then_some(())
        })
        .await;
    last
}

/// A lifecycle whose submission and approval were accepted.
struct Lifecycle {
    id: String,
    tenant: String,
}

/// `CLIENTS` clients submit and approve `n` requests (each a new user and tenant) as fast
/// as they can; what was accepted, and every refusal.
async fn drive(s: &Stack, http: &reqwest::Client, n: usize) -> (Vec<Lifecycle>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, base) = (http.clone(), s.base.clone());
            let (next, accepted, failures) = (next.clone(), accepted.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let tenant = format!("life{i}");
                    let done = match submit(&http, &base, &format!("bench-life-{i}"), &tenant).await
                    {
                        Ok(id) => approve(&http, &base, &id).await.map(|()| id),
                        Err(e) => Err(e),
                    };
                    match done {
                        Ok(id) => accepted.lock().unwrap().push(Lifecycle { id, tenant }),
                        Err(e) => failures.lock().unwrap().push(format!("lifecycle {i}: {e}")),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a client task");
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    (accepted, failures)
}

/// Which of `lifecycles` completed: posted, member added (2xx) and message showing the
/// grant; and how many stopped at each step.
fn completed(s: &Stack, lifecycles: &[Lifecycle]) -> (usize, [usize; 3]) {
    let (posted, shown): (HashSet<String>, HashSet<String>) = s.slack.with_messages(|ms| {
        let ids = |f: fn(&SlackMessage) -> bool| {
            ms.iter()
                .filter(|m| f(m))
                .filter_map(request_of)
                .map(str::to_owned)
                .collect()
        };
        (ids(|_| true), ids(shows_grant))
    });
    let added: HashSet<String> = s
        .governance
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && (200..300).contains(&c.status))
        .filter_map(|c| tenant_of(&c.path).map(str::to_owned))
        .collect();
    let mut stopped = [0; 3];
    let mut done = 0;
    for l in lifecycles {
        if !posted.contains(&l.id) {
            stopped[0] += 1;
        } else if !added.contains(&l.tenant) {
            stopped[1] += 1;
        } else if !shown.contains(&l.id) {
            stopped[2] += 1;
        } else {
            done += 1;
        }
    }
    (done, stopped)
}

/// The sustained run: its rate counts completed lifecycles only, up to the moment the
/// last one completed.
async fn sustained(s: &mut Stack, http: &reqwest::Client) {
    let n = plan::get().lifecycles;
    println!(
        "  sustained: {n} lifecycles by {CLIENTS} clients (submit, approve as an admin, tenant read \
         + member add, Slack post + updates)"
    );
    let adds_before = s.governance.add_calls();
    let shown_count = || {
        s.slack
            .with_messages(|ms| ms.iter().filter(|m| shows_grant(m)).count())
    };
    let shown_before = shown_count();
    let load = s.snapshot();
    let start = Instant::now();
    let (accepted, mut failures) = drive(s, http, n).await;
    let submitted_in = start.elapsed();
    let want = accepted.len();
    let deadline = Instant::now() + COMPLETION_DEADLINE;
    let (applied, applied_at) = count_until(s.governance.changes(), want, start, deadline, || {
        s.governance.add_calls() - adds_before
    })
    .await;
    let (_, shown_at) = count_until(s.slack.changes(), want, start, deadline, || {
        shown_count() - shown_before
    })
    .await;
    let (done, [not_posted, not_applied, not_shown]) = completed(s, &accepted);
    if done < want {
        s.assert_running();
        failures.push(format!(
            "{} accepted lifecycles did not complete within {COMPLETION_DEADLINE:?} of the last \
             approval: {not_posted} not posted, {not_applied} not applied, {not_shown} message \
             not updated",
            want - done
        ));
    }
    assert!(
        done > 0,
        "no lifecycle completed ({} failures: {:?})",
        failures.len(),
        failures.first()
    );
    let secs = |t: Instant| (t - start).as_secs_f64();
    println!(
        "    completed {done} of {n}: {:.0} lifecycles/s over {:.2} s (to applied: {:.0}/s); \
         submissions and approvals took {:.2} s",
        done as f64 / secs(shown_at),
        secs(shown_at),
        applied.min(want) as f64 / secs(applied_at),
        submitted_in.as_secs_f64()
    );
    report_failures("e2e sustained", &failures);
    s.footprint(&load, Some((done, "lifecycle")));
}

pub async fn run(fsync: bool) {
    let scenario = if fsync { "e2e-fsync" } else { "e2e" };
    let mut s = Stack::start(scenario, true, fsync).await;
    let http = reqwest::Client::new();
    let n = plan::get().latency_samples;
    let mut samples = Samples::default();
    for i in 0..n {
        let failed = samples.failures.len();
        one_lifecycle(&s, &http, i, &mut samples).await;
        if samples.failures.len() > failed {
            s.assert_running();
        }
    }
    println!("  one at a time ({n} lifecycles, each step waited for):");
    latency("submit → Slack message posted", &mut samples.to_posted);
    latency("approve → governance member added", &mut samples.to_applied);
    latency("approve → message shows the grant", &mut samples.to_shown);
    report_failures("e2e one at a time", &samples.failures);
    assert!(
        !samples.to_shown.is_empty(),
        "no lifecycle completed one at a time: {:?}",
        samples.failures.first()
    );
    sustained(&mut s, &http).await;
    s.stop().await;
}
