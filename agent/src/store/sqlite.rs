//! The embedded store: one SQLite file in `[agent] state_dir`, in WAL mode so
//! `/status` and the sink dispatchers read while the engine writes.
//!
//! Durability: a transaction is committed before the agent answers 202. With
//! `sync = "full"` (default) the WAL is fsynced at every commit, so accepted
//! notifications survive power loss; with `sync = "normal"` they survive a
//! crash of the agent process, not of the host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};

use super::model::{
    Counts, DatasetDetail, DatasetRecord, DatasetState, EntryRecord, LocalFile, ManifestRef,
    OutboxEvent, POLICY_STATE_BYTES, PolicyState, UploadRecord, Verdict,
};
use super::{
    Committed, DatasetGauges, Outbox, OutboxResult, Store, StoreError, StoreReader, StoreResult,
    StoreTx,
};
use crate::config::SyncMode;

/// Bumped whenever the schema changes; older agents refuse newer files.
const SCHEMA_VERSION: i64 = 6;
pub const DATABASE_FILE: &str = "vault-agent.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS datasets (
    set_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    manifest_key TEXT, manifest_bucket TEXT, manifest_size INTEGER, manifest_event_time INTEGER,
    manifest_loaded INTEGER NOT NULL,
    manifest_entries INTEGER NOT NULL,
    received INTEGER NOT NULL, matched INTEGER NOT NULL, mismatched INTEGER NOT NULL,
    ignored INTEGER NOT NULL, rejected INTEGER NOT NULL, unjudged INTEGER NOT NULL DEFAULT 0,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    manifest_seen_ms INTEGER, deadline_ms INTEGER, decided_ms INTEGER,
    note TEXT,
    local_files INTEGER NOT NULL DEFAULT 0, local_bytes INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0, pending_bytes INTEGER NOT NULL DEFAULT 0,
    last_local_ms INTEGER,
    policy_name TEXT, policy_state BLOB,
    listing_ms INTEGER, listed_entries INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- One row per path: the reference's upload record (object_key, bucket, size,
-- event_time; its setId is the key's top directory minus the suffix) and/or
-- the manifest's expectation. Keyed by the path without trailing '/', so a
-- dataset's rows are one contiguous key range. object_key is NULL when equal
-- to key; size is NULL until uploaded. local_* describe the file as the
-- share watcher last saw it on this host (NULL: not seen locally).
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    object_key TEXT, bucket TEXT, size INTEGER, event_time INTEGER,
    verdict INTEGER, matched INTEGER NOT NULL DEFAULT 0,
    in_manifest INTEGER NOT NULL DEFAULT 0, expected_size INTEGER,
    modified INTEGER,
    local_size INTEGER, local_mtime INTEGER, local_dir INTEGER, local_seen INTEGER,
    listed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    set_id TEXT NOT NULL,
    detail_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
";

const DATASET_COLUMNS: &str = "set_id, state, manifest_key, manifest_bucket, manifest_size, \
    manifest_event_time, manifest_loaded, manifest_entries, received, matched, mismatched, \
    ignored, rejected, first_seen_ms, last_seen_ms, manifest_seen_ms, deadline_ms, decided_ms, note, \
    unjudged, local_files, local_bytes, pending, pending_bytes, last_local_ms, policy_name, \
    policy_state, listing_ms, listed_entries";

/// The columns of an entry row, `$set` being the parameter that carries the
/// set-id (rows do not store it: the key's top directory determines it).
/// A macro so the SQL is a literal: no formatting on the hot path.
macro_rules! entry_columns {
    ($set:literal) => {
        concat!(
            "key, ",
            $set,
            ", object_key, bucket, size, event_time, verdict, matched, in_manifest, \
             expected_size, modified, local_size, local_mtime, local_dir, local_seen, listed"
        )
    };
}

/// A dataset's rows: its root entry and the key range below it ('0' sorts
/// right after '/'); `?1` is the dataset directory.
macro_rules! in_dataset {
    () => {
        "(key = ?1 OR (key >= ?1 || '/' AND key < ?1 || '0'))"
    };
}

/// SQL for "this entry exists locally and the cloud has not confirmed it".
pub const PENDING_SQL: &str = "local_size IS NOT NULL AND NOT (size IS NOT NULL AND \
    (local_dir = 1 OR (size = local_size AND coalesce(modified, event_time) >= local_mtime)))";

/// Upgrades an older database in place (`from` is its schema version).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "ALTER TABLE datasets ADD COLUMN unjudged INTEGER NOT NULL DEFAULT 0;",
    ),
    (2, "ALTER TABLE entries DROP COLUMN set_id;"),
    (
        3,
        "ALTER TABLE datasets ADD COLUMN local_files INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN local_bytes INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN pending_bytes INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN last_local_ms INTEGER;
         ALTER TABLE entries ADD COLUMN modified INTEGER;
         ALTER TABLE entries ADD COLUMN local_size INTEGER;
         ALTER TABLE entries ADD COLUMN local_mtime INTEGER;
         ALTER TABLE entries ADD COLUMN local_dir INTEGER;
         ALTER TABLE entries ADD COLUMN local_seen INTEGER;",
    ),
    (
        4,
        "ALTER TABLE datasets ADD COLUMN policy_name TEXT;
         ALTER TABLE datasets ADD COLUMN policy_state BLOB;",
    ),
    (
        5,
        "ALTER TABLE datasets ADD COLUMN listing_ms INTEGER;
         ALTER TABLE datasets ADD COLUMN listed_entries INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE entries ADD COLUMN listed INTEGER NOT NULL DEFAULT 0;",
    ),
];

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// What follows a set-id in its dataset directory: rows are keyed by
    /// path, so a dataset's rows are the key range under that directory.
    job_dir_suffix: String,
    /// The database file as opened: compared with what the path names
    /// before each batch, so a deleted or replaced file is noticed.
    opened: std::fs::File,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `state_dir`, for dataset
    /// directories named `<SET-ID><job_dir_suffix>`.
    pub fn open(state_dir: &Path, sync: SyncMode, job_dir_suffix: &str) -> StoreResult<Self> {
        let path = state_dir.join(DATABASE_FILE);
        let err = sqlite_error(&path);
        // SQLite takes an empty file for an empty database: state lost to a
        // truncation would silently start over.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                problem: "the file is empty (truncated?); restore it from a backup, or move it \
                          away to start with no state"
                    .into(),
            });
        }
        let conn = Connection::open(&path).map_err(&err)?;
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            // 16 KiB pages: fewer B-tree levels and rebalances for the
            // entries table (measured: +15% notifications/s over 4 KiB).
            "PRAGMA page_size = 16384;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -65536;
             PRAGMA temp_store = MEMORY;"
        ))
        .map_err(&err)?;
        check_integrity(&conn, &path)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // A new file (version 0) gets the current schema directly.
        for (from, sql) in MIGRATIONS {
            if found != 0 && found <= *from {
                conn.execute_batch(sql).map_err(&err)?;
            }
        }
        conn.execute_batch(SCHEMA).map_err(&err)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(&err)?;
        conn.set_prepared_statement_cache_capacity(64);
        drop(err);
        let opened = std::fs::File::open(&path).map_err(|e| StoreError::StateDir {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SqliteStore {
            conn,
            path,
            job_dir_suffix: job_dir_suffix.to_owned(),
            opened,
        })
    }

    /// Whether the path still names the file this store writes to.
    fn check_file(&self) -> StoreResult<()> {
        use std::os::unix::fs::MetadataExt;
        let fail = |what: &str| StoreError::Replaced {
            path: self.path.display().to_string(),
            what: what.to_owned(),
        };
        let open = self
            .opened
            .metadata()
            .map_err(|_| fail("cannot be checked"))?;
        if open.nlink() == 0 {
            return Err(fail("was deleted"));
        }
        match std::fs::metadata(&self.path) {
            Err(_) => Err(fail("was deleted")),
            Ok(now) if (now.dev(), now.ino()) != (open.dev(), open.ino()) => {
                Err(fail("was replaced by another file"))
            }
            Ok(_) => Ok(()),
        }
    }

    /// A read-only connection to the same database for another thread.
    pub fn reader(&self) -> StoreResult<SqliteReader> {
        SqliteReader::open(&self.path, &self.job_dir_suffix)
    }

    /// The outbox of this database, for the sink dispatchers.
    pub fn outbox(&self) -> StoreResult<SqliteOutbox> {
        SqliteOutbox::open(&self.path)
    }
}

/// A damaged database is an error at start-up, never an empty state.
fn check_integrity(conn: &Connection, path: &Path) -> StoreResult<()> {
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| StoreError::Damaged {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.display().to_string(),
        problem: format!(
            "the integrity check failed: {}; restore it from a backup, or move it away to start with no state",
            problems.join("; ")
        ),
    })
}

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Backend {
        store: format!("state database {}", path.display()),
        message: source.to_string(),
    }
}

impl Store for SqliteStore {
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>> {
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE state IN ('collecting', 'reconciling')"
        );
        query_datasets(&self.conn, &sql, &self.path)
    }

    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>> {
        self.check_file()?;
        // IMMEDIATE: take the write lock now, waiting (busy_timeout) for the
        // outbox's cursor writes. A deferred transaction that read first
        // would fail with "database is locked" when it came to write.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite_error(&self.path))?;
        Ok(Box::new(SqliteTx {
            tx,
            path: &self.path,
            job_dir_suffix: &self.job_dir_suffix,
            absent: HashSet::new(),
        }))
    }
}

struct SqliteTx<'a> {
    tx: Transaction<'a>,
    path: &'a Path,
    job_dir_suffix: &'a str,
    /// Keys this transaction read and found absent: written with a plain
    /// INSERT. Any other row is updated in place. Both are cheaper than an
    /// upsert (and than INSERT OR REPLACE, which deletes and re-inserts,
    /// rebalancing the B-tree every time).
    absent: HashSet<String>,
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
            u.is_some_and(|u| u.listed),
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
        params: impl rusqlite::Params,
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
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id > ?1 ORDER BY set_id LIMIT ?2"
        );
        self.query_page(&sql, params![after.unwrap_or(""), limit as i64])
    }

    fn datasets_page_by_activity(
        &self,
        active: bool,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DatasetRecord>> {
        let not = if active { "" } else { "NOT" };
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id > ?1 \
             AND {not} (state IN ('collecting', 'reconciling')) ORDER BY set_id LIMIT ?2"
        );
        self.query_page(&sql, params![after.unwrap_or(""), limit as i64])
    }

    fn recent_decisions(&self, limit: usize) -> StoreResult<Vec<DatasetRecord>> {
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE decided_ms IS NOT NULL \
             ORDER BY decided_ms DESC, set_id LIMIT ?1"
        );
        self.query_page(&sql, params![limit as i64])
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
        let sql = format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE set_id = ?1");
        let record = conn
            .query_row(&sql, [set_id], |r| Ok(dataset_from_row(r)))
            .optional()
            .map_err(sqlite_error(&self.path))?
            .transpose()?;
        let Some(record) = record else {
            return Ok(None);
        };
        // The dataset's rows: its root entry and the key range below it
        // ('0' sorts right after '/').
        let range = in_dataset!();
        let list = |condition: &str| -> StoreResult<Vec<String>> {
            let sql = format!(
                "SELECT key FROM entries WHERE {range} AND {condition} ORDER BY key LIMIT ?2"
            );
            let mut stmt = conn.prepare(&sql).map_err(sqlite_error(&self.path))?;
            let keys = stmt
                .query_map(params![dataset_dir, limit as i64], |r| {
                    r.get::<_, String>(0)
                })
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
        Ok(Some(DatasetDetail {
            record,
            missing,
            mismatched,
            unexpected,
            pending,
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

/// The outbox of one agent's database: events in commit order, and a
/// cursor per sink. Its own connection writes the cursors (a write the
/// engine never waits long for: WAL, one short statement).
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteOutbox {
    fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite_error(path))?;
        Ok(SqliteOutbox {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(sqlite_error(&self.path))
    }
}

impl Outbox for SqliteOutbox {
    fn hold(&self, _sink: &str, _ttl: std::time::Duration) -> OutboxResult<bool> {
        // Only this agent writes the database (the state directory lock).
        Ok(true)
    }

    fn pending(&self, sink: &str, limit: usize) -> OutboxResult<Vec<OutboxEvent>> {
        Ok(self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, id, set_id, detail_type, payload, created_ms FROM outbox \
                 WHERE seq > coalesce((SELECT seq FROM sink_cursors WHERE sink = ?1), 0) \
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![sink, limit as i64], |r| {
                Ok(OutboxEvent {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    set_id: r.get(2)?,
                    detail_type: r.get(3)?,
                    payload: r.get(4)?,
                    created_ms: r.get(5)?,
                })
            })?;
            rows.collect()
        })?)
    }

    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> OutboxResult<()> {
        let Some(seq) = events.iter().map(|e| e.seq).max() else {
            return Ok(());
        };
        Ok(self.with(|c| {
            c.prepare_cached(
                "INSERT INTO sink_cursors (sink, seq) VALUES (?1, ?2) \
                 ON CONFLICT(sink) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![sink, seq])
            .map(drop)
        })?)
    }
}

fn query_datasets(conn: &Connection, sql: &str, path: &Path) -> StoreResult<Vec<DatasetRecord>> {
    let mut stmt = conn.prepare(sql).map_err(sqlite_error(path))?;
    let rows = stmt
        .query_map([], |r| Ok(dataset_from_row(r)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sqlite_error(path))?;
    rows.into_iter().collect()
}

fn dataset_from_row(r: &Row<'_>) -> StoreResult<DatasetRecord> {
    let read = || -> rusqlite::Result<(DatasetRecord, String)> {
        let state: String = r.get(1)?;
        let manifest = match r.get::<_, Option<String>>(2)? {
            Some(key) => Some(ManifestRef {
                key,
                bucket: r.get(3)?,
                size: r.get::<_, i64>(4)? as u64,
                event_time: r.get(5)?,
            }),
            None => None,
        };
        let record = DatasetRecord {
            set_id: r.get(0)?,
            state: DatasetState::Collecting,
            manifest,
            manifest_loaded: r.get(6)?,
            manifest_entries: r.get::<_, i64>(7)? as u64,
            counts: Counts {
                received: r.get::<_, i64>(8)? as u64,
                matched: r.get::<_, i64>(9)? as u64,
                mismatched: r.get::<_, i64>(10)? as u64,
                ignored: r.get::<_, i64>(11)? as u64,
                rejected: r.get::<_, i64>(12)? as u64,
                unjudged: r.get::<_, i64>(19)? as u64,
                local_files: r.get::<_, i64>(20)? as u64,
                local_bytes: r.get::<_, i64>(21)? as u64,
                pending: r.get::<_, i64>(22)? as u64,
                pending_bytes: r.get::<_, i64>(23)? as u64,
            },
            first_seen_ms: r.get(13)?,
            last_seen_ms: r.get(14)?,
            manifest_seen_ms: r.get(15)?,
            deadline_ms: r.get(16)?,
            decided_ms: r.get(17)?,
            note: r.get(18)?,
            last_local_ms: r.get(24)?,
            policy_state: match (
                r.get::<_, Option<String>>(25)?,
                r.get::<_, Option<Vec<u8>>>(26)?,
            ) {
                (Some(policy), Some(value)) if !value.is_empty() => {
                    Some(PolicyState { policy, value })
                }
                _ => None,
            },
            listing_ms: r.get(27)?,
            listed_entries: r.get::<_, i64>(28)? as u64,
        };
        Ok((record, state))
    };
    let (mut record, state) = read().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(p) = &record.policy_state
        && p.value.len() > POLICY_STATE_BYTES
    {
        return Err(StoreError::Corrupt(format!(
            "dataset {}: a policy state of {} bytes (at most {POLICY_STATE_BYTES})",
            record.set_id,
            p.value.len()
        )));
    }
    record.state = DatasetState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("dataset state {state:?}")))?;
    Ok(record)
}

fn entry_from_row(r: &Row<'_>) -> StoreResult<EntryRecord> {
    let read = || -> rusqlite::Result<(EntryRecord, Option<i64>)> {
        let verdict: Option<i64> = r.get(6)?;
        let key: String = r.get(0)?;
        let upload = match r.get::<_, Option<i64>>(4)? {
            Some(size) => Some(UploadRecord {
                object_key: r
                    .get::<_, Option<String>>(2)?
                    .unwrap_or_else(|| key.clone()),
                bucket: r.get(3)?,
                size: size as u64,
                event_time: r.get(5)?,
                verdict: Verdict::Count,
                matched: r.get(7)?,
                modified: r.get(10)?,
                listed: r.get(15)?,
            }),
            None => None,
        };
        let local = match r.get::<_, Option<i64>>(11)? {
            Some(size) => Some(LocalFile {
                size: size as u64,
                mtime: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
                is_dir: r.get::<_, Option<bool>>(13)?.unwrap_or(false),
                seen_ms: r.get::<_, Option<i64>>(14)?.unwrap_or(0),
            }),
            None => None,
        };
        let in_manifest: bool = r.get(8)?;
        let expected_size: Option<i64> = r.get(9)?;
        let entry = EntryRecord {
            key,
            set_id: r.get(1)?,
            upload,
            expected: in_manifest.then_some(expected_size.map(|s| s as u64)),
            local,
        };
        Ok((entry, verdict))
    };
    let (mut entry, verdict) = read().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let (Some(upload), Some(code)) = (entry.upload.as_mut(), verdict) {
        upload.verdict = Verdict::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("verdict {code}")))?;
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_store_contract() {
        use super::super::conformance::{self, Backend, Opened};
        use std::sync::Arc;
        conformance::run(&Backend {
            name: "sqlite",
            shared: false,
            fresh: Box::new(|| {
                let dir = Arc::new(tempfile::tempdir().unwrap());
                Box::new(move || {
                    let store =
                        SqliteStore::open(dir.path(), SyncMode::Normal, "-vaultjob").unwrap();
                    Opened {
                        reader: Arc::new(store.reader().unwrap()),
                        outbox: Arc::new(store.outbox().unwrap()),
                        store: Box::new(store),
                    }
                })
            }),
        });
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SyncMode::Normal, "-vaultjob").unwrap();
        (dir, store)
    }

    fn sample_entry(key: &str, size: u64) -> EntryRecord {
        EntryRecord {
            key: key.into(),
            set_id: "S".into(),
            upload: Some(UploadRecord {
                object_key: format!("{key}/"),
                bucket: "b".into(),
                size,
                event_time: 1_619_863_200,
                verdict: Verdict::Ignore,
                matched: true,
                modified: Some(1_619_863_100),
                listed: false,
            }),
            expected: Some(None),
            local: Some(LocalFile {
                size,
                mtime: 5,
                is_dir: false,
                seen_ms: 6,
            }),
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let (dir, mut store) = open();
        let mut ds = DatasetRecord::new("S", 5);
        ds.state = DatasetState::Reconciling;
        ds.manifest = Some(ManifestRef {
            key: "S-vaultjob/S.manifest".into(),
            bucket: "b".into(),
            size: 42,
            event_time: 7,
        });
        ds.counts.matched = 3;
        ds.note = Some("waiting".into());
        let mut tx = store.begin().unwrap();
        tx.put_dataset(&ds).unwrap();
        tx.put_entry(&sample_entry("S-vaultjob/d", 9)).unwrap();
        tx.add_counter("outside", 2).unwrap();
        tx.add_counter("outside", 3).unwrap();
        tx.commit().unwrap();
        drop(store);

        let mut store = SqliteStore::open(dir.path(), SyncMode::Full, "-vaultjob").unwrap();
        assert_eq!(store.open_datasets().unwrap(), vec![ds.clone()]);
        let mut tx = store.begin().unwrap();
        assert_eq!(
            tx.entry("S", "S-vaultjob/d").unwrap(),
            Some(sample_entry("S-vaultjob/d", 9))
        );
        assert_eq!(tx.entry("S", "S-vaultjob/e").unwrap(), None);
        drop(tx);
        let reader = store.reader().unwrap();
        assert_eq!(reader.counters().unwrap(), vec![("outside".to_string(), 5)]);
    }

    #[test]
    fn uncommitted_work_is_rolled_back() {
        let (_dir, mut store) = open();
        let mut tx = store.begin().unwrap();
        tx.put_dataset(&DatasetRecord::new("S", 1)).unwrap();
        drop(tx);
        assert!(store.open_datasets().unwrap().is_empty());
    }

    #[test]
    fn outbox_is_idempotent_by_id_and_cursors_only_advance() {
        let (_dir, mut store) = open();
        let ev = OutboxEvent {
            seq: 0,
            id: "e1".into(),
            set_id: "S".into(),
            detail_type: "File Upload Reconciliation Successful".into(),
            payload: "{}".into(),
            created_ms: 1,
        };
        let mut tx = store.begin().unwrap();
        let a = tx.push_event(&ev).unwrap();
        let b = tx.push_event(&ev).unwrap();
        assert_eq!(a, b);
        tx.commit().unwrap();
        let outbox = store.outbox().unwrap();
        let pending = outbox.pending("file", 10).unwrap();
        assert_eq!(pending.len(), 1);
        outbox.delivered("file", &pending).unwrap();
        let mut old = pending[0].clone();
        old.seq = 0;
        outbox.delivered("file", &[old]).unwrap();
        assert!(outbox.pending("file", 10).unwrap().is_empty());
        assert_eq!(outbox.pending("stdout", 10).unwrap()[0].seq, a);
    }

    #[test]
    fn older_files_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE datasets (set_id TEXT PRIMARY KEY, state TEXT NOT NULL, manifest_key TEXT, \
             manifest_bucket TEXT, manifest_size INTEGER, manifest_event_time INTEGER, \
             manifest_loaded INTEGER NOT NULL, manifest_entries INTEGER NOT NULL, received INTEGER NOT NULL, \
             matched INTEGER NOT NULL, mismatched INTEGER NOT NULL, ignored INTEGER NOT NULL, \
             rejected INTEGER NOT NULL, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, \
             manifest_seen_ms INTEGER, deadline_ms INTEGER, decided_ms INTEGER, note TEXT) WITHOUT ROWID;
             CREATE TABLE entries (key TEXT PRIMARY KEY, set_id TEXT NOT NULL, object_key TEXT, bucket TEXT, \
             size INTEGER, event_time INTEGER, verdict INTEGER, matched INTEGER NOT NULL DEFAULT 0, \
             in_manifest INTEGER NOT NULL DEFAULT 0, expected_size INTEGER) WITHOUT ROWID;
             INSERT INTO datasets VALUES ('S', 'collecting', NULL, NULL, NULL, NULL, 0, 0, 1, 0, 0, 0, 0, 1, 1, NULL, NULL, NULL, NULL);
             INSERT INTO entries VALUES ('S-vaultjob/a', 'S', NULL, 'b', 3, 7, 0, 0, 0, NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal, "-vaultjob").unwrap();
        assert_eq!(store.open_datasets().unwrap()[0].counts.received, 1);
        let mut tx = store.begin().unwrap();
        let row = tx.entry("S", "S-vaultjob/a").unwrap().unwrap();
        assert_eq!(row.upload.as_ref().map(|u| u.size), Some(3));
        tx.put_entry(&sample_entry("S-vaultjob/b", 1)).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = open();
        store
            .conn
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        drop(store);
        let err = SqliteStore::open(dir.path(), SyncMode::Full, "-vaultjob")
            .err()
            .unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
