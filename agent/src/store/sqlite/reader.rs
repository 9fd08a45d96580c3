//! The read side (`/status`, `/metrics`), on its own connection.

use super::*;

/// A read-only connection; shared behind a mutex by the threads that read.
pub struct SqliteReader {
    conn: Mutex<Connection>,
    path: PathBuf,
    job_dir_suffix: String,
}

impl SqliteReader {
    pub fn open(path: &Path, job_dir_suffix: &str) -> StoreResult<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite_error(path))?;
        Ok(SqliteReader {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            job_dir_suffix: job_dir_suffix.to_owned(),
        })
    }

    /// The datasets a parameterised `SELECT {DATASET_COLUMNS}` returns.
    fn query_page(
        &self,
        sql: &str,
        params: &[(&str, &dyn ToSql)],
    ) -> StoreResult<Vec<DatasetRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(sql).map_err(sqlite_error(&self.path))?;
        let rows = stmt
            .query_map(params, |r| Ok(dataset_from_row(r)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_error(&self.path))?;
        rows.into_iter().collect()
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn).map_err(sqlite_error(&self.path))
    }
}

impl StoreReader for SqliteReader {
    fn datasets(&self) -> StoreResult<Vec<DatasetRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let sql = format!("SELECT {DATASET_COLUMNS} FROM datasets ORDER BY first_seen_ms, set_id");
        query_datasets(&conn, &sql, &self.path)
    }

    fn datasets_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<DatasetRecord>> {
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id > :after ORDER BY set_id \
             LIMIT :limit"
        );
        let params = named_params! {":after": after.unwrap_or(""), ":limit": limit as i64};
        self.query_page(&sql, params)
    }

    fn datasets_page_by_activity(
        &self,
        active: bool,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DatasetRecord>> {
        let not = if active { "" } else { "NOT" };
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id > :after \
             AND {not} (state IN ('collecting', 'reconciling')) ORDER BY set_id LIMIT :limit"
        );
        let params = named_params! {":after": after.unwrap_or(""), ":limit": limit as i64};
        self.query_page(&sql, params)
    }

    fn recent_decisions(&self, limit: usize) -> StoreResult<Vec<DatasetRecord>> {
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE decided_ms IS NOT NULL \
             ORDER BY decided_ms DESC, set_id LIMIT :limit"
        );
        self.query_page(&sql, named_params! {":limit": limit as i64})
    }

    fn dataset_totals(&self) -> StoreResult<Vec<(String, u64)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT state, count(*) FROM datasets GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    fn dataset_gauges(&self) -> StoreResult<DatasetGauges> {
        let (pending_files, pending_bytes) = self.with(|c| {
            c.query_row(
                "SELECT coalesce(sum(pending), 0), coalesce(sum(pending_bytes), 0) FROM datasets \
                 WHERE state IN ('collecting', 'reconciling')",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })?;
        Ok(DatasetGauges {
            totals: self.dataset_totals()?,
            pending_files,
            pending_bytes,
        })
    }

    fn dataset_detail(&self, set_id: &str, limit: usize) -> StoreResult<Option<DatasetDetail>> {
        let dataset_dir = format!("{set_id}{}", self.job_dir_suffix);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let sql = format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id = :set_id");
        let record = conn
            .query_row(&sql, named_params! {":set_id": set_id}, |r| {
                Ok(dataset_from_row(r))
            })
            .optional()
            .map_err(sqlite_error(&self.path))?
            .transpose()?;
        let Some(record) = record else {
            return Ok(None);
        };
        let list = |condition: &str| -> StoreResult<Vec<String>> {
            let sql = format!(
                "SELECT key FROM entries WHERE {IN_DATASET} AND {condition} ORDER BY key \
                 LIMIT :limit"
            );
            let mut stmt = conn.prepare(&sql).map_err(sqlite_error(&self.path))?;
            let params = named_params! {":dir": dataset_dir, ":limit": limit as i64};
            let keys = stmt
                .query_map(params, |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sqlite_error(&self.path))?;
            Ok(keys)
        };
        // EntryRecord::problems in SQL (the conformance suite checks they agree).
        let counted = Verdict::Count.code();
        let (missing, mismatched, unexpected) = if record.manifest_loaded {
            (
                list(&format!(
                    "in_manifest = 1 AND (verdict IS NULL OR verdict != {counted})"
                ))?,
                list(&format!(
                    "in_manifest = 1 AND verdict = {counted} AND matched = 0"
                ))?,
                list(&format!("in_manifest = 0 AND verdict = {counted}"))?,
            )
        } else {
            Default::default()
        };
        let pending = if record.counts.pending > 0 {
            list(PENDING_SQL)?
        } else {
            Vec::new()
        };
        // EntryRecord::content_of_upload in SQL: a check of the current upload.
        let content = |outcome: ContentOutcome| {
            list(&format!(
                "in_manifest = 1 AND size IS NOT NULL AND content LIKE '{} ' || event_time || ' %'",
                outcome.code()
            ))
        };
        let content_mismatch = if record.counts.content_mismatch > 0 {
            content(ContentOutcome::Mismatch)?
        } else {
            Vec::new()
        };
        let unverifiable = if record.counts.unverifiable > 0 {
            content(ContentOutcome::Unverifiable)?
        } else {
            Vec::new()
        };
        Ok(Some(DatasetDetail {
            record,
            missing,
            mismatched,
            unexpected,
            pending,
            content_mismatch,
            unverifiable,
            examined: None,
        }))
    }

    fn counters(&self) -> StoreResult<Vec<(String, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, value FROM counters ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }
}
