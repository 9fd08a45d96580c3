//! The EventBridge sink itself: PutEvents in batches within the service
//! limits, retrying only the entries that failed retryably.

use std::time::Duration;

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;
use tracing::{error, warn};

use super::super::{DeliverFuture, Sink, SinkError};
use crate::backoff::Backoff;
use crate::outbound::{OutboxEvent, SUCCESSFUL, TIMEOUT};

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
                        crate::logging::clean_external(
                            &aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string()
                        )
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
