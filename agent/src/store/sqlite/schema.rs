//! The schema, and the migrations that bring older files to it.

use rusqlite::Connection;

/// Bumped whenever the schema changes; older agents refuse newer files.
pub(super) const SCHEMA_VERSION: i64 = 7;

pub(super) const SCHEMA: &str = "
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
    listing_ms INTEGER, listed_entries INTEGER NOT NULL DEFAULT 0,
    verified INTEGER NOT NULL DEFAULT 0, verified_bytes INTEGER NOT NULL DEFAULT 0,
    content_mismatch INTEGER NOT NULL DEFAULT 0, unverifiable INTEGER NOT NULL DEFAULT 0
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
    listed INTEGER NOT NULL DEFAULT 0,
    content TEXT
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

/// SQL for "this entry exists locally and the cloud has not confirmed it".
pub const PENDING_SQL: &str = "local_size IS NOT NULL AND NOT (size IS NOT NULL AND \
    (local_dir = 1 OR (size = local_size AND coalesce(modified, event_time) >= local_mtime)))";

/// One step of the way from an older schema to the current one.
pub(super) struct Migration {
    /// The version this step brings a file to.
    pub to: i64,
    /// What the version added, for the log line.
    pub what: &'static str,
    pub sql: &'static str,
}

/// Every step since schema version 1, in order: a file at version `v`
/// takes each step with `to > v`. Each version has a fixture in
/// `fixtures/` that the tests migrate.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        what: "uploads a failed policy call left unjudged",
        sql: "ALTER TABLE datasets ADD COLUMN unjudged INTEGER NOT NULL DEFAULT 0;",
    },
    Migration {
        to: 3,
        what: "entries without the set-id their key determines",
        sql: "ALTER TABLE entries DROP COLUMN set_id;",
    },
    Migration {
        to: 4,
        what: "files the share watcher saw (pending files)",
        sql: "ALTER TABLE datasets ADD COLUMN local_files INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN local_bytes INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN pending_bytes INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN last_local_ms INTEGER;
         ALTER TABLE entries ADD COLUMN modified INTEGER;
         ALTER TABLE entries ADD COLUMN local_size INTEGER;
         ALTER TABLE entries ADD COLUMN local_mtime INTEGER;
         ALTER TABLE entries ADD COLUMN local_dir INTEGER;
         ALTER TABLE entries ADD COLUMN local_seen INTEGER;",
    },
    Migration {
        to: 5,
        what: "durable per-dataset policy state",
        sql: "ALTER TABLE datasets ADD COLUMN policy_name TEXT;
         ALTER TABLE datasets ADD COLUMN policy_state BLOB;",
    },
    Migration {
        to: 6,
        what: "uploads recorded from S3 listings, and listing claims",
        sql: "ALTER TABLE datasets ADD COLUMN listing_ms INTEGER;
         ALTER TABLE datasets ADD COLUMN listed_entries INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE entries ADD COLUMN listed INTEGER NOT NULL DEFAULT 0;",
    },
    Migration {
        to: 7,
        what: "content verification (each upload's checksum against the file's)",
        sql: "ALTER TABLE datasets ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN verified_bytes INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN content_mismatch INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE datasets ADD COLUMN unverifiable INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE entries ADD COLUMN content TEXT;",
    },
];

/// Brings a file at schema version `found` to the current one, in one
/// transaction: a failed step leaves the file as it was. A new file
/// (version 0) gets the current schema directly.
pub(super) fn migrate(conn: &mut Connection, found: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    if found != 0 {
        for step in MIGRATIONS.iter().filter(|m| m.to > found) {
            tracing::info!(to = step.to, "migrating the state database: {}", step.what);
            tx.execute_batch(step.sql)?;
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    tx.commit()
}
