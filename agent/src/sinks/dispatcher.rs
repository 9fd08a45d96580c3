//! Moves events from the outbox to one sink, retrying with backoff until
//! the sink confirms. One loop for every store: hold the sink (always
//! granted by an outbox only this agent uses; a lease when agents share
//! one), read what the sink lacks, deliver, record. Woken by the engine when
//! it commits new events, and polling besides for events other agents
//! decided.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Sink;
use crate::store::{Outbox, OutboxEvent, StoreResult};

const BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a hold on a sink lasts without renewal: how long events may
/// wait after their delivering agent dies.
const LEASE: Duration = Duration::from_secs(15);
/// How often to look for events nobody woke this dispatcher for.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(
    mut sink: Box<dyn Sink>,
    outbox: Arc<dyn Outbox>,
    mut wake: watch::Receiver<i64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name().to_owned();
    let mut held_until: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Renew at half-time; a hold about to run out is not used.
        let renew =
            held_until.is_none_or(|t| t.saturating_duration_since(Instant::now()) < LEASE / 2);
        if renew {
            let asked = Instant::now();
            let sink_name = name.clone();
            match read(&outbox, move |o| o.hold(&sink_name, LEASE)).await {
                Some(true) => {
                    if held_until.is_none() {
                        debug!(sink = %name, "this agent delivers to the sink");
                    }
                    held_until = Some(asked + LEASE);
                }
                Some(false) => {
                    if held_until.take().is_some() {
                        info!(sink = %name, "another agent delivers to the sink now");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE / 3) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                None => {
                    held_until = None;
                    continue;
                }
            }
        }
        let sink_name = name.clone();
        let events = match read(&outbox, move |o| o.pending(&sink_name, BATCH)).await {
            Some(events) if !events.is_empty() => events,
            _ => {
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
        };
        let wanted: Vec<OutboxEvent> = events
            .iter()
            .filter(|e| sink.wants(&e.detail_type))
            .cloned()
            .collect();
        if !wanted.is_empty() && !deliver(sink.as_mut(), &wanted, &mut shutdown).await {
            return;
        }
        let sink_name = name.clone();
        let count = events.len();
        // Every event read is done, delivered or not wanted. If recording
        // fails, the batch is delivered again later: same event ids.
        read(&outbox, move |o| o.delivered(&sink_name, &events)).await;
        debug!(sink = %name, delivered = wanted.len(), done = count, "events delivered");
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

async fn read<O: ?Sized + Send + Sync + 'static, T: Send + 'static>(
    reader: &Arc<O>,
    f: impl FnOnce(&O) -> StoreResult<T> + Send + 'static,
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
