//! One engine batch: one SQLite transaction.

use super::*;

pub(super) struct SqliteTx<'a> {
    pub(super) tx: Transaction<'a>,
    pub(super) path: &'a Path,
    pub(super) job_dir_suffix: &'a str,
    /// Keys this transaction read and found absent: written with a plain
    /// INSERT. Any other row is updated in place. Both are cheaper than an
    /// upsert (and than INSERT OR REPLACE, which deletes and re-inserts,
    /// rebalancing the B-tree every time).
    pub(super) absent: HashSet<String>,
}

impl SqliteTx<'_> {
    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        sqlite_error(self.path)
    }

    fn dataset_dir(&self, set_id: &str) -> String {
        format!("{set_id}{}", self.job_dir_suffix)
    }

    /// Runs INSERT or UPDATE of one entry row; returns the rows changed.
    fn write_entry(&mut self, sql: &str, e: &EntryRecord) -> StoreResult<usize> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(self.err())?;
        with_entry_params(e, |params| stmt.execute(params)).map_err(self.err())
    }

    /// The entries of `set_id` a query selecting `ENTRY_COLUMNS` returns.
    fn select_entries(
        &mut self,
        sql: &str,
        set_id: &str,
        params: &[(&str, &dyn ToSql)],
    ) -> StoreResult<Vec<EntryRecord>> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map(params, |r| Ok(entry_from_row(r, set_id)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        rows.into_iter().collect()
    }
}

/// The statements, written once from the column lists (`rows.rs`).
static SELECT_DATASET: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id = :set_id"));
pub(super) static PUT_DATASET: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT OR REPLACE INTO datasets ({DATASET_COLUMNS}) VALUES ({DATASET_PARAMS})")
});
static SELECT_ENTRY: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE key = :key"));
pub(super) static INSERT_ENTRY: LazyLock<String> =
    LazyLock::new(|| format!("INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ({ENTRY_PARAMS})"));
/// Every column but the key, numbered as in `ENTRY_COLUMNS` (`?1` the
/// key): the same positional values as the INSERT. Never `SET key = ...`:
/// assigning a WITHOUT ROWID table's primary key, even its own value,
/// deletes and re-inserts the row (measured: -15% notifications/s).
pub(super) static UPDATE_ENTRY: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = ENTRY_COLUMNS
        .split(", ")
        .enumerate()
        .skip(1)
        .map(|(i, column)| format!("{column} = ?{}", i + 1))
        .collect();
    format!("UPDATE entries SET {} WHERE key = ?1", sets.join(", "))
});
static UNJUDGED_ENTRIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE {IN_DATASET} AND verdict = {} LIMIT :limit",
        Verdict::Unjudged.code()
    )
});
static MANIFEST_ENTRIES: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE {IN_DATASET} AND in_manifest = 1")
});
static STALE_LOCAL_ENTRIES: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE {IN_DATASET} AND local_seen < :before")
});

impl StoreTx for SqliteTx<'_> {
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>> {
        let mut stmt = self
            .tx
            .prepare_cached(&SELECT_DATASET)
            .map_err(self.err())?;
        let row = stmt
            .query_row(named_params! {":set_id": set_id}, |r| {
                Ok(dataset_from_row(r))
            })
            .optional()
            .map_err(self.err())?;
        row.transpose()
    }

    fn put_dataset(&mut self, d: &DatasetRecord) -> StoreResult<()> {
        let mut stmt = self.tx.prepare_cached(&PUT_DATASET).map_err(self.err())?;
        with_dataset_params(d, |params| stmt.execute(params)).map_err(self.err())?;
        Ok(())
    }

    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>> {
        let mut stmt = self.tx.prepare_cached(&SELECT_ENTRY).map_err(self.err())?;
        let row = stmt
            .query_row(named_params! {":key": key}, |r| {
                Ok(entry_from_row(r, set_id))
            })
            .optional()
            .map_err(self.err())?
            .transpose()?;
        if row.is_none() {
            self.absent.insert(key.to_owned());
        }
        Ok(row)
    }

    fn put_entry(&mut self, e: &EntryRecord) -> StoreResult<()> {
        if self.absent.remove(&e.key) {
            return self.write_entry(&INSERT_ENTRY, e).map(drop);
        }
        // A row never read here: update it, or insert it if it is not there.
        if self.write_entry(&UPDATE_ENTRY, e)? == 0 {
            self.write_entry(&INSERT_ENTRY, e)?;
        }
        Ok(())
    }

    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>> {
        let dir = self.dataset_dir(set_id);
        let params = named_params! {":dir": dir, ":limit": limit as i64};
        self.select_entries(&UNJUDGED_ENTRIES, set_id, params)
    }

    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
        let dir = self.dataset_dir(set_id);
        self.select_entries(&MANIFEST_ENTRIES, set_id, named_params! {":dir": dir})
    }

    fn stale_local_entries(
        &mut self,
        set_id: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>> {
        let dir = self.dataset_dir(set_id);
        let params = named_params! {":dir": dir, ":before": seen_before_ms};
        self.select_entries(&STALE_LOCAL_ENTRIES, set_id, params)
    }

    fn push_event(&mut self, ev: &OutboxEvent) -> StoreResult<i64> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO outbox (id, set_id, detail_type, payload, created_ms) \
                 VALUES (:id, :set_id, :detail_type, :payload, :created_ms) \
                 ON CONFLICT(id) DO NOTHING",
            )
            .map_err(self.err())?;
        stmt.execute(named_params! {
            ":id": ev.id,
            ":set_id": ev.set_id,
            ":detail_type": ev.detail_type,
            ":payload": ev.payload,
            ":created_ms": ev.created_ms,
        })
        .map_err(self.err())?;
        self.tx
            .query_row(
                "SELECT seq FROM outbox WHERE id = :id",
                named_params! {":id": ev.id},
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES (:name, :delta) \
                 ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            )
            .and_then(|mut s| s.execute(named_params! {":name": name, ":delta": delta}))
            .map_err(self.err())?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> StoreResult<Committed> {
        let path = self.path;
        self.tx.commit().map_err(sqlite_error(path))?;
        Ok(Committed::default())
    }
}
