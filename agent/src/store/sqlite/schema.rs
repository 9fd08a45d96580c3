//! The schema, and the migrations that bring older files to it.

/// Bumped whenever the schema changes; older agents refuse newer files.
pub(super) const SCHEMA_VERSION: i64 = 6;

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

pub(super) const DATASET_COLUMNS: &str = "set_id, state, manifest_key, manifest_bucket, manifest_size, \
    manifest_event_time, manifest_loaded, manifest_entries, received, matched, mismatched, \
    ignored, rejected, first_seen_ms, last_seen_ms, manifest_seen_ms, deadline_ms, decided_ms, note, \
    unjudged, local_files, local_bytes, pending, pending_bytes, last_local_ms, policy_name, \
    policy_state, listing_ms, listed_entries";

/// SQL for "this entry exists locally and the cloud has not confirmed it".
pub const PENDING_SQL: &str = "local_size IS NOT NULL AND NOT (size IS NOT NULL AND \
    (local_dir = 1 OR (size = local_size AND coalesce(modified, event_time) >= local_mtime)))";

/// Upgrades an older database in place (`from` is its schema version).
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
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
