//! The outbound contract: the events the agent publishes, in the
//! reference's shape. Its inbound twin is [`crate::notification`].
//!
//! - `envelope.rs`: the detail-types, the stable event ids and the JSON
//!   envelope of each event.

pub mod envelope;

pub use envelope::{
    DATA_UPLOAD, MANIFEST_UPLOAD, Origin, SUCCESSFUL, TIMEOUT, is_decision, reconcile_event,
    upload_event,
};

/// The manifest's own upload notification: the detail of the reconcile events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRef {
    pub key: String,
    pub bucket: String,
    pub size: u64,
    pub event_time: i64,
}

/// An event waiting in (or delivered from) the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Assigned by the store; sinks deliver in this order.
    pub seq: i64,
    /// The envelope's `id`: stable, so consumers can drop re-deliveries.
    pub id: String,
    pub set_id: String,
    pub detail_type: String,
    /// The whole envelope as JSON, exactly as delivered.
    pub payload: String,
    pub created_ms: i64,
}
