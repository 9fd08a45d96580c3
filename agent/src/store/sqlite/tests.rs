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
