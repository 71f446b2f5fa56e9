//! All four services on a 3-node NATS cluster with replicated streams, started at once,
//! while the `TARS_EVENTS` stream leader is SIGKILLed mid-run.
//!
//! Its own binary: three nats-servers with fsync, four services and a load on two cores
//! are measured alone, not against the other tests' load.
#![allow(clippy::unwrap_used, missing_docs)]

#[allow(dead_code)]
#[path = "../it/stack.rs"]
mod stack;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tars_jetstream::topology::EVENTS_STREAM;
use tars_observability::metrics::Metrics;
use tars_testkit::NatsCluster;
use tars_testkit::standin::governance::FakeGovernance;
use tars_testkit::standin::kbase::FakeKbase;
use tars_testkit::standin::slack::FakeSlack;
use tokio_util::sync::CancellationToken;

use crate::stack::{ADMIN_TOKEN, BOT_TOKEN, CHANNEL, GOV_TOKEN, common, worker_args};
use crate::support::eventually;

const REQUESTS: usize = 120;

#[tokio::test]
async fn losing_the_stream_leader_loses_and_repeats_nothing() {
    let mut cluster = NatsCluster::start().unwrap();
    let url = cluster.url();
    let kbase = FakeKbase::start().await;
    kbase.add_user(ADMIN_TOKEN, "bob", &["CDM_JUPYTERHUB_ADMIN"]);
    let slack = FakeSlack::start(BOT_TOKEN, &[CHANNEL]).await;
    let governance = FakeGovernance::start(GOV_TOKEN).await;
    governance.allow_any_tenant(true);
    let replicated = || tars_jetstream::config::CommonArgs {
        replicas: 3,
        ..common(&url)
    };
    let stop = CancellationToken::new();

    // All four at once: their topology declarations race on a cluster that may still be
    // electing leaders.
    let ingress = tars_ingress::Application::build(
        tars_ingress::Args {
            submit_rate_per_minute: 10_000,
            ..tars_ingress::Args::local(replicated(), &kbase.url(), &slack.url())
        },
        Metrics::new(),
    );
    let notifier = tokio::spawn(tars_notifier::run(
        tars_notifier::Args {
            common: replicated(),
            worker: worker_args(),
            slack_bot: tars_slack::config::SlackBotArgs::new(BOT_TOKEN, &slack.url()),
            slack_channel_id: Some(CHANNEL.into()),
            slack_max_posts_per_second: None,
            slack_timeout: std::time::Duration::from_secs(10),
        },
        Metrics::new(),
        stop.clone(),
    ));
    let decision = tokio::spawn(tars_decision::run(
        tars_decision::Args {
            common: replicated(),
            worker: worker_args(),
            request_ttl: Duration::from_secs(7 * 86_400),
            sweep_interval: Duration::from_secs(30),
            request_retention: Duration::from_secs(400 * 86_400),
            reminder_interval: Duration::from_secs(86_400),
            access_expiry_warning: Duration::from_secs(86_400),
        },
        Metrics::new(),
        stop.clone(),
    ));
    let applier = tokio::spawn(tars_governance_applier::run(
        tars_governance_applier::Args {
            common: replicated(),
            worker: worker_args(),
            governance: tars_governance_applier::GovernanceArgs::new(&governance.url(), GOV_TOKEN),
        },
        Metrics::new(),
        stop.clone(),
    ));
    let app = ingress.await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let served = tokio::spawn({
        let stop = stop.clone();
        async move { app.run_until_stopped(stop).await }
    });
    let http = reqwest::Client::new();
    let served_ref = &served;
    let post = |path: String, token: String, body: serde_json::Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{path}: {e}; the ingress has stopped: {}",
                        served_ref.is_finished()
                    )
                });
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };

    let client = tars_jetstream::nats::connect(&url, None, "observer")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut ids = Vec::new();
    let mut killed = None;
    for chunk in (0..REQUESTS).collect::<Vec<_>>().chunks(20) {
        if ids.len() >= REQUESTS / 2 && killed.is_none() {
            let mut events = js.get_stream(EVENTS_STREAM).await.unwrap();
            let info = events.info().await.unwrap();
            let leader = info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .expect("a stream leader");
            let index: usize = leader.trim_start_matches('n').parse().unwrap();
            cluster.nodes[index].kill();
            killed = Some(leader);
        }
        let calls = chunk.iter().map(|i| {
            let token = format!("cluster-{i}");
            kbase.add_user(&token, &format!("member{i}"), &[]);
            async move {
                let (status, body) = post(
                    "/requests/".into(),
                    token,
                    json!({"tenant_name": format!("c{i}")}),
                )
                .await;
                assert_eq!(status, 202, "submission {i}: {body}");
                let id = body["request_id"].as_str().unwrap().to_owned();
                let (status, body) = post(
                    "/approvals/approve".into(),
                    ADMIN_TOKEN.into(),
                    json!({"request_id": id}),
                )
                .await;
                assert_eq!(status, 202, "approval {i}: {body}");
                id
            }
        });
        ids.extend(futures::future::join_all(calls).await);
    }
    assert!(killed.is_some(), "the leader was killed mid-run");

    // Every request granted exactly once, one Slack message each.
    eventually(
        Duration::from_secs(120),
        "every request applied",
        || async {
            let members: usize = (0..REQUESTS)
                .map(|i| governance.members_of(&format!("c{i}")).len())
                .sum();
            (members == REQUESTS).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "one message per request",
        || async {
            let mut per_request: HashMap<&str, usize> = HashMap::new();
            for m in slack.messages() {
                let text = m.blocks.to_string();
                if let Some(id) = ids.iter().find(|id| text.contains(id.as_str())) {
                    *per_request.entry(id.as_str()).or_default() += 1;
                }
            }
            (per_request.len() == REQUESTS).then_some(per_request)
        },
    )
    .await
    .values()
    .for_each(|n| assert_eq!(*n, 1, "a request posted more than once"));
    assert_eq!(
        governance.add_calls(),
        REQUESTS,
        "one governance change each"
    );
    for i in 0..REQUESTS {
        assert_eq!(
            governance.members_of(&format!("c{i}")),
            vec![(format!("member{i}"), "read_only".to_owned())]
        );
    }
    stop.cancel();
    let _ = served.await;
    notifier.await.unwrap().unwrap();
    decision.await.unwrap().unwrap();
    applier.await.unwrap().unwrap();
}
