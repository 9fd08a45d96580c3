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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::AppState;
use super::status::read_detail;
use crate::store::DatasetDetail;

/// The longest one request waits; clients ask again.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiter looks at its dataset with no news of it (another
/// agent of the shared store may have decided it).
const LOOK_ANYWAY: Duration = Duration::from_secs(5);

/// One read of a dataset per commit, however many wait on it: the first
/// waiter woken reads, the others share its answer (1,000 waiters on one
/// dataset made 1,000 reads per decision, the last answered after 200 ms).
#[derive(Clone, Default)]
pub struct SharedReads(Arc<Mutex<HashMap<String, LastRead>>>);

type Read = Result<Option<DatasetDetail>, String>;
/// A dataset's read for a commit (its `seq`), filled by the first waiter.
type LastRead = (u64, Arc<OnceCell<Read>>);

/// Datasets whose last read is kept; past it, the oldest are forgotten.
const SHARED_READS: usize = 10_000;

impl SharedReads {
    /// The dataset as committed at commit `seq` (or later).
    async fn read(&self, state: &AppState, set_id: &str, seq: u64) -> Read {
        let cell = {
            let mut reads = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if reads.len() >= SHARED_READS && !reads.contains_key(set_id) {
                reads.clear();
            }
            let entry = reads
                .entry(set_id.to_owned())
                .or_insert_with(|| (seq, Arc::default()));
            if entry.0 < seq {
                *entry = (seq, Arc::default());
            }
            entry.1.clone()
        };
        cell.get_or_init(|| read_detail(state, set_id.to_owned()))
            .await
            .clone()
    }
}

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
    // The first look, and the periodic ones, read for themselves: another
    // agent's decision comes with no commit of this one.
    let mut shared = false;
    loop {
        let found = if shared {
            state.shared_reads.read(state, set_id, seen).await?
        } else {
            read_detail(state, set_id.to_owned()).await?
        };
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
            _ = woken => shared = true,
            _ = tokio::time::sleep(LOOK_ANYWAY) => shared = false,
            _ = tokio::time::sleep_until(until) => shared = false,
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
