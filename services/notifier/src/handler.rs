//! What the notifier does with one event.

use tars_common::service::Connected;
use tars_common::worker::{Delivery, Handler, Outcome};

/// The notifier's handler.
pub struct Worker {}

impl Worker {
    /// Builds the handler from a connected process.
    pub fn new(_conn: &Connected) -> Self {
        Self {}
    }
}

impl Handler for Worker {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        tracing::debug!(kind = delivery.envelope.event.kind(), "received");
        Outcome::Ack
    }
}
