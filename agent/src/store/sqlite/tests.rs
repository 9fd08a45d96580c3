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
                let store = SqliteStore::open(dir.path(), SyncMode::Normal, "-vaultjob").unwrap();
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
            origin: UploadOrigin::Notified,
        }),
        expected: Some(None),
        local: Some(LocalFile {
            size,
            mtime: 5,
            is_dir: false,
            seen_ms: 6,
        }),
        content: Some(ContentCheck {
            upload_time: 1_619_863_200,
            outcome: ContentOutcome::Mismatch,
            detail: "CRC64NVME: S3 AAAAAAAAAAA=, the share BBBBBBBBBBB=".into(),
            at_ms: 7,
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

/// A file of every older schema version, as that version's agent wrote it.
const FIXTURES: &[(i64, &str)] = &[
    (1, include_str!("fixtures/v1.sql")),
    (2, include_str!("fixtures/v2.sql")),
    (3, include_str!("fixtures/v3.sql")),
    (4, include_str!("fixtures/v4.sql")),
    (5, include_str!("fixtures/v5.sql")),
    (6, include_str!("fixtures/v6.sql")),
];

#[test]
fn every_older_schema_version_has_a_fixture_and_a_migration() {
    let versions: Vec<i64> = FIXTURES.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..SCHEMA_VERSION).collect::<Vec<_>>());
    let steps: Vec<i64> = MIGRATIONS.iter().map(|m| m.to).collect();
    assert_eq!(steps, (2..=SCHEMA_VERSION).collect::<Vec<_>>());
}

/// Each table's columns as (name, type, not null, default), by name.
fn columns_of(conn: &Connection) -> Vec<(String, String, String, bool, Option<String>)> {
    let mut stmt = conn
        .prepare(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.dflt_value FROM sqlite_schema m, \
             pragma_table_info(m.name) p WHERE m.type = 'table' ORDER BY m.name, p.name",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn every_older_schema_version_migrates_with_nothing_lost() {
    let fresh = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(fresh.path(), SyncMode::Normal, "-vaultjob").unwrap());
    let current = columns_of(&Connection::open(fresh.path().join(DATABASE_FILE)).unwrap());
    for (version, fixture) in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.execute_batch(fixture).unwrap();
        drop(conn);
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal, "-vaultjob")
            .unwrap_or_else(|e| panic!("schema {version}: {e}"));
        let migrated = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        assert_eq!(
            columns_of(&migrated),
            current,
            "schema {version}: the migrated tables"
        );
        let found: i64 = migrated
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(found, SCHEMA_VERSION);

        // What the old agent recorded is all there.
        let open = store.open_datasets().unwrap();
        assert_eq!(open.len(), 1, "schema {version}");
        let ds = &open[0];
        assert_eq!(ds.state, DatasetState::Reconciling);
        assert_eq!((ds.manifest_loaded, ds.manifest_entries), (true, 2));
        assert_eq!((ds.counts.received, ds.counts.matched), (1, 1));
        assert_eq!(ds.deadline_ms, Some(1_700_000_900_000));
        assert_eq!(ds.note.as_deref(), Some("waiting for b"));
        assert_eq!(ds.manifest.as_ref().map(|m| m.size), Some(40));
        let mut tx = store.begin().unwrap();
        let a = tx.entry("S", "S-vaultjob/a").unwrap().unwrap();
        let up = a.upload.as_ref().unwrap();
        assert_eq!((up.size, up.verdict, up.matched), (3, Verdict::Count, true));
        assert_eq!(up.origin, UploadOrigin::Notified);
        assert_eq!(a.expected, Some(Some(3)));
        assert_eq!(a.set_id, "S");
        let b = tx.entry("S", "S-vaultjob/b").unwrap().unwrap();
        assert_eq!((b.upload, b.expected), (None, Some(Some(5))));
        assert_eq!(tx.manifest_entries("S").unwrap().len(), 2);
        // And the file takes today's records.
        tx.put_entry(&sample_entry("S-vaultjob/c", 1)).unwrap();
        tx.commit().unwrap();
        let outbox = store.outbox().unwrap();
        let pending = outbox.pending("file", 10).unwrap();
        assert_eq!(pending.len(), 1, "schema {version}: the undelivered event");
        assert_eq!(pending[0].id, "event-1");
        let counters = store.reader().unwrap().counters().unwrap();
        assert_eq!(counters, vec![("uploads".to_owned(), 7)]);
    }
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

/// Values are bound by position to statements that name their parameters:
/// each statement's parameters must be the columns, in `rows.rs`'s order.
#[test]
fn every_write_names_its_parameters_in_column_order() {
    let (_dir, store) = open();
    let names = |sql: &str| {
        let stmt = store.conn.prepare(sql).unwrap();
        (1..=stmt.parameter_count())
            .map(|i| stmt.parameter_name(i).unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let columns = |list: &str| {
        list.split(", ")
            .map(|c| format!(":{c}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&tx::PUT_DATASET), columns(DATASET_COLUMNS));
    assert_eq!(names(&tx::INSERT_ENTRY), columns(ENTRY_COLUMNS));
    let numbered: Vec<String> = (1..=columns(ENTRY_COLUMNS).len())
        .map(|i| format!("?{i}"))
        .collect();
    assert_eq!(names(&tx::UPDATE_ENTRY), numbered);
    assert!(
        !tx::UPDATE_ENTRY.contains("SET key") && !tx::UPDATE_ENTRY.contains(", key ="),
        "the key is never assigned: {}",
        *tx::UPDATE_ENTRY
    );
}
