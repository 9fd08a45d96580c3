//! Durable state: one record per notified key (the reference's DynamoDB item),
//! one record per dataset with its incremental counters, and an outbox of
//! events waiting for delivery to each sink.
//!
//! Three traits make the contract every backend keeps; the engine and the
//! dispatchers use only them, never a backend's type:
//! - [`Store`] / [`StoreTx`]: the write side, used by the single reconcile
//!   engine thread, one transaction per batch.
//! - [`StoreReader`]: the read side, for `/status` and the CLI.
//! - [`Outbox`]: what the sink dispatchers deliver from.
//!
//! Backends: [`sqlite`] (embedded, one agent), [`dynamodb`] (shared by
//! several agents), [`memory`] (tests and benchmarks). [`conformance`] is the
//! test suite every backend passes.

pub mod conformance;
#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod local_fs;
pub mod memory;
pub mod model;
pub mod sqlite;
pub mod state_lock;

pub use model::{
    CONTENT_DETAIL_BYTES, ContentCheck, ContentOutcome, Counts, DatasetDetail, DatasetRecord,
    DatasetState, EntryRecord, LocalFile, ManifestRef, OutboxEvent, POLICY_STATE_BYTES,
    PolicyState, UploadOrigin, UploadRecord, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed: `store` names it (a file, a table), `message`
    /// says what went wrong.
    #[error("{store}: {message}")]
    Backend { store: String, message: String },
    #[error("state directory {path}: {message}")]
    StateDir { path: String, message: String },
    #[error(
        "state database {path} has schema version {found}; this vault-agent understands up to {supported}. Upgrade vault-agent or point [agent] state_dir elsewhere"
    )]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("state database {path} is damaged: {problem}")]
    Damaged { path: String, problem: String },
    #[error(
        "state database {path} {what} while the agent ran; nothing more is accepted: restart the agent"
    )]
    Replaced { path: String, what: String },
    #[error("state database holds a value this version cannot read: {0}")]
    Corrupt(String),
    /// Another agent changed what this batch read; running the batch again
    /// on fresh reads resolves it.
    #[error("write conflict: {0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The write side, used by one engine thread.
///
/// # The protocol
///
/// The engine runs every batch the same way, whatever the backend:
/// 1. [`Store::begin`] a transaction; read datasets and entries through it
///    and write them back changed, in any order.
/// 2. Decide datasets inside the same transaction: a dataset written with a
///    decided state, with its event pushed, is a *claim* on that decision.
/// 3. [`StoreTx::commit`]. Either everything is recorded, or nothing is and
///    an error says why; a [`StoreError::Conflict`] means "run the batch
///    again on fresh reads" (applying a notification twice changes nothing,
///    so whatever a backend already wrote of the failed attempt is harmless).
/// 4. [`Committed`] reports the claims another writer won first (their
///    outcome and event are the other's), the claims not made because the
///    dataset changed after the batch read it, and the datasets to decide
///    again on a fresh read because other writers changed them at the same
///    time. The engine revisits those in a transaction of their own.
///
/// **A decision is taken on committed state.** A claim holds only if, when
/// it commits, the dataset (its counters, its manifest, its entries) is
/// exactly what the decision read plus the batch's own writes. Otherwise
/// it is not made: no outcome, no event, and the dataset is reported in
/// [`Committed::stale_claims`] to be decided again. Likewise a change to a
/// dataset's manifest fields (the manifest notification it follows, whether
/// that manifest is loaded, its entry count) commits only on the manifest
/// the batch read, so no decision ever uses a manifest older than the
/// newest manifest notification recorded.
///
/// A backend only one agent writes (SQLite, memory) commits atomically, so
/// what a batch read is what is committed: it never loses a claim, never
/// has a stale one and has nothing to revisit. The shared DynamoDB backend
/// commits entries with version conditions and counter deltas (each write
/// also moves the dataset's revision), claims each decision on the
/// condition that no outcome exists and the revision is the one the batch
/// read plus its own writes, and asks to revisit the datasets whose counters
/// it changed, since their totals may include other agents' work this
/// transaction never read.
pub trait Store: Send {
    /// Datasets still waiting for a decision, as committed now.
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>>;
    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>>;
}

/// One transaction: reads see its own writes; nothing is visible to others
/// before [`StoreTx::commit`].
pub trait StoreTx {
    /// Reads ahead datasets and (set-id, key) entries about to be asked
    /// for, so a remote backend makes one round trip for many. A hint:
    /// backends with cheap reads ignore it.
    fn prefetch(&mut self, _datasets: &[&str], _entries: &[(&str, &str)]) -> StoreResult<()> {
        Ok(())
    }
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>>;
    /// Writes a dataset. Written with a decided state that it did not have
    /// when read, it claims the decision (see [`Committed::lost_claims`]).
    fn put_dataset(&mut self, dataset: &DatasetRecord) -> StoreResult<()>;
    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>>;
    fn put_entry(&mut self, entry: &EntryRecord) -> StoreResult<()>;
    /// Up to `limit` entries of a dataset whose upload is not judged yet.
    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>>;
    /// The entries a dataset's loaded manifest lists (to clear them when a
    /// re-sealed dataset's new manifest replaces the old one).
    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>>;
    /// The entries of a dataset last seen locally before `seen_before_ms`
    /// (gone, if a full scan since then did not see them).
    fn stale_local_entries(
        &mut self,
        set_id: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>>;
    /// Appends an event to the outbox; returns its sequence number (it
    /// orders this agent's events; it wakes the dispatchers). An event
    /// whose id is already there is not added again.
    fn push_event(&mut self, event: &OutboxEvent) -> StoreResult<i64>;
    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()>;
    fn commit(self: Box<Self>) -> StoreResult<Committed>;
}

/// What a commit reports besides success (see [`Store`]'s protocol).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Datasets this transaction decided that another writer had decided
    /// first: they stay decided, with the other's outcome and event.
    pub lost_claims: Vec<String>,
    /// Datasets this transaction decided on a read another writer changed
    /// before the claim: not decided, no event; decide them again.
    pub stale_claims: Vec<String>,
    /// Undecided datasets whose committed totals may include other
    /// writers' changes this transaction did not read: decide them again.
    pub revisit: Vec<String>,
}

/// The store's gauges for `/metrics` (see [`StoreReader::dataset_gauges`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatasetGauges {
    /// Datasets by state name.
    pub totals: Vec<(String, u64)>,
    pub pending_files: u64,
    pub pending_bytes: u64,
}

/// The read side: safe to use from any thread while the engine writes.
pub trait StoreReader: Send + Sync {
    fn datasets(&self) -> StoreResult<Vec<DatasetRecord>>;
    /// Up to `limit` datasets whose set-id sorts after `after`, in set-id
    /// order: one page of `/status`, so no request holds every dataset.
    fn datasets_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<DatasetRecord>> {
        let mut all = self.datasets()?;
        all.retain(|d| after.is_none_or(|a| d.set_id.as_str() > a));
        all.sort_by(|a, b| a.set_id.cmp(&b.set_id));
        all.truncate(limit);
        Ok(all)
    }
    /// Like [`StoreReader::datasets_page`], over the datasets not decided
    /// (`active`) or the decided ones: the status page lists the active
    /// ones first.
    fn datasets_page_by_activity(
        &self,
        active: bool,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DatasetRecord>> {
        let mut all = self.datasets()?;
        all.retain(|d| {
            d.state.is_decided() != active && after.is_none_or(|a| d.set_id.as_str() > a)
        });
        all.sort_by(|a, b| a.set_id.cmp(&b.set_id));
        all.truncate(limit);
        Ok(all)
    }
    /// Up to `limit` decided datasets, the latest decision first (each
    /// decision is one reconcile event).
    fn recent_decisions(&self, limit: usize) -> StoreResult<Vec<DatasetRecord>> {
        let mut all = self.datasets()?;
        all.retain(|d| d.state.is_decided());
        all.sort_by(|a, b| {
            b.decided_ms
                .cmp(&a.decided_ms)
                .then(a.set_id.cmp(&b.set_id))
        });
        all.truncate(limit);
        Ok(all)
    }
    /// How many datasets are in each state.
    fn dataset_totals(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        for d in self.datasets()? {
            *totals.entry(d.state.as_str().to_owned()).or_default() += 1;
        }
        Ok(totals.into_iter().collect())
    }
    /// What `/metrics` shows of the store, in one read of the datasets
    /// (for a remote store, one scan per scrape): datasets by state, and
    /// pending local files and bytes over the datasets not decided.
    fn dataset_gauges(&self) -> StoreResult<DatasetGauges> {
        let mut gauges = DatasetGauges::default();
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        for d in self.datasets()? {
            *totals.entry(d.state.as_str().to_owned()).or_default() += 1;
            if !d.state.is_decided() {
                gauges.pending_files += d.counts.pending;
                gauges.pending_bytes += d.counts.pending_bytes;
            }
        }
        gauges.totals = totals.into_iter().collect();
        Ok(gauges)
    }
    /// One dataset with up to `limit` example paths per problem list.
    fn dataset_detail(&self, set_id: &str, limit: usize) -> StoreResult<Option<DatasetDetail>>;
    fn counters(&self) -> StoreResult<Vec<(String, i64)>>;
}

pub use crate::outbound::{Outbox, OutboxResult};

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A reader that only lists (as a remote store does), counting lists.
    struct Listing {
        datasets: Vec<DatasetRecord>,
        lists: AtomicUsize,
    }

    impl StoreReader for Listing {
        fn datasets(&self) -> StoreResult<Vec<DatasetRecord>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(self.datasets.clone())
        }
        fn dataset_detail(&self, _: &str, _: usize) -> StoreResult<Option<DatasetDetail>> {
            Ok(None)
        }
        fn counters(&self) -> StoreResult<Vec<(String, i64)>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_scrape_lists_the_datasets_once() {
        let mut open = DatasetRecord::new("A", 0);
        open.counts.pending = 2;
        open.counts.pending_bytes = 30;
        let mut done = DatasetRecord::new("B", 0);
        done.state = DatasetState::Succeeded;
        done.counts.pending = 5; // decided: no longer pending
        let reader = Listing {
            datasets: vec![open, done],
            lists: AtomicUsize::new(0),
        };
        let gauges = reader.dataset_gauges().unwrap();
        assert_eq!(reader.lists.load(Ordering::SeqCst), 1);
        assert_eq!(
            gauges,
            DatasetGauges {
                totals: vec![("collecting".into(), 1), ("succeeded".into(), 1)],
                pending_files: 2,
                pending_bytes: 30,
            }
        );
    }
}
