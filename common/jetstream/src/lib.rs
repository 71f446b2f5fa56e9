//! TARS on NATS JetStream: the connection, the topology, request records changed by
//! compare-and-set, the one publish path, and the runtime every worker runs on.
//!
//! | module | why it exists |
//! |---|---|
//! | [`nats`] | connecting the same way everywhere (reconnects forever, cluster URL lists) |
//! | [`topology`] | streams, bucket and consumers, declared idempotently by every service |
//! | [`store`] | request records and open-request indexes, changed only by KV compare-and-set; steps the state machine |
//! | [`publish`] | events to `TARS_EVENTS`, acked, with `Nats-Msg-Id` |
//! | [`retry`] | riding out a reconnect or leader election for a few seconds |
//! | [`relay`] | publishes the events in record outboxes, tailing the bucket's stream |
//! | [`worker`] | pull, handle, ack / retry / dead-letter: one function owns a message's fate |
//! | [`service`] | a worker process's start-up and shutdown sequence |
//! | [`config`] | the settings every process and every worker shares |

pub mod config;
pub mod nats;
pub mod publish;
pub mod relay;
pub mod retry;
pub mod service;
pub mod store;
pub mod topology;
pub mod worker;
