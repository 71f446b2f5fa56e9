//! All four services on a NATS cluster configured as TARS ships it, with streams and
//! bucket at three replicas, through the two ways a cluster loses a node.
//!
//! The cluster is the one `deploy/nats/values.yaml` describes, read when the tests run
//! (`values.rs`): as many nodes as `config.cluster.replicas`, and every key of
//! `config.merge` and `config.jetstream.merge` written into each node's `nats.conf` (top
//! level and `jetstream { }` block), rendered as the chart renders them; a key that cannot
//! be rendered fails the tests by name, and nats-server refuses a key it does not know. So
//! what is tested is what ships (`sync_interval`, `max_file_store`, `max_payload`, the lame
//! duck settings), and the two cannot drift apart.
//!
//! - `losing_the_stream_leader_loses_and_repeats_nothing`: the `TARS_EVENTS` leader is
//!   SIGKILLed half-way through a load of submissions and approvals. Every request accepted
//!   (202) is applied, granted once in governance and posted to Slack once: a crash of one
//!   node of three loses no acknowledged write and makes no worker repeat one.
//! - `a_partitioned_node_misses_nothing_and_catches_up`: each node runs in its own network
//!   namespace (`tars_testkit::netns`), and the `TARS_EVENTS` leader is cut off the network
//!   (its bridge port down) while the load goes on, then plugged back in. The two nodes left
//!   elect new leaders and carry on (requests made during the cut are applied during it),
//!   clients ride out the failover by trying 503s again, and after the heal every accepted
//!   request is applied, granted once and posted once; the cut node catches up: its own
//!   replicas of `TARS_EVENTS` and the `TARS_REQUESTS` bucket's stream (read from its
//!   monitoring endpoint) hold the leader's messages up to the leader's last sequence, and
//!   a client connected to it alone gets JetStream answers again. The test process's own
//!   connections to the cut node are reset when it is cut, standing in for what the
//!   clients' PING timeout (minutes by default) finds, so the test runs in seconds. It needs
//!   root (`ip netns`), as CI has, and fails, saying so, without.
//!
//! Its own binary, and its two cluster tests one after the other: three nats-servers with
//! fsync, four services and a load on two cores are measured alone, not against another
//! test's load.
#![allow(clippy::unwrap_used, missing_docs)]

mod pipeline;
#[allow(dead_code)]
#[path = "../it/stack.rs"]
mod stack;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;
mod values;

use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;
use tars_jetstream::topology::{EVENTS_STREAM, REQUESTS_BUCKET};
use tars_testkit::NatsCluster;
use tars_testkit::nats_server::ClusterSettings;

use crate::pipeline::{Client, Pipeline};
use crate::support::eventually;

const REQUESTS: usize = 120;

/// Held by each cluster test for its whole run: the harness runs a binary's tests in
/// parallel, and two clusters of three fsync-ing nats-servers with four services each on
/// two cores stretch leader elections past what the ingress rides out (seen in CI: an
/// approval answered 503 after the ten-second ride-out).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The stream behind the `TARS_REQUESTS` bucket.
fn requests_stream() -> String {
    format!("KV_{REQUESTS_BUCKET}")
}

/// The cluster `settings` describe; fails naming the values file. The services' logs are
/// printed (captured per test) when `RUST_LOG` asks for them.
fn start(settings: &ClusterSettings) -> NatsCluster {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    NatsCluster::start_with(settings)
        .unwrap_or_else(|e| panic!("start the cluster {} describes: {e}", values::VALUES))
}

/// A JetStream context on `url`, for looking at streams.
async fn observer(url: &str) -> jetstream::Context {
    let client = tars_jetstream::nats::connect(url, None, "observer")
        .await
        .unwrap();
    jetstream::new(client)
}

/// The name of `stream`'s leader now, if it has one.
async fn leader_of(js: &jetstream::Context, stream: &str) -> Option<String> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

#[tokio::test]
async fn losing_the_stream_leader_loses_and_repeats_nothing() {
    let _alone = ALONE.lock().await;
    let mut cluster = start(&values::shipped(false));
    let url = cluster.url();
    let p = Pipeline::start(&url).await;
    let js = observer(&url).await;

    let mut ids = p.load(0..REQUESTS / 2, 20, Client::Strict).await;
    let leader = leader_of(&js, EVENTS_STREAM)
        .await
        .expect("a stream leader");
    let index = cluster.index_of(&leader).unwrap();
    cluster.nodes[index].kill();
    ids.extend(p.load(REQUESTS / 2..REQUESTS, 20, Client::Strict).await);

    p.assert_each_applied_once(&js, &ids).await;
    p.stop().await;
}

#[tokio::test]
async fn a_partitioned_node_misses_nothing_and_catches_up() {
    let _alone = ALONE.lock().await;
    let mut cluster = start(&values::shipped(true));
    let url = cluster.url();
    let p = Pipeline::start(&url).await;
    let js = observer(&url).await;
    let (before, during) = (REQUESTS / 3, 2 * REQUESTS / 3);

    let mut ids = p.load(0..before, 20, Client::Retrying).await;
    let leader = leader_of(&js, EVENTS_STREAM)
        .await
        .expect("a stream leader");
    let cut = cluster.index_of(&leader).unwrap();
    cluster.cut(cut).unwrap();

    // The other two carry on without it: a new leader, and the requests made now applied
    // before the cut heals.
    ids.extend(p.load(before..during, 20, Client::Retrying).await);
    eventually(
        Duration::from_secs(60),
        "the requests made during the cut applied without the cut node",
        || async { (p.granted(before..during) == during - before).then_some(()) },
    )
    .await;
    let new_leader = eventually(
        Duration::from_secs(30),
        "a TARS_EVENTS leader on the other side of the cut",
        || async { leader_of(&js, EVENTS_STREAM).await.filter(|l| *l != leader) },
    )
    .await;
    cluster.heal(cut).unwrap();

    ids.extend(p.load(during..REQUESTS, 20, Client::Retrying).await);
    p.assert_each_applied_once(&js, &ids).await;
    for stream in [EVENTS_STREAM.to_owned(), requests_stream()] {
        caught_up(&cluster, cut, &stream).await;
    }
    eprintln!(
        "cut {leader}, new leader {new_leader}; {} calls answered 503 and tried again",
        p.retried()
    );
    let stale = p.stale_reads();
    p.stop().await;
    assert!(
        stale.is_empty(),
        "the ingress answered 404 for {} requests it had accepted (a replica without the record answered the read):\n{}",
        stale.len(),
        stale.join("\n")
    );
}

/// The state of the replica of `stream` on the node serving `monitoring` (its `/jsz`):
/// messages and last sequence.
async fn local_state(http: &reqwest::Client, monitoring: &str, stream: &str) -> Option<(u64, u64)> {
    let jsz: Value = http
        .get(format!("{monitoring}/jsz?accounts=true&streams=true"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == stream)
        .and_then(|s| {
            Some((
                s["state"]["messages"].as_u64()?,
                s["state"]["last_seq"].as_u64()?,
            ))
        })
}

/// Waits until node `cut` holds all of `stream`: a client connected to that node alone
/// gets the stream's info (answered by its leader), which names the node current, and the
/// node's own replica (its `/jsz`) holds as many messages, up to the same last sequence, as
/// the leader's and every other node's.
async fn caught_up(cluster: &NatsCluster, cut: usize, stream: &str) {
    let name = format!("n{cut}");
    let node = &cluster.nodes[cut];
    let client = async_nats::ConnectOptions::new()
        .name("cut-node-observer")
        .ignore_discovered_servers()
        .connect(node.url())
        .await
        .unwrap();
    assert_eq!(
        client.server_info().server_name,
        name,
        "connected to the cut node"
    );
    let js = jetstream::new(client);
    let http = reqwest::Client::new();
    let seen = eventually(
        Duration::from_secs(60),
        &format!("{stream} on the cut node {name} caught up"),
        || async {
            let mut s = js.get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            let cluster_info = info.cluster.as_ref()?;
            let leader = cluster_info.leader.as_deref()?;
            let current = leader == name
                || cluster_info
                    .replicas
                    .iter()
                    .any(|r| r.name == name && r.current && !r.offline && r.lag.unwrap_or(0) == 0);
            let want = (info.state.messages, info.state.last_sequence);
            let mut states = Vec::new();
            for n in &cluster.nodes {
                states.push(local_state(&http, &n.monitoring_url()?, stream).await?);
            }
            (current && states.iter().all(|s| *s == want)).then_some((want, states))
        },
    )
    .await;
    eprintln!(
        "{stream}: (messages, last sequence) {:?} on every node",
        seen.0
    );
}
