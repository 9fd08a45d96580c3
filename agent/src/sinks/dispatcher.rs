//! Moves events from the outbox to one sink, retrying with backoff until
//! the sink confirms. Woken by the engine when it commits new events.
//!
//! With the local store: read after the sink's cursor, deliver, then ask the
//! engine to record the new cursor. With a shared store: deliver only while
//! this agent holds the sink's lease, and mark each event delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Sink;
use crate::reconcile::EngineHandle;
use crate::store::{LocalOutbox, OutboxEvent, SharedOutbox, StoreResult};

const BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a sink lease lasts without renewal: how long events may wait
/// after their delivering agent dies.
const LEASE: Duration = Duration::from_secs(15);
/// How often the lease holder looks for events other agents decided.
const SHARED_POLL: Duration = Duration::from_secs(1);

/// Where a dispatcher finds its events.
pub enum Outbox {
    Local(Arc<dyn LocalOutbox>),
    Shared(Arc<dyn SharedOutbox>),
}

pub async fn run(
    sink: Box<dyn Sink>,
    outbox: Outbox,
    engine: EngineHandle,
    wake: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
) {
    match outbox {
        Outbox::Local(reader) => run_local(sink, reader, engine, wake, shutdown).await,
        Outbox::Shared(shared) => run_shared(sink, shared, wake, shutdown).await,
    }
}

async fn run_local(
    mut sink: Box<dyn Sink>,
    reader: Arc<dyn LocalOutbox>,
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

async fn run_shared(
    mut sink: Box<dyn Sink>,
    shared: Arc<dyn SharedOutbox>,
    mut wake: watch::Receiver<i64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name().to_owned();
    let mut held_until: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Renew at half-time; a lease about to run out is not used.
        let renew =
            held_until.is_none_or(|t| t.saturating_duration_since(Instant::now()) < LEASE / 2);
        if renew {
            let asked = Instant::now();
            let sink_name = name.clone();
            match read(&shared, move |o| o.hold_lease(&sink_name, LEASE)).await {
                Some(true) => {
                    if held_until.is_none() {
                        info!(sink = %name, "this agent now delivers to the sink");
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
        let events = match read(&shared, move |o| o.pending(&sink_name, BATCH)).await {
            Some(events) if !events.is_empty() => events,
            _ => {
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(SHARED_POLL) => {}
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
        // If this fails the batch is delivered again later: same event ids.
        read(&shared, move |o| o.delivered(&sink_name, &events)).await;
        debug!(sink = %name, delivered = wanted.len(), done = count, "events delivered");
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
