//! `GET /status/{set-id}?wait=DURATION[&since=VERSION]`: a long poll, so a
//! script waiting for its dataset (`vault-agent wait`) never polls. The
//! answer comes as soon as the dataset is decided, or its `version`
//! differs from `since` (progress), or the time is up; for a dataset not
//! seen yet, as soon as it appears (else 404 when the time is up).
//!
//! A waiter sleeps on the engine's commit news and looks at its dataset
//! again only when a commit wrote it (or when it missed a commit). Every
//! few seconds it looks anyway: with the shared store another agent may
//! decide it. A waiter holds its connection with a request in flight, so it
//! counts against `max_connections` and is never the idle one evicted; it
//! answers at once when the agent shuts down, and the client reconnects.

use std::time::Duration;

use tokio::time::Instant;

use super::AppState;
use super::status::read_detail;
use crate::store::DatasetDetail;

/// The longest one request waits; clients ask again.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiter looks at its dataset with no news of it (another
/// agent of the shared store may have decided it).
const LOOK_ANYWAY: Duration = Duration::from_secs(5);

pub async fn until_changed(
    state: &AppState,
    set_id: &str,
    since: Option<&str>,
    wait: Duration,
) -> Result<Option<DatasetDetail>, String> {
    let until = Instant::now() + wait;
    let _waiting = Waiting::new();
    let mut news = state.engine.news();
    let mut seen = news.borrow_and_update().seq;
    loop {
        let found = read_detail(state, set_id.to_owned()).await?;
        let answer = match &found {
            Some(d) => {
                d.record.state.is_decided()
                    || since.is_some_and(|s| s != super::status::version(&d.record))
            }
            None => false,
        };
        if answer || Instant::now() >= until {
            return Ok(found);
        }
        // Until a commit writes this dataset, the time is up, or shutdown.
        let woken = async {
            loop {
                if news.changed().await.is_err() {
                    // The engine stopped: nothing will change.
                    std::future::pending::<()>().await;
                }
                let latest = news.borrow_and_update().clone();
                let missed = latest.seq > seen + 1;
                seen = latest.seq;
                if missed || latest.set_ids.iter().any(|s| s == set_id) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(LOOK_ANYWAY) => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = state.shutdown.cancelled() => {
                return read_detail(state, set_id.to_owned()).await;
            }
        }
    }
}

/// Counts a waiter in `vault_agent_http_waiters` while it waits, however
/// its request ends (answered, or dropped by the client).
struct Waiting(metrics::Gauge);

impl Waiting {
    fn new() -> Waiting {
        let gauge = metrics::gauge!(crate::telemetry::HTTP_WAITERS);
        gauge.increment(1.0);
        Waiting(gauge)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
