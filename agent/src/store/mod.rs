//! Durable state: one record per notified key (the reference's DynamoDB item),
//! one record per dataset with its incremental counters, and an outbox of
//! events waiting for delivery to each sink.
//!
//! [`Store`] is the write side, used by the single reconcile engine thread
//! inside one transaction per batch; [`StoreReader`] is the read side used by
//! `/status` and the sink dispatchers. SQLite ([`sqlite`]) is the embedded
//! backend; [`dynamodb`] is the shared one, written by several agents at once.

pub mod dynamodb;
pub mod local_fs;
pub mod model;
pub mod sqlite;
pub mod state_lock;

pub use model::{
    Counts, DatasetDetail, DatasetRecord, DatasetState, EntryRecord, LocalFile, ManifestRef,
    OutboxEvent, UploadRecord, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
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
    #[error("DynamoDB table {table}: {message}")]
    Dynamodb { table: String, message: String },
    /// Another agent changed what this batch read; running the batch again
    /// on fresh reads resolves it.
    #[error("write conflict: {0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The write side. Everything done through one [`StoreTx`] commits atomically.
pub trait Store: Send {
    /// Datasets still waiting for a decision, to resume after a restart.
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>>;
    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>>;
    /// Whether other agents write to this store too. Then nothing read may
    /// be cached across batches, and decisions are claimed, not assumed.
    fn is_shared(&self) -> bool {
        false
    }
}

pub trait StoreTx {
    /// Reads ahead datasets and (set-id, key) entries about to be asked
    /// for, so a remote backend makes one round trip for many.
    fn prefetch(&mut self, _datasets: &[&str], _entries: &[(&str, &str)]) -> StoreResult<()> {
        Ok(())
    }
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>>;
    fn put_dataset(&mut self, dataset: &DatasetRecord) -> StoreResult<()>;
    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>>;
    /// Writes an entry; `is_new` says it was absent when this transaction
    /// read it (so the backend can insert rather than update).
    fn put_entry(&mut self, entry: &EntryRecord, is_new: bool) -> StoreResult<()>;
    /// Up to `limit` entries of a dataset whose policy call failed.
    fn unjudged_entries(
        &mut self,
        set_id: &str,
        dataset_dir: &str,
        limit: usize,
    ) -> StoreResult<Vec<EntryRecord>>;
    /// The entries of a dataset its loaded manifest lists (to clear them
    /// when a re-sealed dataset's new manifest replaces the old one).
    fn manifest_entries(
        &mut self,
        set_id: &str,
        dataset_dir: &str,
    ) -> StoreResult<Vec<EntryRecord>>;
    /// The entries of a dataset last seen locally before `seen_before_ms`
    /// (gone, if a full scan since then did not see them).
    fn stale_local_entries(
        &mut self,
        set_id: &str,
        dataset_dir: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>>;
    /// Appends an event to the outbox; returns its sequence number. An event
    /// whose id is already there is not added again.
    fn push_event(&mut self, event: &OutboxEvent) -> StoreResult<i64>;
    /// Records that `sink` delivered every event up to `seq`.
    fn set_cursor(&mut self, sink: &str, seq: i64) -> StoreResult<()>;
    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()>;
    fn commit(self: Box<Self>) -> StoreResult<Committed>;
}

/// What a commit could not do without failing as a whole.
#[derive(Debug, Default)]
pub struct Committed {
    /// Datasets this transaction decided but another agent decided first
    /// (a shared store only): their outcome and event are the other's.
    pub lost_decisions: Vec<String>,
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
    /// How many datasets are in each state.
    fn dataset_totals(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        for d in self.datasets()? {
            *totals.entry(d.state.as_str().to_owned()).or_default() += 1;
        }
        Ok(totals.into_iter().collect())
    }
    /// One dataset with up to `limit` example paths per problem list.
    fn dataset_detail(
        &self,
        set_id: &str,
        dataset_dir: &str,
        limit: usize,
    ) -> StoreResult<Option<DatasetDetail>>;
    fn counters(&self) -> StoreResult<Vec<(String, i64)>>;
}

/// This agent's own outbox: a sequence, and a cursor per sink that the
/// engine moves when the sink confirms.
pub trait LocalOutbox: Send + Sync {
    /// Where `sink` stopped delivering (0 if it never delivered).
    fn cursor(&self, sink: &str) -> StoreResult<i64>;
    fn events_after(&self, seq: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>>;
}

/// An outbox shared by several agents: for each sink one agent at a time
/// holds a lease and delivers, and an event stays until every sink has it.
pub trait SharedOutbox: Send + Sync {
    /// Takes or renews this agent's lease on `sink` for `ttl`; false while
    /// another agent holds it.
    fn hold_lease(&self, sink: &str, ttl: std::time::Duration) -> StoreResult<bool>;
    /// Up to `limit` events `sink` does not have yet, oldest first.
    fn pending(&self, sink: &str, limit: usize) -> StoreResult<Vec<OutboxEvent>>;
    /// Records that `sink` has these events.
    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> StoreResult<()>;
}
