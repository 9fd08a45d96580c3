//! Delivering reconcile events. Events wait in the store's outbox; one
//! [`dispatcher`] per sink delivers them in order and moves that sink's cursor
//! only after the sink confirmed. Delivery is at-least-once with a stable
//! event id; the file sink also drops repeats it already wrote.

pub mod dispatcher;
pub mod eventbridge;
pub mod file;
pub mod stdout;
pub mod webhook;

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
    /// Which outbox events this sink delivers (by default the reconcile
    /// events; the others are skipped, and its cursor moves past them).
    fn wants(&self, detail_type: &str) -> bool {
        crate::outbound::is_decision(detail_type)
    }
    /// Delivers events in order; `Ok` means all of them are safely out.
    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a>;
}

/// Opens the sink a config entry describes; `aws` is the AWS client
/// configuration, loaded when some part of the config needs it.
pub fn open(
    config: &SinkConfig,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<Box<dyn Sink>, SinkError> {
    let name = config.name();
    Ok(match config {
        SinkConfig::File { path, .. } => Box::new(file::FileSink::open(name, path)?),
        SinkConfig::Stdout { .. } => Box::new(stdout::StdoutSink::new(name)),
        SinkConfig::Eventbridge {
            event_bus,
            max_request_bytes,
            publish_upload_events,
            ..
        } => {
            let aws = aws.ok_or_else(|| SinkError {
                sink: name.clone(),
                message: "AWS configuration not loaded".into(),
            })?;
            Box::new(eventbridge::EventBridgeSink::new(
                name,
                aws_sdk_eventbridge::Client::new(aws),
                event_bus.clone(),
                *max_request_bytes,
                *publish_upload_events,
            ))
        }
        SinkConfig::Webhook {
            url, bearer_token, ..
        } => Box::new(webhook::WebhookSink::new(
            name,
            url.clone(),
            bearer_token.clone(),
        )?),
    })
}
