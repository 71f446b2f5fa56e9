//! Many KV keys written as one atomic batch publish (ADR-50, nats-server 2.12+,
//! `allow_atomic` on the bucket's stream), for seeding tests and benchmarks with history
//! fast: one disk sync per batch of up to 999 keys on a server that syncs every write.
//!
//! Not used by the services: on an R1 stream the server stages a batch on disk before it
//! commits, so a small batch costs about 2.5 ms where a plain publish costs 0.2 ms, and
//! TARS's submit path ran at a tenth of its rate with one (measured with `tars-bench`).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};

/// Puts every `(key, value)` under `prefix` (`$KV.<bucket>.`) as one atomic batch.
pub async fn put_all(
    js: &jetstream::Context,
    prefix: &str,
    writes: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let Some(last) = writes.len().checked_sub(1) else {
        return Ok(());
    };
    let client = js.client();
    let id = uuid::Uuid::new_v4().simple().to_string();
    for (i, (key, value)) in writes.iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        let subject = format!("{prefix}{key}");
        let payload = value.clone().into();
        if i == last {
            h.insert("Nats-Batch-Commit", "1");
            js.send_publish(subject, PublishMessage::build().headers(h).payload(payload))
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
        } else {
            client
                .publish_with_headers(subject, h, payload)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
