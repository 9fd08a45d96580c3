//! Delivering reconcile events. Events wait in the store's outbox; one
//! [`dispatcher`] per sink delivers them in order and moves that sink's cursor
//! only after the sink confirmed. Delivery is at-least-once with a stable
//! event id; the file sink also drops repeats it already wrote.

pub mod dispatcher;
pub mod envelope;
pub mod file;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;

use crate::config::SinkConfig;
use crate::store::OutboxEvent;

#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    pub message: String,
}

pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

pub trait Sink: Send {
    fn name(&self) -> &str;
    /// Delivers events in order; `Ok` means all of them are safely out.
    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a>;
}

/// Opens the sink a config entry describes.
pub fn open(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let name = config.name();
    Ok(match config {
        SinkConfig::File { path, .. } => Box::new(file::FileSink::open(name, path)?),
        SinkConfig::Stdout { .. } => Box::new(stdout::StdoutSink::new(name)),
    })
}
