//! `[[sink]] kind = "eventbridge"`: PutEvents to a bus (the reference's
//! custom bus, where downstream teams hang their rules).
//!
//! Batches stay within the service limits: 10 entries, and a request size cap
//! (`max_request_bytes`, 256 KB by default; the service now takes 1 MB).
//! Entries reported in `FailedEntryCount` are retried with backoff when their
//! error is retryable (throttling, internal failure) and reported loudly when
//! not. Only the entries that failed are sent again.

use serde::Deserialize;

use super::{AwsConfig, Retry, Sink, SinkError, SinkSettings};

#[cfg(feature = "aws")]
mod put_events;

/// `[[sink]] kind = "eventbridge"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBridgeSettings {
    pub event_bus: String,
    /// Largest PutEvents request, in bytes (the service takes up to 1 MB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Also send `Data File Upload Event` / `Manifest File Upload Event`
    /// for every upload, as the reference did.
    #[serde(default)]
    pub publish_upload_events: bool,
    #[serde(default)]
    pub name: Option<String>,
}

fn default_max_request_bytes() -> usize {
    256 * 1024
}

impl SinkSettings for EventBridgeSettings {
    fn configured_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn default_name(&self) -> String {
        format!("eventbridge:{}", self.event_bus)
    }
    fn validate(&self) -> Result<(), String> {
        if self.event_bus.trim().is_empty() {
            return Err("[[sink]] kind = \"eventbridge\" needs an event_bus".into());
        }
        if !(1024..=1024 * 1024).contains(&self.max_request_bytes) {
            return Err(format!(
                "[[sink]] max_request_bytes = {}: must be between 1024 and 1048576",
                self.max_request_bytes
            ));
        }
        Ok(())
    }
    fn describe(&self) -> String {
        let uploads = if self.publish_upload_events {
            ", with upload events"
        } else {
            ""
        };
        format!("EventBridge bus {}{uploads}", self.event_bus)
    }
    fn needs_aws(&self) -> bool {
        true
    }
    fn wants_upload_events(&self) -> bool {
        self.publish_upload_events
    }
    fn open(&self, name: String, aws: Option<&AwsConfig>) -> Result<Box<dyn Sink>, SinkError> {
        let Some(aws) = aws else {
            return Err(SinkError::new(
                &name,
                Retry::Never,
                "AWS configuration not loaded",
            ));
        };
        open_sink(self, name, aws)
    }
}

#[cfg(feature = "aws")]
fn open_sink(
    settings: &EventBridgeSettings,
    name: String,
    aws: &AwsConfig,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(put_events::EventBridgeSink::new(
        name,
        aws_sdk_eventbridge::Client::new(aws),
        settings.event_bus.clone(),
        settings.max_request_bytes,
        settings.publish_upload_events,
    )))
}

/// Without the `aws` feature there is no AWS configuration to open with.
#[cfg(not(feature = "aws"))]
fn open_sink(
    _: &EventBridgeSettings,
    _: String,
    aws: &AwsConfig,
) -> Result<Box<dyn Sink>, SinkError> {
    match *aws {}
}
