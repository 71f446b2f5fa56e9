//! The JetStream topology and the publish path.

use tars_jetstream::topology::{self, DLQ_STREAM, EVENTS_STREAM, TopologyConfig, WORKERS};
use tars_testkit::NatsServer;

use crate::support::{Nats, submitted};

#[tokio::test]
async fn topology_declared_twice_in_parallel_is_the_same() {
    let server = NatsServer::start().unwrap();
    let cfg = TopologyConfig::default();
    let a = tars_jetstream::nats::connect(&server.url(), None, "a")
        .await
        .unwrap();
    let b = tars_jetstream::nats::connect(&server.url(), None, "b")
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(topology::ensure(&a, &cfg), topology::ensure(&b, &cfg));
    let (ta, _tb) = (ra.unwrap(), rb.unwrap());
    // A restart declares again: nothing changes, nothing fails.
    let again = topology::ensure(&a, &cfg).await.unwrap();

    let mut events = ta.js.get_stream(EVENTS_STREAM).await.unwrap();
    let info = events.info().await.unwrap().clone();
    assert_eq!(
        info.config.subjects,
        vec!["tars.request.>", "tars.decision.>", "tars.replay.>"]
    );
    assert_eq!(info.config.duplicate_window, topology::DUPLICATE_WINDOW);
    assert_eq!(info.config.num_replicas, 1);
    let mut dlq = again.js.get_stream(DLQ_STREAM).await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.subjects,
        vec!["tars.dlq.>"]
    );
    for kind in WORKERS {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            events.get_consumer(kind.name).await.unwrap();
        let ci = c.info().await.unwrap();
        // Its own subjects, and the replays addressed to it alone.
        assert_eq!(ci.config.filter_subjects, kind.subjects());
        assert!(
            ci.config
                .filter_subjects
                .contains(&format!("tars.replay.{}.>", kind.name))
        );
        assert_eq!(ci.config.durable_name.as_deref(), Some(kind.name));
    }
    let streams = ta.js.stream_names();
    use futures::StreamExt;
    let names: Vec<String> = streams.map(|s| s.unwrap()).collect().await;
    assert_eq!(names.len(), 3, "{names:?}"); // events, dlq, KV bucket
}

#[tokio::test]
async fn a_server_without_jetstream_gets_a_clear_error() {
    let server = NatsServer::start_without_jetstream().unwrap();
    let client = tars_jetstream::nats::connect(&server.url(), None, "t")
        .await
        .unwrap();
    // Waiting would not give the server JetStream: the declaration that retries through a
    // cluster's leader elections gives up on this at once.
    let started = std::time::Instant::now();
    let err = topology::declare(
        &client,
        &TopologyConfig::default(),
        std::time::Duration::from_secs(30),
    )
    .await
    .err()
    .expect("must fail without JetStream");
    assert!(err.to_string().contains("no JetStream"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{err}"
    );
}

#[tokio::test]
async fn the_same_msg_id_twice_is_stored_once() {
    let nats = Nats::start().await;
    let publisher = nats.publisher();
    let env = submitted(1);
    let s1 = publisher.publish_transition(&env).await.unwrap();
    let s2 = publisher.publish_transition(&env).await.unwrap();
    assert_eq!(s1, s2);
    assert_eq!(nats.stream_len(EVENTS_STREAM).await, 1);
    // A different id is a different message.
    publisher.publish(&env, "other").await.unwrap();
    assert_eq!(nats.stream_len(EVENTS_STREAM).await, 2);
}

#[tokio::test]
async fn a_three_node_cluster_takes_the_replicated_topology() {
    let cluster = tars_testkit::NatsCluster::start().unwrap();
    let client = tars_jetstream::nats::connect(&cluster.url(), None, "cluster")
        .await
        .unwrap();
    let cfg = TopologyConfig {
        replicas: 3,
        ..TopologyConfig::default()
    };
    // JetStream elects its meta leader a moment after the nodes start.
    let topo = crate::support::eventually(
        std::time::Duration::from_secs(60),
        "a replicated topology",
        || async { topology::ensure(&client, &cfg).await.ok() },
    )
    .await;
    let mut events = topo.js.get_stream(EVENTS_STREAM).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let publisher = tars_jetstream::publish::EventPublisher::new(
        topo.js.clone(),
        tars_observability::metrics::Metrics::new(),
    );
    publisher.publish_transition(&submitted(7)).await.unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 1);
}
