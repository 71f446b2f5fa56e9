//! Per-test setup: a nats-server, a connection and the declared topology.

use std::time::Duration;

use tars_domain::events::{Envelope, Event};
use tars_domain::{RequestId, TenantName, Username};
use tars_jetstream::publish::EventPublisher;
use tars_jetstream::topology::{self, Topology, TopologyConfig};
use tars_observability::metrics::Metrics;
use tars_testkit::NatsServer;

pub use tars_tests::eventually;

/// A running server with TARS's topology on it.
pub struct Nats {
    pub server: NatsServer,
    pub topology: Topology,
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with(TopologyConfig::default()).await
    }

    pub async fn start_with(cfg: TopologyConfig) -> Self {
        let server = NatsServer::start().expect("start nats-server");
        let client = tars_jetstream::nats::connect(&server.url(), None, "test")
            .await
            .unwrap();
        let topology = topology::ensure(&client, &cfg).await.unwrap();
        Self { server, topology }
    }

    pub fn publisher(&self) -> EventPublisher {
        EventPublisher::new(self.topology.js.clone(), Metrics::new())
    }

    /// Messages stored in a stream now.
    pub async fn stream_len(&self, name: &str) -> u64 {
        let mut s = self.topology.js.get_stream(name).await.unwrap();
        s.info().await.unwrap().state.messages
    }
}

/// A submitted event for a new request with a distinct requester and tenant.
pub fn submitted(n: usize) -> Envelope {
    let requester = Username::parse(&format!("user{n}")).unwrap();
    let tenant = TenantName::parse(&format!("tenant{n}")).unwrap();
    Envelope::new(
        RequestId::new(),
        requester.to_string(),
        Event::RequestSubmitted {
            requester,
            tenant_name: tenant,
            permission: Default::default(),
        },
    )
}

pub const LONG: Duration = Duration::from_secs(30);
