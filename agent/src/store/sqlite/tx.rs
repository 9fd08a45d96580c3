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
    fn write_entry(&mut self, sql: &'static str, e: &EntryRecord) -> StoreResult<usize> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(self.err())?;
        let u = e.upload.as_ref();
        // The notified key is stored only where it differs from the entry
        // (directory keys with their '/'): most rows get shorter.
        let object_key = u.map(|u| u.object_key.as_str()).filter(|k| *k != e.key);
        stmt.execute(params![
            e.key,
            object_key,
            u.map(|u| &u.bucket),
            u.map(|u| u.size as i64),
            u.map(|u| u.event_time),
            u.map(|u| u.verdict.code()),
            u.is_some_and(|u| u.matched),
            e.expected.is_some(),
            e.expected.flatten().map(|s| s as i64),
            u.and_then(|u| u.modified),
            e.local.map(|l| l.size as i64),
            e.local.map(|l| l.mtime),
            e.local.map(|l| l.is_dir),
            e.local.map(|l| l.seen_ms),
            u.is_some_and(|u| u.origin.is_listed()),
        ])
        .map_err(self.err())
    }

    /// Runs a query selecting `entry_columns!` rows.
    fn select_entries(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> StoreResult<Vec<EntryRecord>> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map(params, |r| Ok(entry_from_row(r)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        rows.into_iter().collect()
    }
}

impl StoreTx for SqliteTx<'_> {
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>> {
        let sql = format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id = ?1");
        let mut stmt = self.tx.prepare_cached(&sql).map_err(self.err())?;
        let row = stmt
            .query_row([set_id], |r| Ok(dataset_from_row(r)))
            .optional()
            .map_err(self.err())?;
        row.transpose()
    }

    fn put_dataset(&mut self, d: &DatasetRecord) -> StoreResult<()> {
        let sql = format!(
            "INSERT OR REPLACE INTO datasets ({DATASET_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
             ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)"
        );
        let mut stmt = self.tx.prepare_cached(&sql).map_err(self.err())?;
        let m = d.manifest.as_ref();
        stmt.execute(params![
            d.set_id,
            d.state.as_str(),
            m.map(|m| &m.key),
            m.map(|m| &m.bucket),
            m.map(|m| m.size as i64),
            m.map(|m| m.event_time),
            d.manifest_loaded,
            d.manifest_entries as i64,
            d.counts.received as i64,
            d.counts.matched as i64,
            d.counts.mismatched as i64,
            d.counts.ignored as i64,
            d.counts.rejected as i64,
            d.first_seen_ms,
            d.last_seen_ms,
            d.manifest_seen_ms,
            d.deadline_ms,
            d.decided_ms,
            d.note,
            d.counts.unjudged as i64,
            d.counts.local_files as i64,
            d.counts.local_bytes as i64,
            d.counts.pending as i64,
            d.counts.pending_bytes as i64,
            d.last_local_ms,
            d.policy_state.as_ref().map(|p| &p.policy),
            d.policy_state.as_ref().map(|p| &p.value),
            d.listing_ms,
            d.listed_entries as i64,
        ])
        .map_err(self.err())?;
        Ok(())
    }

    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>> {
        let mut stmt = self
            .tx
            .prepare_cached(concat!(
                "SELECT ",
                entry_columns!("?2"),
                " FROM entries WHERE key = ?1"
            ))
            .map_err(self.err())?;
        let row = stmt
            .query_row([key, set_id], |r| Ok(entry_from_row(r)))
            .optional()
            .map_err(self.err())?
            .transpose()?;
        if row.is_none() {
            self.absent.insert(key.to_owned());
        }
        Ok(row)
    }

    fn put_entry(&mut self, e: &EntryRecord) -> StoreResult<()> {
        const INSERT: &str = "INSERT INTO entries (key, object_key, bucket, size, event_time, \
             verdict, matched, in_manifest, expected_size, modified, local_size, local_mtime, \
             local_dir, local_seen, listed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
             ?13, ?14, ?15)";
        const UPDATE: &str = "UPDATE entries SET object_key = ?2, bucket = ?3, size = ?4, \
             event_time = ?5, verdict = ?6, matched = ?7, in_manifest = ?8, expected_size = ?9, \
             modified = ?10, local_size = ?11, local_mtime = ?12, local_dir = ?13, local_seen = ?14, \
             listed = ?15 WHERE key = ?1";
        if self.absent.remove(&e.key) {
            return self.write_entry(INSERT, e).map(drop);
        }
        // A row never read here: update it, or insert it if it is not there.
        if self.write_entry(UPDATE, e)? == 0 {
            self.write_entry(INSERT, e)?;
        }
        Ok(())
    }

    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>> {
        let dataset_dir = self.dataset_dir(set_id);
        let sql = format!(
            "SELECT {} FROM entries WHERE {} AND verdict = {} LIMIT ?2",
            entry_columns!("?3"),
            in_dataset!(),
            Verdict::Unjudged.code()
        );
        self.select_entries(&sql, params![dataset_dir, limit as i64, set_id])
    }

    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
        let dataset_dir = self.dataset_dir(set_id);
        let sql = concat!(
            "SELECT ",
            entry_columns!("?2"),
            " FROM entries WHERE ",
            in_dataset!(),
            " AND in_manifest = 1"
        );
        self.select_entries(sql, params![dataset_dir, set_id])
    }

    fn stale_local_entries(
        &mut self,
        set_id: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>> {
        let dataset_dir = self.dataset_dir(set_id);
        let sql = concat!(
            "SELECT ",
            entry_columns!("?3"),
            " FROM entries WHERE ",
            in_dataset!(),
            " AND local_seen < ?2"
        );
        self.select_entries(sql, params![dataset_dir, seen_before_ms, set_id])
    }

    fn push_event(&mut self, ev: &OutboxEvent) -> StoreResult<i64> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO outbox (id, set_id, detail_type, payload, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO NOTHING",
            )
            .map_err(self.err())?;
        stmt.execute(params![
            ev.id,
            ev.set_id,
            ev.detail_type,
            ev.payload,
            ev.created_ms
        ])
        .map_err(self.err())?;
        self.tx
            .query_row("SELECT seq FROM outbox WHERE id = ?1", [&ev.id], |r| {
                r.get(0)
            })
            .map_err(self.err())
    }

    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            )
            .and_then(|mut s| s.execute(params![name, delta]))
            .map_err(self.err())?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> StoreResult<Committed> {
        let path = self.path;
        self.tx.commit().map_err(sqlite_error(path))?;
        Ok(Committed::default())
    }
}
