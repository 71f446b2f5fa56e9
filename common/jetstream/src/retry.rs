//! Riding out a NATS reconnect or a JetStream leader election: a call that failed for want
//! of a server is tried again for a few seconds before its caller hears about it.
//!
//! Every call retried here is safe to repeat: KV writes are compare-and-set (a repeat of
//! a write that went through loses the race to itself, and the caller re-reads), creates
//! are create-only, and publishes carry a `Nats-Msg-Id`.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// How long a call keeps trying before its error reaches the caller: a leader election
/// on a healthy cluster takes a few seconds, and the client may have to reconnect to
/// another node first; the ingress's `REQUEST_TIMEOUT` (15 s) still bounds a whole call.
pub const RIDE_OUT: Duration = Duration::from_secs(10);

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(RIDE_OUT))
        .with_max_times(usize::MAX)
        .with_jitter()
}

/// Runs `call` until it succeeds, fails with an error `transient` calls permanent, or
/// [`RIDE_OUT`] has passed.
pub async fn ride_out<T, E, Fut>(
    what: &str,
    call: impl FnMut() -> Fut,
    transient: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    call.retry(backoff())
        .when(transient)
        .notify(|e, wait| tracing::debug!(error = %e, ?wait, "{what} failed; trying again"))
        .await
}
