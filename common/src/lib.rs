//! Everything the four TARS services share.
//!
//! | module | why it exists |
//! |---|---|
//! | [`domain`] | newtypes that parse outside input once; the request record and its states |
//! | [`events`] | the versioned event envelope and the one publish path (`Nats-Msg-Id`, acked) |
//! | [`topology`] | streams, bucket and consumers, declared idempotently by every service |
//! | [`store`] | request records changed only by KV compare-and-set |
//! | [`worker`] | the runtime every worker runs on: pull, handle, ack / retry / dead-letter |
//! | [`governance`] | the governance API client (add a group member) |
//! | [`nats`] | connecting with reconnects forever |
//! | [`service`] | the start-up and shutdown sequence of a worker process |
//! | [`auth`] | KBase token checks with a cache by token hash |
//! | [`config`] | environment settings shared by the services |
//! | [`metrics`], [`health`] | one Prometheus registry per process; `/metrics`, `/livez`, `/readyz` |
//! | [`shutdown`], [`telemetry`] | SIGTERM handling and logging |

pub mod auth;
pub mod config;
pub mod domain;
pub mod events;
pub mod governance;
pub mod health;
pub mod metrics;
pub mod nats;
pub mod service;
pub mod shutdown;
pub mod slack;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod worker;
