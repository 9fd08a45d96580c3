//! The store contract as tests: every backend passes the same suite (the
//! in-memory and SQLite ones in unit tests, DynamoDB against moto in the
//! end-to-end tests). A new backend is done when [`run`] passes on it.
//!
//! Public (but hidden) so the end-to-end crate can run it too.
#![doc(hidden)]

use std::sync::Arc;
use std::time::Duration;

use super::{
    Committed, ContentCheck, ContentOutcome, DatasetRecord, DatasetState, EntryRecord, LocalFile,
    ManifestRef, Outbox, OutboxEvent, POLICY_STATE_BYTES, PolicyState, Store, StoreError,
    StoreReader, UploadOrigin, UploadRecord, Verdict,
};

/// One backend, opened: what an agent gets from it.
pub struct Opened {
    pub store: Box<dyn Store>,
    pub reader: Arc<dyn StoreReader>,
    pub outbox: Arc<dyn Outbox>,
}

/// Opens the same storage again each time it is called (as a restarted
/// agent, or a second agent, would).
pub type Opener = Box<dyn Fn() -> Opened>;

/// What the suite needs to know about a backend.
pub struct Backend {
    pub name: &'static str,
    /// New, empty storage for each check.
    pub fresh: Box<dyn Fn() -> Opener>,
    /// Several agents may write it at once (then lost claims are checked).
    pub shared: bool,
}

/// One check: new storage, and whether the backend is shared.
type Check = fn(&Opener, bool);

/// Runs every check; panics naming the backend and the check that failed.
pub fn run(backend: &Backend) {
    let checks: &[(&str, Check)] = &[
        ("records round trip and survive reopen", records_round_trip),
        (
            "uncommitted work is rolled back",
            uncommitted_work_is_rolled_back,
        ),
        ("a transaction reads its own writes", reads_own_writes),
        (
            "queries stay inside their dataset",
            queries_stay_inside_their_dataset,
        ),
        (
            "problem lists follow the one rule",
            problem_lists_follow_the_rule,
        ),
        (
            "the outbox delivers each event once per sink",
            outbox_per_sink,
        ),
        ("claims: exactly one writer decides", one_claim_wins),
        (
            "policy state is replaced, cleared, and never lost to a concurrent writer",
            policy_state_changes,
        ),
        (
            "pages by activity and recent decisions are ordered",
            activity_orders,
        ),
        (
            "listed uploads round trip, and one writer claims a listing",
            listing_claims,
        ),
        (
            "a decision is claimed only on the committed state it read",
            decisions_on_committed_state,
        ),
        (
            "a manifest is unloaded as durably as it is loaded, and only on the one read",
            manifest_changes,
        ),
    ];
    for (name, check) in checks {
        let open = (backend.fresh)();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(&open, backend.shared)
        }));
        if let Err(e) = result {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "store conformance, {} backend: {name}: {message}",
                backend.name
            );
        }
    }
}

fn dataset(set_id: &str) -> DatasetRecord {
    let mut ds = DatasetRecord::new(set_id, 5);
    ds.state = DatasetState::Reconciling;
    ds.manifest = Some(ManifestRef {
        key: format!("{set_id}-vaultjob/{set_id}.manifest"),
        bucket: "b".into(),
        size: 42,
        event_time: 7,
    });
    ds.manifest_seen_ms = Some(6);
    ds.deadline_ms = Some(1_000_000);
    ds.note = Some("waiting".into());
    ds.policy_state = Some(PolicyState {
        policy: "marker".into(),
        value: b"seen".to_vec(),
    });
    ds
}

fn entry(set_id: &str, name: &str, verdict: Verdict) -> EntryRecord {
    let key = format!("{set_id}-vaultjob/{name}");
    EntryRecord {
        upload: Some(UploadRecord {
            object_key: key.clone(),
            bucket: "b".into(),
            size: 9,
            event_time: 1_619_863_200,
            verdict,
            matched: true,
            modified: Some(1_619_863_100),
            origin: UploadOrigin::Notified,
        }),
        expected: Some(Some(9)),
        local: Some(LocalFile {
            size: 9,
            mtime: 5,
            is_dir: false,
            seen_ms: 100,
        }),
        content: Some(ContentCheck {
            upload_time: 1_619_863_200,
            outcome: ContentOutcome::Verified,
            detail: "CRC64NVME AAAAAAAAAAA=".into(),
            at_ms: 42,
        }),
        key,
        set_id: set_id.into(),
    }
}

fn event(set_id: &str, id: &str, detail_type: &str) -> OutboxEvent {
    OutboxEvent {
        seq: 0,
        id: id.into(),
        set_id: set_id.into(),
        detail_type: detail_type.into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        created_ms: 1,
    }
}

/// Writes `entries` and their dataset, with counts that add them up.
fn commit_dataset(store: &mut dyn Store, set_id: &str, entries: &[EntryRecord]) -> Committed {
    let mut ds = dataset(set_id);
    let mut tx = store.begin().unwrap();
    for e in entries {
        tx.entry(set_id, &e.key).unwrap();
        tx.put_entry(e).unwrap();
        ds.counts += EntryRecord::contribution(Some(e));
    }
    tx.dataset(set_id).unwrap();
    tx.put_dataset(&ds).unwrap();
    tx.commit().unwrap()
}

fn records_round_trip(open: &Opener, _shared: bool) {
    let mut a = open();
    let e = entry("S", "d", Verdict::Ignore);
    let committed = commit_dataset(&mut *a.store, "S", std::slice::from_ref(&e));
    assert!(committed.lost_claims.is_empty(), "{committed:?}");
    let mut tx = a.store.begin().unwrap();
    tx.add_counter("outside_keys", 2).unwrap();
    tx.add_counter("outside_keys", 3).unwrap();
    tx.commit().unwrap();
    let counters = a.reader.counters().unwrap();
    assert!(
        counters.contains(&("outside_keys".to_owned(), 5)),
        "{counters:?}"
    );
    drop(a);

    let mut b = open();
    let mut expected = dataset("S");
    expected.counts += EntryRecord::contribution(Some(&e));
    assert_eq!(b.store.open_datasets().unwrap(), vec![expected.clone()]);
    let mut tx = b.store.begin().unwrap();
    assert_eq!(tx.entry("S", &e.key).unwrap(), Some(e.clone()));
    assert_eq!(tx.entry("S", "S-vaultjob/none").unwrap(), None);
    assert_eq!(tx.dataset("S").unwrap(), Some(expected.clone()));
    drop(tx);
    let found = b.reader.datasets().unwrap();
    assert!(found.contains(&expected), "{found:?}");
    let detail = b.reader.dataset_detail("S", 10).unwrap().unwrap();
    assert_eq!(detail.record, expected);
    assert_eq!(b.reader.dataset_detail("T", 10).unwrap(), None);
}

fn uncommitted_work_is_rolled_back(open: &Opener, _shared: bool) {
    let mut a = open();
    let mut tx = a.store.begin().unwrap();
    tx.dataset("S").unwrap();
    tx.put_dataset(&dataset("S")).unwrap();
    tx.entry("S", "S-vaultjob/a").unwrap();
    tx.put_entry(&entry("S", "a", Verdict::Count)).unwrap();
    tx.push_event(&event("S", "e1", "File Upload Reconciliation Successful"))
        .unwrap();
    drop(tx);
    assert!(a.store.open_datasets().unwrap().is_empty());
    assert_eq!(a.reader.dataset_detail("S", 10).unwrap(), None);
    assert!(a.outbox.pending("file", 10).unwrap().is_empty());
    let mut tx = a.store.begin().unwrap();
    assert_eq!(tx.entry("S", "S-vaultjob/a").unwrap(), None);
}

fn reads_own_writes(open: &Opener, _shared: bool) {
    let mut a = open();
    let mut tx = a.store.begin().unwrap();
    assert_eq!(tx.dataset("S").unwrap(), None);
    tx.put_dataset(&dataset("S")).unwrap();
    assert_eq!(tx.dataset("S").unwrap(), Some(dataset("S")));
    let e = entry("S", "a", Verdict::Count);
    assert_eq!(tx.entry("S", &e.key).unwrap(), None);
    tx.put_entry(&e).unwrap();
    assert_eq!(tx.entry("S", &e.key).unwrap(), Some(e.clone()));
    let mut changed = e.clone();
    changed.upload.as_mut().unwrap().size = 10;
    tx.put_entry(&changed).unwrap();
    assert_eq!(tx.entry("S", &e.key).unwrap(), Some(changed.clone()));
    tx.commit().unwrap();
    let mut tx = a.store.begin().unwrap();
    assert_eq!(tx.entry("S", &e.key).unwrap(), Some(changed));
}

fn queries_stay_inside_their_dataset(open: &Opener, _shared: bool) {
    let mut a = open();
    let mut stale = entry("S1", "old", Verdict::Count);
    stale.local.as_mut().unwrap().seen_ms = 10;
    let mut not_listed = entry("S1", "extra", Verdict::Count);
    not_listed.expected = None;
    let s1 = [
        entry("S1", "a", Verdict::Unjudged),
        entry("S1", "b", Verdict::Count),
        stale.clone(),
        not_listed,
    ];
    commit_dataset(&mut *a.store, "S1", &s1);
    // A set-id that extends the other's: its rows sort right after.
    let s10 = [
        entry("S10", "a", Verdict::Unjudged),
        entry("S10", "z", Verdict::Count),
    ];
    commit_dataset(&mut *a.store, "S10", &s10);
    let keys = |rows: Vec<EntryRecord>| {
        let mut keys: Vec<String> = rows.into_iter().map(|r| r.key).collect();
        keys.sort();
        keys
    };
    let mut tx = a.store.begin().unwrap();
    assert_eq!(
        keys(tx.unjudged_entries("S1", 10).unwrap()),
        ["S1-vaultjob/a"]
    );
    assert_eq!(tx.unjudged_entries("S1", 0).unwrap().len(), 0);
    assert_eq!(
        keys(tx.manifest_entries("S1").unwrap()),
        ["S1-vaultjob/a", "S1-vaultjob/b", "S1-vaultjob/old"]
    );
    assert_eq!(
        keys(tx.stale_local_entries("S1", 50).unwrap()),
        ["S1-vaultjob/old"]
    );
    assert_eq!(
        keys(tx.unjudged_entries("S10", 10).unwrap()),
        ["S10-vaultjob/a"]
    );
    drop(tx);
    let detail = a.reader.dataset_detail("S1", 10).unwrap().unwrap();
    assert_eq!(detail.record.set_id, "S1");
    assert!(detail.missing.is_empty(), "{detail:?}");
}

fn problem_lists_follow_the_rule(open: &Opener, _shared: bool) {
    let mut a = open();
    let mut missing = entry("S", "missing", Verdict::Count);
    missing.upload = None;
    missing.local = None;
    let mut mismatched = entry("S", "mismatched", Verdict::Count);
    mismatched.upload.as_mut().unwrap().matched = false;
    let mut unexpected = entry("S", "unexpected", Verdict::Count);
    unexpected.expected = None;
    let mut pending = entry("S", "pending", Verdict::Count);
    pending.local.as_mut().unwrap().size = 10;
    let mut ignored = entry("S", "ignored", Verdict::Ignore);
    ignored.expected = None;
    let rejected = entry("S", "rejected", Verdict::Reject);
    let unjudged = entry("S", "unjudged", Verdict::Unjudged);
    let mut local_dir = entry("S", "dir", Verdict::Count);
    local_dir.local.as_mut().unwrap().is_dir = true;
    local_dir.local.as_mut().unwrap().size = 4096;
    let mut bytes_differ = entry("S", "bytes-differ", Verdict::Count);
    bytes_differ.content.as_mut().unwrap().outcome = ContentOutcome::Mismatch;
    let mut no_checksum = entry("S", "no-checksum", Verdict::Count);
    no_checksum.content.as_mut().unwrap().outcome = ContentOutcome::Unverifiable;
    // A check of an older upload says nothing of the current one.
    let mut checked_before = entry("S", "checked-before", Verdict::Count);
    checked_before.content.as_mut().unwrap().outcome = ContentOutcome::Mismatch;
    checked_before.content.as_mut().unwrap().upload_time -= 1;
    let rows = [
        missing,
        mismatched,
        unexpected,
        pending,
        ignored,
        rejected,
        unjudged,
        local_dir,
        bytes_differ,
        no_checksum,
        checked_before,
    ];
    let mut tx = a.store.begin().unwrap();
    let mut ds = dataset("S");
    ds.manifest_loaded = true;
    for e in &rows {
        tx.entry("S", &e.key).unwrap();
        tx.put_entry(e).unwrap();
        ds.counts += EntryRecord::contribution(Some(e));
    }
    tx.dataset("S").unwrap();
    tx.put_dataset(&ds).unwrap();
    tx.commit().unwrap();
    let detail = a.reader.dataset_detail("S", 100).unwrap().unwrap();
    let mut sorted = rows.to_vec();
    sorted.sort_by(|x, y| x.key.cmp(&y.key));
    let expected = super::DatasetDetail::from_entries(detail.record.clone(), sorted, 100);
    assert_eq!(detail, expected);
    assert_eq!(
        expected.missing,
        [
            "S-vaultjob/missing",
            "S-vaultjob/rejected",
            "S-vaultjob/unjudged"
        ]
    );
    assert_eq!(expected.pending, ["S-vaultjob/pending"]);
    assert_eq!(expected.content_mismatch, ["S-vaultjob/bytes-differ"]);
    assert_eq!(expected.unverifiable, ["S-vaultjob/no-checksum"]);
}

fn outbox_per_sink(open: &Opener, _shared: bool) {
    let mut a = open();
    assert!(a.outbox.hold("file", Duration::from_secs(15)).unwrap());
    let first = event("S", "e1", "File Upload Reconciliation Successful");
    let second = event("T", "e2", "File Upload Reconciliation Timeout");
    let mut tx = a.store.begin().unwrap();
    // The same id again, in one transaction and in a later one: one event.
    let s1 = tx.push_event(&first).unwrap();
    tx.push_event(&first).unwrap();
    tx.commit().unwrap();
    let mut tx = a.store.begin().unwrap();
    tx.push_event(&first).unwrap();
    let s2 = tx.push_event(&second).unwrap();
    assert!(s2 > s1, "sequence numbers grow");
    tx.commit().unwrap();

    let ids = |events: &[OutboxEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let pending = a.outbox.pending("file", 10).unwrap();
    assert_eq!(ids(&pending), ["e1", "e2"]);
    assert_eq!(pending[0].payload, first.payload);
    assert_eq!(ids(&a.outbox.pending("file", 1).unwrap()), ["e1"]);
    a.outbox.delivered("file", &pending[..1]).unwrap();
    assert_eq!(ids(&a.outbox.pending("file", 10).unwrap()), ["e2"]);
    // Recording an older delivery again moves nothing back.
    a.outbox.delivered("file", &pending[..1]).unwrap();
    assert_eq!(ids(&a.outbox.pending("file", 10).unwrap()), ["e2"]);
    assert_eq!(ids(&a.outbox.pending("stdout", 10).unwrap()), ["e1", "e2"]);
    a.outbox.delivered("file", &pending[1..]).unwrap();
    assert!(a.outbox.pending("file", 10).unwrap().is_empty());
    drop(a);
    let b = open();
    assert!(b.outbox.pending("file", 10).unwrap().is_empty());
    assert_eq!(ids(&b.outbox.pending("stdout", 10).unwrap()), ["e1", "e2"]);
}

fn one_claim_wins(open: &Opener, shared: bool) {
    let mut a = open();
    commit_dataset(&mut *a.store, "S", &[entry("S", "a", Verdict::Count)]);
    // With several writers, a second agent reads the dataset undecided...
    let mut b = shared.then(open);
    let mut late = b.as_mut().map(|b| {
        let mut tx = b.store.begin().unwrap();
        let ds = tx.dataset("S").unwrap().unwrap();
        assert!(!ds.state.is_decided());
        (tx, ds)
    });
    // ...while the first decides.
    let mut tx = a.store.begin().unwrap();
    let mut ds = tx.dataset("S").unwrap().unwrap();
    ds.state = DatasetState::Succeeded;
    ds.decided_ms = Some(9);
    tx.put_dataset(&ds).unwrap();
    tx.push_event(&event(
        "S",
        "claim-a",
        "File Upload Reconciliation Successful",
    ))
    .unwrap();
    assert_eq!(tx.commit().unwrap(), Committed::default());
    assert!(a.store.open_datasets().unwrap().is_empty());
    assert_eq!(a.outbox.pending("file", 10).unwrap().len(), 1);

    let Some((mut tx, mut ds)) = late.take() else {
        return;
    };
    drop(late);
    tx.entry("S", "S-vaultjob/late").unwrap();
    tx.put_entry(&entry("S", "late", Verdict::Count)).unwrap();
    ds.state = DatasetState::TimedOut;
    ds.decided_ms = Some(10);
    tx.put_dataset(&ds).unwrap();
    tx.push_event(&event("S", "claim-b", "File Upload Reconciliation Timeout"))
        .unwrap();
    let committed = tx.commit().unwrap();
    assert_eq!(committed.lost_claims, ["S"]);
    let b = b.as_ref().unwrap();
    let pending = b.outbox.pending("file", 10).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].id, "claim-a");
    let detail = b.reader.dataset_detail("S", 10).unwrap().unwrap();
    assert_eq!(detail.record.state, DatasetState::Succeeded);
}

fn policy_state_changes(open: &Opener, shared: bool) {
    let mut a = open();
    commit_dataset(&mut *a.store, "S", &[]);
    let write = |store: &mut dyn Store, state: Option<PolicyState>| {
        let mut tx = store.begin().unwrap();
        let mut ds = tx.dataset("S").unwrap().unwrap();
        ds.policy_state = state;
        tx.put_dataset(&ds).unwrap();
        tx.commit()
    };
    // The largest value, binary.
    let big = PolicyState {
        policy: "p".into(),
        value: (0..POLICY_STATE_BYTES).map(|i| i as u8).collect(),
    };
    write(&mut *a.store, Some(big.clone())).unwrap();
    let read = |a: &Opened| a.reader.dataset_detail("S", 1).unwrap().unwrap().record;
    assert_eq!(read(&open()).policy_state, Some(big.clone()));
    write(&mut *a.store, None).unwrap();
    assert_eq!(read(&open()).policy_state, None);
    write(&mut *a.store, Some(big.clone())).unwrap();

    if !shared {
        return;
    }
    // Another agent read the state, then this one changed it: the other's
    // write must not silently replace it (its batch runs again instead).
    let mut b = open();
    let mut late = b.store.begin().unwrap();
    let mut ds = late.dataset("S").unwrap().unwrap();
    let first = PolicyState {
        policy: "p".into(),
        value: b"first".to_vec(),
    };
    write(&mut *a.store, Some(first.clone())).unwrap();
    ds.policy_state = Some(PolicyState {
        policy: "p".into(),
        value: b"second".to_vec(),
    });
    late.put_dataset(&ds).unwrap();
    match late.commit() {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a write over a concurrent state change: {other:?}"),
    }
    assert_eq!(read(&a).policy_state, Some(first));
}

fn activity_orders(open: &Opener, _shared: bool) {
    let mut a = open();
    for (set_id, state, decided_ms) in [
        ("A", DatasetState::Reconciling, None),
        ("B", DatasetState::Succeeded, Some(10)),
        ("C", DatasetState::Collecting, None),
        ("D", DatasetState::TimedOut, Some(20)),
    ] {
        let mut ds = dataset(set_id);
        ds.state = state;
        ds.decided_ms = decided_ms;
        let mut tx = a.store.begin().unwrap();
        tx.dataset(set_id).unwrap();
        tx.put_dataset(&ds).unwrap();
        tx.commit().unwrap();
    }
    let ids = |v: Vec<DatasetRecord>| v.into_iter().map(|d| d.set_id).collect::<Vec<_>>();
    let r = &a.reader;
    let gauges = r.dataset_gauges().unwrap();
    assert_eq!(gauges.totals, r.dataset_totals().unwrap());
    // Undecided: A and C (a backend may read C, which has a manifest, as
    // reconciling); decided ones only where the backend lists them.
    let active: u64 = gauges
        .totals
        .iter()
        .filter(|(state, _)| state == "collecting" || state == "reconciling")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(active, 2, "{gauges:?}");
    assert_eq!(
        ids(r.datasets_page_by_activity(true, None, 10).unwrap()),
        ["A", "C"]
    );
    assert_eq!(
        ids(r.datasets_page_by_activity(true, Some("A"), 10).unwrap()),
        ["C"]
    );
    assert_eq!(
        ids(r.datasets_page_by_activity(true, None, 1).unwrap()),
        ["A"]
    );
    // A backend that lists decided datasets at all lists them in order.
    let lists_decided = r.datasets().unwrap().iter().any(|d| d.set_id == "B");
    let decided = ids(r.datasets_page_by_activity(false, None, 10).unwrap());
    let recent = ids(r.recent_decisions(10).unwrap());
    if lists_decided {
        assert_eq!(decided, ["B", "D"]);
        assert_eq!(recent, ["D", "B"]);
        assert_eq!(ids(r.recent_decisions(1).unwrap()), ["D"]);
    } else {
        assert!(
            decided.is_empty() && recent.is_empty(),
            "{decided:?} {recent:?}"
        );
    }
}

fn listing_claims(open: &Opener, shared: bool) {
    let mut a = open();
    let mut listed = entry("S", "a", Verdict::Count);
    listed.upload.as_mut().unwrap().origin = UploadOrigin::Listed;
    commit_dataset(&mut *a.store, "S", std::slice::from_ref(&listed));
    let claim = |store: &mut dyn Store, at: i64| {
        let mut tx = store.begin().unwrap();
        let mut ds = tx.dataset("S").unwrap().unwrap();
        ds.listing_ms = Some(at);
        ds.listed_entries += 1;
        tx.put_dataset(&ds).unwrap();
        tx.commit()
    };
    claim(&mut *a.store, 100).unwrap();
    let mut tx = a.store.begin().unwrap();
    assert_eq!(tx.entry("S", &listed.key).unwrap(), Some(listed.clone()));
    let ds = tx.dataset("S").unwrap().unwrap();
    assert_eq!((ds.listing_ms, ds.listed_entries), (Some(100), 1));
    drop(tx);
    if !shared {
        return;
    }
    // Two agents read the same claim; the first to claim anew wins, the
    // other's batch runs again (and then sees the new claim).
    let mut b = open();
    let mut late = b.store.begin().unwrap();
    let mut ds = late.dataset("S").unwrap().unwrap();
    claim(&mut *a.store, 200).unwrap();
    ds.listing_ms = Some(201);
    late.put_dataset(&ds).unwrap();
    match late.commit() {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a second claim over a concurrent one: {other:?}"),
    }
    let mut tx = b.store.begin().unwrap();
    let ds = tx.dataset("S").unwrap().unwrap();
    assert_eq!((ds.listing_ms, ds.listed_entries), (Some(200), 2));
}

/// Observed with two agents on DynamoDB: A decided `Successful` on counters
/// read before B committed an upload the manifest does not list.
fn decisions_on_committed_state(open: &Opener, shared: bool) {
    let mut a = open();
    commit_dataset(&mut *a.store, "S", &[entry("S", "a", Verdict::Count)]);
    // A reads the dataset and records its last file...
    let mut tx = a.store.begin().unwrap();
    let mut ds = tx.dataset("S").unwrap().unwrap();
    let last = entry("S", "b", Verdict::Count);
    tx.entry("S", &last.key).unwrap();
    tx.put_entry(&last).unwrap();
    ds.counts += EntryRecord::contribution(Some(&last));
    if shared {
        // ...while B commits an upload nobody expected.
        let mut b = open();
        let mut other = b.store.begin().unwrap();
        let mut seen = other.dataset("S").unwrap().unwrap();
        let mut stray = entry("S", "stray", Verdict::Count);
        stray.expected = None;
        other.entry("S", &stray.key).unwrap();
        other.put_entry(&stray).unwrap();
        seen.counts += EntryRecord::contribution(Some(&stray));
        other.put_dataset(&seen).unwrap();
        other.commit().unwrap();
    }
    // A decides on what it read.
    ds.state = DatasetState::Succeeded;
    ds.decided_ms = Some(9);
    tx.put_dataset(&ds).unwrap();
    tx.push_event(&event(
        "S",
        "stale",
        "File Upload Reconciliation Successful",
    ))
    .unwrap();
    let committed = tx.commit().unwrap();
    let mut tx = a.store.begin().unwrap();
    let now = tx.dataset("S").unwrap().unwrap();
    drop(tx);
    if !shared {
        // One writer: what it read is what committed.
        assert_eq!(committed, Committed::default());
        assert_eq!(now.state, DatasetState::Succeeded);
        return;
    }
    assert_eq!(committed.stale_claims, ["S"], "{committed:?}");
    assert!(committed.lost_claims.is_empty(), "{committed:?}");
    assert!(!now.state.is_decided(), "claimed on a stale read: {now:?}");
    assert_eq!(now.counts.received, 3, "both uploads are recorded");
    assert!(a.outbox.pending("file", 10).unwrap().is_empty());
    assert_eq!(a.store.open_datasets().unwrap().len(), 1);
    // Decided again on the committed state, the claim holds.
    let mut tx = a.store.begin().unwrap();
    let mut ds = tx.dataset("S").unwrap().unwrap();
    ds.state = DatasetState::TimedOut;
    ds.decided_ms = Some(10);
    tx.put_dataset(&ds).unwrap();
    tx.push_event(&event("S", "fresh", "File Upload Reconciliation Timeout"))
        .unwrap();
    assert_eq!(tx.commit().unwrap(), Committed::default());
    let pending = a.outbox.pending("file", 10).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].id, "fresh");
}

/// Observed on DynamoDB: a re-sealed dataset's `manifest_loaded = false`
/// was never stored, so it was decided on its old manifest.
fn manifest_changes(open: &Opener, shared: bool) {
    let mut a = open();
    let write = |store: &mut dyn Store, change: &dyn Fn(&mut DatasetRecord)| {
        let mut tx = store.begin().unwrap();
        let mut ds = tx.dataset("S").unwrap().unwrap();
        change(&mut ds);
        tx.put_dataset(&ds).unwrap();
        tx.commit()
    };
    commit_dataset(&mut *a.store, "S", &[]);
    write(&mut *a.store, &|ds| {
        ds.manifest_loaded = true;
        ds.manifest_entries = 3;
    })
    .unwrap();
    let newer = |ds: &mut DatasetRecord| {
        let m = ds.manifest.as_mut().unwrap();
        m.event_time += 1;
        m.size += 1;
        ds.manifest_loaded = false;
        ds.manifest_entries = 0;
    };
    write(&mut *a.store, &newer).unwrap();
    let read = |store: &mut dyn Store| {
        let mut tx = store.begin().unwrap();
        tx.dataset("S").unwrap().unwrap()
    };
    let ds = read(&mut *a.store);
    assert!(
        !ds.manifest_loaded,
        "the newer manifest must unload the old"
    );
    assert_eq!(
        (ds.manifest_entries, ds.manifest.unwrap().event_time),
        (0, 8)
    );
    if !shared {
        return;
    }
    // B loads the manifest it read while A records a newer one: B's load
    // must not mark the newer manifest loaded.
    let mut b = open();
    let mut late = b.store.begin().unwrap();
    let mut ds = late.dataset("S").unwrap().unwrap();
    write(&mut *a.store, &newer).unwrap();
    ds.manifest_loaded = true;
    ds.manifest_entries = 4;
    late.put_dataset(&ds).unwrap();
    match late.commit() {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("an older manifest was loaded over a newer one: {other:?}"),
    }
    let ds = read(&mut *b.store);
    assert!(!ds.manifest_loaded, "{ds:?}");
    assert_eq!(ds.manifest.unwrap().event_time, 9);
}
