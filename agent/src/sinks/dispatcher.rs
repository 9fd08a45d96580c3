//! Moves events from the outbox to one sink: read after the sink's cursor,
//! deliver, retry with backoff until the sink confirms, then ask the engine
//! to record the new cursor. Woken by the engine when it commits new events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::Sink;
use crate::reconcile::EngineHandle;
use crate::store::{OutboxEvent, StoreReader};

const BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub async fn run(
    mut sink: Box<dyn Sink>,
    reader: Arc<dyn StoreReader>,
    engine: EngineHandle,
    mut outbox: watch::Receiver<i64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name().to_owned();
    // Never guess the cursor: a wrong 0 would re-deliver everything.
    let mut cursor = loop {
        let name = name.clone();
        if let Some(c) = read(&reader, move |r| r.cursor(&name)).await {
            break c;
        }
        if *shutdown.borrow() {
            return;
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let events = read(&reader, move |r| r.events_after(cursor, BATCH)).await;
        let events = match events {
            Some(events) if !events.is_empty() => events,
            _ => {
                tokio::select! {
                    _ = outbox.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
        };
        // The cursor moves past every event read, delivered or not wanted.
        let last = events.last().map_or(cursor, |e| e.seq);
        let mut events = events;
        events.retain(|e| sink.wants(&e.detail_type));
        if !events.is_empty() && !deliver(sink.as_mut(), &events, &mut shutdown).await {
            return;
        }
        cursor = last;
        debug!(sink = %name, cursor, delivered = events.len(), "events delivered");
        if engine.ack(&name, cursor).await.is_err() {
            return;
        }
    }
}

/// Retries until delivered (true) or shutting down (false).
async fn deliver(
    sink: &mut dyn Sink,
    events: &[OutboxEvent],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.deliver(events).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return false,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn read<T: Send + 'static>(
    reader: &Arc<dyn StoreReader>,
    f: impl FnOnce(&dyn StoreReader) -> crate::store::StoreResult<T> + Send + 'static,
) -> Option<T> {
    let reader = reader.clone();
    match tokio::task::spawn_blocking(move || f(reader.as_ref())).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read the outbox; will retry");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
        Err(_) => None,
    }
}
