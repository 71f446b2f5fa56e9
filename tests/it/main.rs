//! Integration tests of TARS against a real nats-server (one test binary, a module per area).
#![allow(clippy::unwrap_used, missing_docs)]

mod architecture;
mod audit;
mod deploy;
mod growth;
mod ingress;
mod lifecycle;
mod notices;
mod outages;
mod pipeline;
mod policy;
mod runtime;
mod stack;
mod support;
mod topology;
mod upgrades;
mod writes;
