//! `[source] kind = "sqs"`: the gateway's notifications from an SQS queue
//! fed by an EventBridge rule.
//!
//! Long polling (20 s, batches of 10). A message is deleted only after its
//! notifications are committed, and every entry of a batch delete is checked.
//! While a batch waits for its commit, its visibility is extended. A message
//! that cannot be parsed is logged with its id and left alone: the queue's
//! redrive policy moves it to the dead-letter queue, and it never blocks the
//! rest. Several agents may share one queue.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use tracing::{debug, error, warn};

use crate::notification::parse_body;
use crate::reconcile::EngineHandle;
use crate::telemetry;

const WAIT_SECONDS: i32 = 20;
const BATCH: i32 = 10;

pub async fn run(
    client: Client,
    queue_url: String,
    visibility: Duration,
    engine: EngineHandle,
    shutdown: CancellationToken,
) {
    let visibility_secs = visibility.as_secs().clamp(1, 43_200) as i32;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let receive = client
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(WAIT_SECONDS)
            .visibility_timeout(visibility_secs)
            .send();
        let received = tokio::select! {
            r = receive => r,
            _ = shutdown.cancelled() => return,
        };
        let messages = match received {
            Ok(out) => {
                backoff.reset();
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                warn!(queue = %queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), attempt = backoff.attempts() + 1, "cannot receive from SQS");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        metrics::counter!(telemetry::SQS_RECEIVED).increment(messages.len() as u64);
        handle_batch(&client, &queue_url, visibility_secs, &engine, messages).await;
    }
}

async fn handle_batch(
    client: &Client,
    queue_url: &str,
    visibility_secs: i32,
    engine: &EngineHandle,
    messages: Vec<Message>,
) {
    let mut notifications = Vec::new();
    let mut done: Vec<&Message> = Vec::new();
    for m in &messages {
        let id = m.message_id().unwrap_or("?");
        match parse_body(m.body().unwrap_or_default().as_bytes()) {
            Ok(n) => {
                notifications.extend(n);
                done.push(m);
            }
            // Left in the queue: the redrive policy takes it after its receives.
            Err(e) => {
                warn!(message_id = id, error = %e, "SQS message is not an upload notification; leaving it to the redrive policy")
            }
        }
    }
    if done.is_empty() {
        return;
    }
    // Commit, extending the messages' visibility while the engine is busy.
    let commit = engine.ingest(notifications);
    tokio::pin!(commit);
    let every = Duration::from_secs((visibility_secs as u64 / 2).max(1));
    let result = loop {
        tokio::select! {
            r = &mut commit => break r,
            _ = tokio::time::sleep(every) => extend_visibility(client, queue_url, visibility_secs, &done).await,
        }
    };
    if let Err(e) = result {
        error!(error = %e, "could not record SQS notifications; they will be received again");
        return;
    }
    delete(client, queue_url, &done).await;
}

async fn extend_visibility(
    client: &Client,
    queue_url: &str,
    visibility_secs: i32,
    messages: &[&Message],
) {
    let entries: Vec<_> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle().map(str::to_owned))
                .visibility_timeout(visibility_secs)
                .build()
                .ok()
        })
        .collect();
    match client
        .change_message_visibility_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) if !out.failed().is_empty() => {
            metrics::counter!(telemetry::SQS_EXTENDED).increment(out.successful().len() as u64);
            warn!(
                failed = out.failed().len(),
                "could not extend the visibility of some messages"
            )
        }
        Ok(out) => {
            metrics::counter!(telemetry::SQS_EXTENDED).increment(out.successful().len() as u64);
            debug!(
                messages = messages.len(),
                "visibility extended for a slow batch"
            )
        }
        Err(e) => {
            warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not extend message visibility")
        }
    }
}

async fn delete(client: &Client, queue_url: &str, messages: &[&Message]) {
    let entries: Vec<_> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle().map(str::to_owned))
                .build()
                .ok()
        })
        .collect();
    match client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            metrics::counter!(telemetry::SQS_DELETED).increment(out.successful().len() as u64);
            for failed in out.failed() {
                // Recorded already; it will be received again and deduplicated.
                warn!(
                    entry = failed.id(),
                    code = failed.code(),
                    message = failed.message().unwrap_or(""),
                    "SQS delete failed for a recorded message"
                );
            }
        }
        Err(e) => {
            warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "SQS batch delete failed; the recorded messages will be received again")
        }
    }
}
