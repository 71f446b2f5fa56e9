//! TARS on NATS JetStream: the connection, the topology, request records changed by
//! compare-and-set, the one publish path, and the runtime every worker runs on.
//!
//! | module | why it exists |
//! |---|---|
//! | [`nats`] | connecting the same way everywhere (reconnects forever, cluster URL lists) |
//! | [`topology`] | streams, bucket and consumers, declared idempotently by every service |
//! | [`store`] | request records and the index keys that find them, changed only by compare-and-set; steps the state machine |
//! | [`direct`] | batched direct reads by subject: index listings and one request's events |
//! | [`audit`] | one request's events from `TARS_EVENTS`, read subject by subject |
//! | [`publish`] | events to `TARS_EVENTS`, acked, with `Nats-Msg-Id` |
//! | [`retry`] | riding out a reconnect or leader election for a few seconds |
//! | [`relay`] | publishes the events in record outboxes, tailing the bucket's stream |
//! | [`wait`] | waiting out a dependency's outage: one probe per gate, no delivery spent |
//! | [`worker`] | pull, handle, ack / retry / dead-letter: one function owns a message's fate |
//! | [`service`] | a worker process's start-up and shutdown sequence |
//! | [`config`] | the settings every process and every worker shares |

pub mod audit;
pub mod config;
pub mod direct;
pub mod nats;
pub mod publish;
pub mod relay;
pub mod retry;
pub mod service;
pub mod store;
pub mod topology;
pub mod wait;
pub mod worker;
