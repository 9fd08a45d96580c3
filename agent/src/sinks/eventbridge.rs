//! `[[sink]] kind = "eventbridge"`: PutEvents to a bus (the reference's
//! custom bus, where downstream teams hang their rules).
//!
//! Batches stay within the service limits: 10 entries, and a request size cap
//! (`max_request_bytes`, 256 KB by default; the service now takes 1 MB).
//! Entries reported in `FailedEntryCount` are retried with backoff when their
//! error is retryable (throttling, internal failure) and reported loudly when
//! not. Only the entries that failed are sent again.

use std::time::Duration;

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;
use tracing::{error, warn};

use serde::Deserialize;

use super::{DeliverFuture, Sink, SinkError, SinkSettings};
use crate::backoff::Backoff;
use crate::outbound::{OutboxEvent, SUCCESSFUL, TIMEOUT};

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
    fn open(
        &self,
        name: String,
        aws: Option<&aws_config::SdkConfig>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        let aws = aws.ok_or_else(|| SinkError {
            sink: name.clone(),
            message: "AWS configuration not loaded".into(),
        })?;
        Ok(Box::new(EventBridgeSink::new(
            name,
            Client::new(aws),
            self.event_bus.clone(),
            self.max_request_bytes,
            self.publish_upload_events,
        )))
    }
}

const MAX_ENTRIES: usize = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct EventBridgeSink {
    name: String,
    client: Client,
    bus: String,
    max_request_bytes: usize,
    upload_events: bool,
}

impl EventBridgeSink {
    pub fn new(
        name: String,
        client: Client,
        bus: String,
        max_request_bytes: usize,
        upload_events: bool,
    ) -> Self {
        EventBridgeSink {
            name,
            client,
            bus,
            max_request_bytes,
            upload_events,
        }
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
        }
    }

    /// Sends one batch, retrying only the entries that failed retryably.
    async fn put(
        &self,
        mut entries: Vec<(String, PutEventsRequestEntry)>,
    ) -> Result<(), SinkError> {
        // Only failed entries are sent again (the SDK retries whole failed
        // requests itself). No limit: the dispatcher drops this on shutdown.
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        loop {
            let request: Vec<PutEventsRequestEntry> =
                entries.iter().map(|(_, e)| e.clone()).collect();
            let out = self
                .client
                .put_events()
                .set_entries(Some(request))
                .send()
                .await
                .map_err(|e| {
                    self.error(format!(
                        "PutEvents: {}",
                        aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                    ))
                })?;
            if out.failed_entry_count() == 0 {
                return Ok(());
            }
            let mut retry = Vec::new();
            for ((id, entry), result) in entries.into_iter().zip(out.entries()) {
                let Some(code) = result.error_code() else {
                    continue;
                };
                let message = result.error_message().unwrap_or_default();
                if retryable(code) {
                    warn!(sink = %self.name, event_id = %id, code, message, "PutEvents entry failed; retrying it");
                    retry.push((id, entry));
                } else {
                    error!(
                        sink = %self.name, event_id = %id, code, message,
                        "EVENT NOT DELIVERED: EventBridge refused it permanently; its payload is in the outbox"
                    );
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            entries = retry;
            if let Some(delay) = backoff.next_delay() {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn retryable(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "InternalFailure" | "InternalException" | "ServiceUnavailable"
    )
}

/// An entry's size as EventBridge counts it toward the request limit.
fn entry_size(e: &PutEventsRequestEntry) -> usize {
    14 + e.source().map_or(0, str::len)
        + e.detail_type().map_or(0, str::len)
        + e.detail().map_or(0, str::len)
        + e.resources().iter().map(String::len).sum::<usize>()
}

impl Sink for EventBridgeSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, detail_type: &str) -> bool {
        self.upload_events || detail_type == SUCCESSFUL || detail_type == TIMEOUT
    }

    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut batch: Vec<(String, PutEventsRequestEntry)> = Vec::new();
            let mut bytes = 0;
            for event in events {
                let envelope: Value = serde_json::from_str(&event.payload).map_err(|e| {
                    self.error(format!("event {} in the outbox is not JSON: {e}", event.id))
                })?;
                let entry = PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(envelope["source"].as_str().unwrap_or_default())
                    .detail_type(&event.detail_type)
                    .detail(envelope["detail"].to_string())
                    .build();
                let size = entry_size(&entry);
                if !batch.is_empty()
                    && (batch.len() == MAX_ENTRIES || bytes + size > self.max_request_bytes)
                {
                    self.put(std::mem::take(&mut batch)).await?;
                    bytes = 0;
                }
                bytes += size;
                batch.push((event.id.clone(), entry));
            }
            if !batch.is_empty() {
                self.put(batch).await?;
            }
            Ok(())
        })
    }
}
