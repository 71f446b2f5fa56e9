//! Test support shared by the integration tests and `tars-dev`: a real nats-server
//! harness and stand-ins for the third-party HTTP services TARS talks to.

pub mod nats_server;
pub mod netns;
pub mod standin;

pub use nats_server::{NatsCluster, NatsServer};
