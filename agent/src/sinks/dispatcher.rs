//! Moves events from the outbox to one sink, retrying with backoff until
//! the sink confirms. One loop for every store: hold the sink (always
//! granted by an outbox only this agent uses; a lease when agents share
//! one), read what the sink lacks, deliver, record. Woken by the engine when
//! it commits new events, and polling besides for events other agents
//! decided.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Sink;
use crate::backoff::Backoff;
use crate::notification::time::now_ms;
use crate::outbound::{Outbox, OutboxEvent, OutboxResult};
use crate::telemetry;

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
    cancel: CancellationToken,
) {
    let name = sink.name().to_owned();
    // Registered once: the loop pays no metric lookup.
    let lag_gauge = metrics::gauge!(telemetry::SINK_LAG, "sink" => name.clone());
    let delivered = metrics::counter!(telemetry::SINK_DELIVERED, "sink" => name.clone());
    let failures = metrics::counter!(telemetry::SINK_FAILURES, "sink" => name.clone());
    let mut held_until: Option<Instant> = None;
    loop {
        if cancel.is_cancelled() {
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
                        _ = cancel.cancelled() => {}
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
                lag_gauge.set(0.0);
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
        };
        // How long the oldest event this sink lacks has waited.
        let oldest = events.iter().map(|e| e.created_ms).min().unwrap_or(0);
        let lag = (now_ms() - oldest).max(0) as f64 / 1e3;
        lag_gauge.set(lag);
        let wanted: Vec<OutboxEvent> = events
            .iter()
            .filter(|e| sink.wants(&e.detail_type))
            .cloned()
            .collect();
        if !wanted.is_empty() && !deliver(sink.as_mut(), &wanted, &failures, &cancel).await {
            return;
        }
        delivered.increment(wanted.len() as u64);
        let sink_name = name.clone();
        let count = events.len();
        // Every event read is done, delivered or not wanted. If recording
        // fails, the batch is delivered again later: same event ids.
        read(&outbox, move |o| o.delivered(&sink_name, &events)).await;
        debug!(sink = %name, delivered = wanted.len(), done = count, "events delivered");
    }
}

/// Retries until delivered (true) or shutting down (false). A delivery
/// in flight is dropped on shutdown: its events stay in the outbox.
async fn deliver(
    sink: &mut dyn Sink,
    events: &[OutboxEvent],
    failures: &metrics::Counter,
    cancel: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        let result = tokio::select! {
            r = sink.deliver(events) => r,
            _ = cancel.cancelled() => return false,
        };
        match result {
            Ok(()) => return true,
            Err(e) => {
                failures.increment(1);
                warn!(error = %e, attempt = backoff.attempts() + 1, "delivery failed; will retry");
                if !backoff.wait(cancel).await {
                    return false;
                }
            }
        }
    }
}

async fn read<O: ?Sized + Send + Sync + 'static, T: Send + 'static>(
    reader: &Arc<O>,
    f: impl FnOnce(&O) -> OutboxResult<T> + Send + 'static,
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
