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
use tracing::{debug, error, info, warn};

use super::retry::FailureSummary;
use super::{Delivery, Retry, Sink, SinkError};
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
    sink: Box<dyn Sink>,
    outbox: Arc<dyn Outbox>,
    wake: watch::Receiver<i64>,
    cancel: CancellationToken,
) {
    run_with_lease(sink, outbox, wake, cancel, LEASE).await
}

async fn run_with_lease(
    mut sink: Box<dyn Sink>,
    outbox: Arc<dyn Outbox>,
    mut wake: watch::Receiver<i64>,
    cancel: CancellationToken,
    lease: Duration,
) {
    let name = sink.name().to_owned();
    // Registered once: the loop pays no metric lookup.
    let lag_gauge = metrics::gauge!(telemetry::SINK_LAG, "sink" => name.clone());
    let delivered = metrics::counter!(telemetry::SINK_DELIVERED, "sink" => name.clone());
    let failures = metrics::counter!(telemetry::SINK_FAILURES, "sink" => name.clone());
    let refused = metrics::counter!(telemetry::SINK_REFUSED, "sink" => name.clone());
    let mut hold = Hold {
        outbox: outbox.clone(),
        sink: name.clone(),
        lease,
        until: None,
    };
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // Renew at half-time.
        match hold.keep(lease / 2).await {
            Some(true) => {}
            Some(false) => {
                tokio::select! {
                    _ = tokio::time::sleep(lease / 3) => {}
                    _ = cancel.cancelled() => {}
                }
                continue;
            }
            None => continue,
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
        let mut todo = wanted;
        let count_wanted = todo.len();
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        while !todo.is_empty() {
            let results = match attempt(sink.as_mut(), &todo, &mut hold, &cancel).await {
                Attempt::Delivered(results) => results,
                // Another agent may hold the sink now; it delivers these.
                Attempt::HoldLost => break,
                Attempt::Cancelled => return,
            };
            let (again, failed) = judge(&name, todo, results, &delivered, &refused);
            todo = again;
            if !failed.is_empty() {
                failures.increment(1);
                warn!(sink = %name, error = %failed, events = todo.len(), attempt = backoff.attempts() + 1, "delivery failed; will retry");
                if !backoff.wait(&cancel).await {
                    return;
                }
            }
        }
        if !todo.is_empty() {
            continue;
        }
        let sink_name = name.clone();
        let count = events.len();
        // Every event read is done, delivered or not wanted. If recording
        // fails, the batch is delivered again later: same event ids.
        read(&outbox, move |o| o.delivered(&sink_name, &events)).await;
        debug!(sink = %name, wanted = count_wanted, done = count, "events delivered");
    }
}

/// This agent's right to deliver to a sink (a lease in a shared outbox;
/// always granted by an outbox only this agent uses).
struct Hold {
    outbox: Arc<dyn Outbox>,
    sink: String,
    lease: Duration,
    until: Option<Instant>,
}

impl Hold {
    /// Whether this agent holds the sink for at least `needed` more,
    /// renewing the lease when less is left; None if the outbox failed.
    async fn keep(&mut self, needed: Duration) -> Option<bool> {
        if self.left() >= needed {
            return Some(true);
        }
        // A renewal that itself took most of the lease is no hold.
        self.renew().await.map(|held| held && self.left() >= needed)
    }

    /// Takes or renews the lease; None if the outbox failed.
    async fn renew(&mut self) -> Option<bool> {
        let asked = Instant::now();
        let (sink, lease) = (self.sink.clone(), self.lease);
        match read(&self.outbox, move |o| o.hold(&sink, lease)).await {
            Some(true) => {
                if self.until.is_none() {
                    debug!(sink = %self.sink, "this agent delivers to the sink");
                }
                self.until = Some(asked + self.lease);
                Some(true)
            }
            Some(false) => {
                if self.until.take().is_some() {
                    info!(sink = %self.sink, "another agent delivers to the sink now");
                }
                Some(false)
            }
            None => {
                self.until = None;
                None
            }
        }
    }

    fn left(&self) -> Duration {
        self.until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }
}

/// The dispatcher's one retry rule: of the events a sink was given, those
/// that failed retryably are delivered again (returned, with a summary of
/// their failures); those it refused for good are reported and moved past. A sink
/// that answered for fewer events than it was given is retried for the rest.
fn judge(
    sink: &str,
    events: Vec<OutboxEvent>,
    results: Delivery,
    delivered: &metrics::Counter,
    refused: &metrics::Counter,
) -> (Vec<OutboxEvent>, FailureSummary) {
    let mut again = Vec::new();
    let mut failed = FailureSummary::default();
    let mut results = results.into_iter();
    for event in events {
        match results.next() {
            Some(Ok(())) => delivered.increment(1),
            Some(Err(e)) if e.retry == Retry::Never => {
                refused.increment(1);
                error!(
                    sink, event_id = %event.id, set_id = %event.set_id, error = %e,
                    "EVENT NOT DELIVERED: the sink refused it for good; its payload stays in the outbox"
                );
            }
            Some(Err(e)) => {
                failed.add(&e);
                again.push(event);
            }
            None => {
                failed.add(&SinkError::new(
                    sink,
                    Retry::Later,
                    "the sink did not say what became of every event",
                ));
                again.push(event);
            }
        }
    }
    (again, failed)
}

enum Attempt {
    /// What became of each event.
    Delivered(Delivery),
    /// The lease could not be kept: the attempt was dropped before it ran out.
    HoldLost,
    Cancelled,
}

/// One delivery attempt, with the sink held all along: the lease is renewed
/// every third of it while the sink works, and the attempt is dropped if a
/// renewal fails or has not answered with a third of the lease left. So no
/// second agent can deliver the same events while this one is, however
/// slow the sink. A dropped attempt leaves its events in the outbox.
async fn attempt(
    sink: &mut dyn Sink,
    events: &[OutboxEvent],
    hold: &mut Hold,
    cancel: &CancellationToken,
) -> Attempt {
    let lease = hold.lease;
    match hold.keep(lease * 2 / 3).await {
        Some(true) => {}
        Some(false) | None => return Attempt::HoldLost,
    }
    let delivery = sink.deliver(events);
    tokio::pin!(delivery);
    loop {
        let Some(until) = hold.until else {
            return Attempt::HoldLost;
        };
        let renew_at = until.checked_sub(lease * 2 / 3).unwrap_or(until);
        let give_up_at = until.checked_sub(lease / 3).unwrap_or(until);
        let renewal = async {
            tokio::time::sleep_until(renew_at.into()).await;
            tokio::time::timeout_at(give_up_at.into(), hold.renew()).await
        };
        tokio::select! {
            results = &mut delivery => return Attempt::Delivered(results),
            renewed = renewal => {
                if !matches!(renewed, Ok(Some(true))) {
                    hold.until = None;
                    warn!(sink = %hold.sink, "could not keep the sink's lease during a delivery; dropped it (the events stay in the outbox)");
                    return Attempt::HoldLost;
                }
            }
            _ = cancel.cancelled() => return Attempt::Cancelled,
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

// Unit tests may reach any layer (layering.rs looks for this exact cfg).
#[cfg(test)]
#[cfg(feature = "aws")]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::Store;
    use crate::store::dynamodb::DynamoStore;
    use crate::test_moto::{Moto, create_table};

    /// Records what it delivered; its first delivery takes `first_takes`
    /// (a stalled PutEvents), the rest are instant.
    struct Recording {
        delivered: Arc<Mutex<Vec<String>>>,
        first_takes: Option<Duration>,
    }

    impl Sink for Recording {
        fn name(&self) -> &str {
            "shared-sink"
        }

        fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> super::super::DeliverFuture<'a> {
            Box::pin(async move {
                if let Some(wait) = self.first_takes.take() {
                    tokio::time::sleep(wait).await;
                }
                let mut delivered = self.delivered.lock().unwrap();
                delivered.extend(events.iter().map(|e| e.id.clone()));
                super::super::retry::all(events.len(), Ok(()))
            })
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stalled_delivery_never_lets_a_second_agent_deliver_the_same_event() {
        let lease = Duration::from_secs(3);
        let moto = Moto::start();
        let client = aws_sdk_dynamodb::Client::new(&moto.sdk().await);
        create_table(&client, "vault-agent").await;
        let sinks = vec!["shared-sink".to_owned()];
        let mut a = DynamoStore::open(client.clone(), "vault-agent", sinks.clone())
            .await
            .unwrap();
        let b = DynamoStore::open(client, "vault-agent", sinks)
            .await
            .unwrap();
        let event = OutboxEvent {
            seq: 0,
            id: "event-1".into(),
            set_id: "S".into(),
            detail_type: crate::outbound::SUCCESSFUL.into(),
            payload: "{}".into(),
            created_ms: now_ms(),
        };
        tokio::task::block_in_place(|| {
            let mut tx = a.begin().unwrap();
            tx.push_event(&event).unwrap();
            tx.commit().unwrap();
        });
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (_wake_tx, wake) = watch::channel(0);
        let stalled = Recording {
            delivered: delivered.clone(),
            first_takes: Some(lease * 3),
        };
        let outbox_a: Arc<dyn Outbox> = Arc::new(a.reader());
        let outbox_b: Arc<dyn Outbox> = Arc::new(b.reader());
        tokio::spawn(run_with_lease(
            Box::new(stalled),
            outbox_a.clone(),
            wake.clone(),
            cancel.clone(),
            lease,
        ));
        // Agent A holds the sink and is delivering; then agent B starts.
        let start = Instant::now();
        while tokio::task::block_in_place(|| outbox_b.hold("shared-sink", Duration::ZERO).unwrap())
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "A never took the sink"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fast = Recording {
            delivered: delivered.clone(),
            first_takes: None,
        };
        tokio::spawn(run_with_lease(
            Box::new(fast),
            outbox_b.clone(),
            wake,
            cancel.clone(),
            lease,
        ));
        // Until the event left the outbox, then long enough for the stalled
        // delivery to have finished too.
        let start = Instant::now();
        while !tokio::task::block_in_place(|| outbox_a.pending("shared-sink", 10).unwrap())
            .is_empty()
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never delivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(lease * 4).await;
        cancel.cancel();
        assert_eq!(*delivered.lock().unwrap(), ["event-1"]);
    }
}
