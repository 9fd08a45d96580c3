//! The outbox the sink dispatchers deliver from: a cursor per sink.

use super::*;

/// The outbox of one agent's database: events in commit order, and a
/// cursor per sink. Its own connection writes the cursors (a write the
/// engine never waits long for: WAL, one short statement).
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteOutbox {
    pub(super) fn open(path: &Path) -> StoreResult<Self> {
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
            static PENDING: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq > \
                     coalesce((SELECT seq FROM sink_cursors WHERE sink = :sink), 0) \
                     ORDER BY seq LIMIT :limit"
                )
            });
            let mut stmt = c.prepare_cached(&PENDING)?;
            let params = named_params! {":sink": sink, ":limit": limit as i64};
            let rows = stmt.query_map(params, event_from_row)?;
            rows.collect()
        })?)
    }

    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> OutboxResult<()> {
        let Some(seq) = events.iter().map(|e| e.seq).max() else {
            return Ok(());
        };
        Ok(self.with(|c| {
            c.prepare_cached(
                "INSERT INTO sink_cursors (sink, seq) VALUES (:sink, :seq) \
                 ON CONFLICT(sink) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(named_params! {":sink": sink, ":seq": seq})
            .map(drop)
        })?)
    }
}
