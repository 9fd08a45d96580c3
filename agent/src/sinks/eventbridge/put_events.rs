//! The EventBridge sink itself: PutEvents in batches within the service
//! limits, saying of each entry whether it failed retryably
//! ([`Retry::eventbridge`]); the dispatcher retries only those.

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;

use super::super::{DeliverFuture, Delivery, Retry, Sink, SinkError};
use crate::outbound::{OutboxEvent, SUCCESSFUL, TIMEOUT};

const MAX_ENTRIES: usize = 10;

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

    fn error(&self, retry: Retry, message: String) -> SinkError {
        SinkError::new(&self.name, retry, message)
    }

    /// One PutEvents request: what became of each of its entries.
    async fn put(&self, entries: Vec<PutEventsRequestEntry>) -> Delivery {
        let count = entries.len();
        let out = match self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let message = crate::logging::clean_external(
                    &aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string(),
                );
                let error = self.error(Retry::Later, format!("PutEvents: {message}"));
                return super::super::retry::all(count, Err(error));
            }
        };
        let mut results: Delivery = out
            .entries()
            .iter()
            .map(|entry| match entry.error_code() {
                None => Ok(()),
                Some(code) => {
                    let message = crate::logging::clean_external(&format!(
                        "PutEvents entry: {code}: {}",
                        entry.error_message().unwrap_or_default()
                    ));
                    Err(self.error(Retry::eventbridge(code), message))
                }
            })
            .collect();
        // An answer with fewer entries than asked says nothing of the rest.
        while results.len() < count {
            let message = "PutEvents answered for fewer entries than it was sent".into();
            results.push(Err(self.error(Retry::Later, message)));
        }
        results.truncate(count);
        results
    }
}

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
            let mut results = Delivery::with_capacity(events.len());
            // The entries of the request being built, and where their
            // results go in `results`.
            let mut batch: Vec<(usize, PutEventsRequestEntry)> = Vec::new();
            let mut bytes = 0;
            for event in events {
                results.push(Ok(()));
                let envelope: Value = match serde_json::from_str(&event.payload) {
                    Ok(v) => v,
                    Err(e) => {
                        let message = format!("event {} in the outbox is not JSON: {e}", event.id);
                        *results.last_mut().expect("pushed above") =
                            Err(self.error(Retry::Never, message));
                        continue;
                    }
                };
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
                    self.put_batch(std::mem::take(&mut batch), &mut results)
                        .await;
                    bytes = 0;
                }
                bytes += size;
                batch.push((results.len() - 1, entry));
            }
            if !batch.is_empty() {
                self.put_batch(batch, &mut results).await;
            }
            results
        })
    }
}

impl EventBridgeSink {
    async fn put_batch(&self, batch: Vec<(usize, PutEventsRequestEntry)>, results: &mut Delivery) {
        let (at, entries): (Vec<usize>, Vec<PutEventsRequestEntry>) = batch.into_iter().unzip();
        for (i, result) in at.into_iter().zip(self.put(entries).await) {
            results[i] = result;
        }
    }
}
