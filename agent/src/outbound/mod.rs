//! The outbound contract: the events the agent publishes, in the
//! reference's shape. Its inbound twin is [`crate::notification`].
//!
//! - `envelope.rs`: the detail-types, the stable event ids and the JSON
//!   envelope of each event.
//! - [`Outbox`]: where events wait until each sink has them (the store
//!   implements it; the sink dispatchers read it).

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

/// An outbox failure, as the backend words it (the dispatcher logs it and
/// tries again).
pub type OutboxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Where the sink dispatchers find events. One dispatcher loop serves
/// every store backend: hold the sink, read what it lacks, deliver, record.
pub trait Outbox: Send + Sync {
    /// Takes or renews the right to deliver to `sink` for `ttl`; false
    /// while another agent has it. An outbox only this agent uses always
    /// grants it.
    fn hold(&self, sink: &str, ttl: std::time::Duration) -> OutboxResult<bool>;
    /// Up to `limit` events `sink` does not have yet, oldest first.
    fn pending(&self, sink: &str, limit: usize) -> OutboxResult<Vec<OutboxEvent>>;
    /// Records that `sink` has these events (each one returned by
    /// [`Outbox::pending`], delivered or not wanted by the sink).
    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> OutboxResult<()>;
}
