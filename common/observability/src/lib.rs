//! What every TARS process needs to be run and watched, and nothing about its work:
//! metrics, probes, logging, traces, shutdown and configuration helpers.
//!
//! | module | why it exists |
//! |---|---|
//! | [`metrics`] | one Prometheus registry per process with every `tars_*` family |
//! | [`health`] | `/metrics`, `/livez`, `/readyz` (readiness supplied by the service) |
//! | [`telemetry`] | JSON or text logs naming the trace id, and OTLP span export when asked for, installed once |
//! | [`trace`] | the W3C `traceparent` of the work in hand, carried through NATS headers and to third parties |
//! | [`otel`] | OpenTelemetry spans that join that trace, each naming its service |
//! | [`shutdown`] | one cancellation token fired by SIGTERM or SIGINT |
//! | [`config`] | errors that name their variable, `_FILE` secrets, all problems reported at once |

pub mod config;
pub mod health;
pub mod metrics;
pub mod otel;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
