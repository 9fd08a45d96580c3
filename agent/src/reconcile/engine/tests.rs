use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::SyncMode;
use crate::reconcile::policy::ExactMatch;
use crate::store::conformance::{Opened, Opener};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{DatasetDetail, Outbox, StoreReader};

/// The backends the engine's tests run on: every one.
#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Sqlite,
    #[cfg(feature = "aws")]
    Dynamodb,
}

/// What a DynamoDB-backed test keeps alive: moto, until the test ends.
#[cfg(feature = "aws")]
type Keep = Option<crate::test_moto::Moto>;
#[cfg(not(feature = "aws"))]
type Keep = Option<()>;

/// Storage that outlives an engine: each call opens it again.
fn storage(kind: Kind, state: &Path) -> (Opener, Keep) {
    let opener: Opener = match kind {
        #[cfg(feature = "aws")]
        Kind::Dynamodb => {
            use crate::store::dynamodb::DynamoStore;
            let moto = crate::test_moto::Moto::start();
            let rt = tokio::runtime::Handle::current();
            let client = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let client = aws_sdk_dynamodb::Client::new(&moto.sdk().await);
                    crate::test_moto::create_table(&client, "vault-agent").await;
                    client
                })
            });
            let opener: Opener = Box::new(move || {
                let store = tokio::task::block_in_place(|| {
                    rt.block_on(DynamoStore::open(
                        client.clone(),
                        "vault-agent",
                        vec!["test".to_owned()],
                    ))
                })
                .unwrap();
                let reader = Arc::new(store.reader());
                Opened {
                    store: Box::new(store),
                    reader: reader.clone(),
                    outbox: reader,
                }
            });
            return (opener, Some(moto));
        }
        Kind::Memory => {
            let store = MemoryStore::new();
            Box::new(move || Opened {
                store: Box::new(store.clone()),
                reader: Arc::new(store.reader()),
                outbox: Arc::new(store.outbox()),
            })
        }
        Kind::Sqlite => {
            let state = state.to_owned();
            Box::new(move || {
                let store = SqliteStore::open(&state, SyncMode::Normal, "-vaultjob").unwrap();
                Opened {
                    reader: Arc::new(store.reader().unwrap()),
                    outbox: Arc::new(store.outbox().unwrap()),
                    store: Box::new(store),
                }
            })
        }
    };
    (opener, None)
}

struct Harness {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _keep: Keep,
    share: PathBuf,
    open: Opener,
    handle: EngineHandle,
    reader: Arc<dyn StoreReader>,
    outbox: Arc<dyn Outbox>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Harness {
    fn new(kind: Kind, deadline: Duration) -> Harness {
        Self::with_verify(kind, deadline, None)
    }

    fn with_verify(kind: Kind, deadline: Duration, verify: Option<VerifySettings>) -> Harness {
        Self::build(kind, deadline, verify, None)
    }

    /// With `verify_content` (its share is the harness's).
    fn with_content(kind: Kind, deadline: Duration, content: ContentSettings) -> Harness {
        Self::build(kind, deadline, None, Some(content))
    }

    fn build(
        kind: Kind,
        deadline: Duration,
        verify: Option<VerifySettings>,
        mut content: Option<ContentSettings>,
    ) -> Harness {
        let (share, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let share_path = share.path().to_owned();
        if let Some(c) = content.as_mut() {
            c.share = share_path.clone();
        }
        let (open, keep) = storage(kind, state.path());
        let (handle, opened, thread) = Self::start(&open, &share_path, deadline, verify, content);
        Harness {
            _dirs: (share, state),
            _keep: keep,
            share: share_path,
            open,
            handle,
            reader: opened.0,
            outbox: opened.1,
            thread: Some(thread),
        }
    }

    #[allow(clippy::type_complexity)]
    fn start(
        open: &Opener,
        share: &Path,
        deadline: Duration,
        verify: Option<VerifySettings>,
        content: Option<ContentSettings>,
    ) -> (
        EngineHandle,
        (Arc<dyn StoreReader>, Arc<dyn Outbox>),
        std::thread::JoinHandle<()>,
    ) {
        let opened = tokio::task::block_in_place(open);
        let mut settings = settings(share, deadline);
        settings.verify = verify;
        settings.content = content;
        let (engine, handle) = Engine::new(
            opened.store,
            Box::new(ExactMatch),
            settings,
            watch::channel(0).0,
        );
        (
            handle,
            (opened.reader, opened.outbox),
            std::thread::spawn(move || engine.run().unwrap()),
        )
    }

    async fn restart(&mut self, deadline: Duration) {
        self.stop().await;
        self.start_again(deadline, None);
    }

    async fn stop(&mut self) {
        self.handle.shutdown().await;
        self.thread.take().unwrap().join().unwrap();
    }

    fn start_again(&mut self, deadline: Duration, content: Option<ContentSettings>) {
        let (handle, (reader, outbox), thread) =
            Self::start(&self.open, &self.share, deadline, None, content);
        (self.handle, self.reader, self.outbox, self.thread) =
            (handle, reader, outbox, Some(thread));
    }

    fn write_dataset(&self, set_id: &str, files: &[&str]) -> Vec<String> {
        let dir = format!("{set_id}-vaultjob");
        std::fs::create_dir_all(self.share.join(&dir)).unwrap();
        let mut lines = vec![dir.clone()];
        for f in files {
            let path = self.share.join(&dir).join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f.as_bytes()).unwrap();
            let mut parent = Path::new(f).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                let line = format!("{dir}/{}", p.display());
                if !lines.contains(&line) {
                    lines.push(line);
                }
                parent = p.parent();
            }
        }
        let manifest = format!("{dir}/{set_id}.manifest");
        let mut all = lines.clone();
        all.extend(files.iter().map(|f| format!("{dir}/{f}")));
        all.push(manifest.clone());
        std::fs::write(self.share.join(&manifest), all.join("\n") + "\n").unwrap();
        all
    }

    async fn send(&self, key: &str, size: u64, time: i64) -> IngestReceipt {
        let n = Notification::Upload(ObjectUpload {
            event_id: String::new(),
            bucket: "bkt".into(),
            key: key.into(),
            size,
            event_time: time,
            modified: None,
        });
        self.handle.ingest(vec![n]).await.unwrap()
    }

    /// What the share watcher reports of a file (mtime 1 s).
    async fn local(&self, set_id: &str, entry: &str, size: u64) {
        let change = LocalChange {
            set_id: set_id.into(),
            entry: entry.into(),
            file: Some(LocalFile {
                size,
                mtime: 1,
                is_dir: false,
                seen_ms: now_ms(),
            }),
        };
        let handle = self.handle.clone();
        tokio::task::block_in_place(|| handle.blocking_local(vec![change])).unwrap();
    }

    /// (Reads block: off the async worker, for the DynamoDB backend.)
    fn dataset(&self, set_id: &str) -> Option<DatasetRecord> {
        self.detail(set_id).map(|d| d.record)
    }

    fn detail(&self, set_id: &str) -> Option<DatasetDetail> {
        tokio::task::block_in_place(|| self.reader.dataset_detail(set_id, 10).unwrap())
    }

    fn entry(&self, set_id: &str, key: &str) -> Option<EntryRecord> {
        tokio::task::block_in_place(|| {
            let mut store = (self.open)().store;
            let mut tx = store.begin().unwrap();
            tx.entry(set_id, key).unwrap()
        })
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn events(&self) -> Vec<OutboxEvent> {
        tokio::task::block_in_place(|| self.outbox.pending("test", 100).unwrap())
    }
}

fn settings(share: &Path, deadline: Duration) -> EngineSettings {
    EngineSettings {
        share_path: share.to_owned(),
        classifier: Classifier::new("-vaultjob", ".manifest"),
        deadline,
        origin: Origin {
            account: "123456789012".into(),
            region: "eu-west-1".into(),
        },
        upload_events: false,
        max_manifest_bytes: 1 << 20,
        manifest_read_timeout: Duration::from_secs(60),
        health: Health::default(),
        verify: None,
        content: None,
    }
}

/// Each test, once per backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Memory).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Sqlite).await
            })*
        }
        #[cfg(feature = "aws")]
        mod dynamodb {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Dynamodb).await
            })*
        }
    };
}

on_every_backend!(
    a_dataset_is_never_timed_out_before_its_manifest_is_read,
    a_resealed_dataset_is_decided_on_its_newest_manifest,
    out_of_order_with_duplicates_and_directory_slashes_succeeds_once,
    manifest_last_succeeds_when_it_is_read,
    newer_notification_replaces_and_stale_one_is_ignored,
    missing_file_times_out_once_at_the_deadline,
    unexpected_upload_blocks_exact_match_and_says_why,
    state_survives_a_restart,
    unreadable_manifest_is_retried_at_each_recheck,
    required_content_holds_a_mismatch_until_a_newer_upload_proves_the_file,
);

const HOUR: Duration = Duration::from_secs(3600);

async fn out_of_order_with_duplicates_and_directory_slashes_succeeds_once(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    let lines = h.write_dataset("S1", &["a/f1", "a/b/f2", "f3"]);
    let manifest = "S1-vaultjob/S1.manifest";
    // Manifest first, then everything else in a scrambled order, with
    // directory keys carrying their S3 '/', a duplicate and unrelated keys.
    h.send(manifest, 77, 100).await;
    h.wait_for("manifest load", |h| {
        h.dataset("S1").is_some_and(|d| d.manifest_loaded)
    })
    .await;
    let mut keys: Vec<String> = lines
        .iter()
        .filter(|l| l.as_str() != manifest)
        .map(|l| {
            if l.ends_with("f1") || l.ends_with("f2") || l.ends_with("f3") {
                l.clone()
            } else {
                format!("{l}/")
            }
        })
        .collect();
    keys.reverse();
    let last = keys.pop().unwrap();
    for k in &keys {
        h.send(k, 1, 100).await;
    }
    h.send(&keys[0], 1, 100).await;
    let r = h.send("unrelated/readme.txt", 1, 100).await;
    assert_eq!(r.outside, 1);
    h.send("S1-vaultjobs/x", 1, 100).await;
    let d = h.dataset("S1").unwrap();
    assert_eq!(d.state, DatasetState::Reconciling);
    assert_eq!(d.missing(), Some(1));
    assert!(h.events().is_empty(), "no event before the last file");

    h.send(&last, 1, 100).await;
    let d = h.dataset("S1").unwrap();
    assert_eq!(d.state, DatasetState::Succeeded);
    assert_eq!((d.missing(), d.unexpected()), (Some(0), Some(0)));
    let events = h.events();
    assert_eq!(events.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(v["detail-type"], "File Upload Reconciliation Successful");
    assert_eq!(v["detail"]["object-key"], manifest);
    assert_eq!(v["detail"]["object-size"], 77);
    assert_eq!(v["detail"]["event-time"], 100);

    // Late repeats change nothing.
    h.send(&last, 1, 101).await;
    h.send(manifest, 77, 102).await;
    assert_eq!(h.events().len(), 1);
}

/// Found by the history checker (under load): a complete dataset whose
/// manifest had not been read by its deadline timed out, unevaluated, with
/// no note. Here the deadline passes in the very batch that records the
/// manifest notification.
async fn a_dataset_is_never_timed_out_before_its_manifest_is_read(kind: Kind) {
    let h = Harness::new(kind, Duration::from_millis(1));
    let lines = h.write_dataset("Late", &["a", "b"]);
    for l in &lines {
        h.send(l, 1, 5).await;
    }
    h.wait_for("a decision", |h| h.events().len() == 1).await;
    let d = h.dataset("Late").unwrap();
    assert_eq!(d.state, DatasetState::Succeeded, "{d:?}");
    // An unreadable manifest still times out (after its read failed).
    h.send("Gone-vaultjob/Gone.manifest", 1, 5).await;
    let start = Instant::now();
    while h.events().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            h.dataset("Gone")
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = h.dataset("Gone").unwrap();
    assert_eq!(d.state, DatasetState::TimedOut, "{d:?}");
    assert!(d.note.unwrap().contains("cannot read manifest"));
}

/// Observed on DynamoDB: the newer manifest's `manifest_loaded = false`
/// was dropped, so the dataset went `Successful` on the old manifest
/// while the re-seal's new file was never uploaded.
async fn a_resealed_dataset_is_decided_on_its_newest_manifest(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    let lines = h.write_dataset("R1", &["a", "b"]);
    let manifest = "R1-vaultjob/R1.manifest";
    for l in lines.iter().filter(|l| !l.ends_with("/b")) {
        h.send(l, 1, 100).await;
    }
    h.wait_for("the first manifest", |h| {
        h.dataset("R1").is_some_and(|d| d.manifest_entries == 4)
    })
    .await;
    // Re-sealed with one more file; its manifest notification is newer.
    let resealed = h.write_dataset("R1", &["a", "b", "c"]);
    assert_eq!(resealed.len(), 5);
    h.send(manifest, 2, 200).await;
    h.wait_for("the newer manifest", |h| {
        h.dataset("R1")
            .is_some_and(|d| d.manifest_loaded && d.manifest_entries == 5)
    })
    .await;
    h.send("R1-vaultjob/b", 1, 100).await;
    for _ in 0..3 {
        h.handle.recheck().await.unwrap();
    }
    h.send("R1-vaultjob/b", 1, 100).await; // a batch after the re-checks
    let d = h.dataset("R1").unwrap();
    assert_eq!(d.state, DatasetState::Reconciling, "{d:?}");
    assert_eq!(d.missing(), Some(1));
    assert!(h.events().is_empty(), "decided on the old manifest");
    h.send("R1-vaultjob/c", 1, 100).await;
    h.wait_for("success", |h| h.events().len() == 1).await;
    assert_eq!(h.dataset("R1").unwrap().state, DatasetState::Succeeded);
}

async fn manifest_last_succeeds_when_it_is_read(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    let lines = h.write_dataset("S2", &["x", "y/z"]);
    for l in lines.iter().rev() {
        h.send(l, 1, 5).await;
    }
    h.wait_for("success", |h| {
        h.dataset("S2")
            .is_some_and(|d| d.state == DatasetState::Succeeded)
    })
    .await;
    assert_eq!(h.events().len(), 1);
}

async fn newer_notification_replaces_and_stale_one_is_ignored(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    h.send("S3-vaultjob/f", 10, 200).await;
    h.send("S3-vaultjob/f", 5, 100).await;
    let row = h.entry("S3", "S3-vaultjob/f").unwrap();
    assert_eq!(
        row.upload.as_ref().map(|u| (u.size, u.event_time)),
        Some((10, 200))
    );
    h.send("S3-vaultjob/f", 12, 300).await;
    let row = h.entry("S3", "S3-vaultjob/f").unwrap();
    assert_eq!(
        row.upload.as_ref().map(|u| (u.size, u.event_time)),
        Some((12, 300))
    );
    assert_eq!(h.dataset("S3").unwrap().counts.received, 1);
}

async fn missing_file_times_out_once_at_the_deadline(kind: Kind) {
    let h = Harness::new(kind, Duration::from_millis(300));
    let lines = h.write_dataset("S4", &["a", "b"]);
    for l in lines.iter().filter(|l| !l.ends_with("/b")) {
        h.send(l, 1, 5).await;
    }
    h.wait_for("manifest load", |h| {
        h.dataset("S4").is_some_and(|d| d.manifest_loaded)
    })
    .await;
    h.handle.recheck().await.unwrap();
    assert!(h.events().is_empty(), "not before the deadline");
    tokio::time::sleep(Duration::from_millis(350)).await;
    h.handle.recheck().await.unwrap();
    h.handle.recheck().await.unwrap();
    h.wait_for("timeout", |h| h.events().len() == 1).await;
    let v: serde_json::Value = serde_json::from_str(&h.events()[0].payload).unwrap();
    assert_eq!(v["detail-type"], "File Upload Reconciliation Timeout");
    let d = h.dataset("S4").unwrap();
    assert_eq!(d.state, DatasetState::TimedOut);
    assert!(
        d.note
            .unwrap()
            .contains("1 of 4 manifest entries not uploaded yet")
    );
    // Arriving after the timeout changes nothing.
    h.send("S4-vaultjob/b", 1, 5).await;
    assert_eq!(h.events().len(), 1);
}

async fn unexpected_upload_blocks_exact_match_and_says_why(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    let lines = h.write_dataset("S5", &["a"]);
    // The stray first: had the manifest been read with every entry in and
    // nothing unexpected yet, exact-match would (rightly) have succeeded.
    h.send("S5-vaultjob/.nfs000000001234", 1, 5).await;
    for l in &lines {
        h.send(l, 1, 5).await;
    }
    h.wait_for("manifest load", |h| {
        h.dataset("S5").is_some_and(|d| d.manifest_loaded)
    })
    .await;
    h.handle.recheck().await.unwrap();
    let d = h.dataset("S5").unwrap();
    assert_eq!(d.state, DatasetState::Reconciling);
    assert_eq!(d.unexpected(), Some(1));
    assert_eq!(d.note.as_deref(), Some("1 uploads are not in the manifest"));
    let detail = h.detail("S5").unwrap();
    assert_eq!(detail.unexpected, ["S5-vaultjob/.nfs000000001234"]);
}

async fn state_survives_a_restart(kind: Kind) {
    let mut h = Harness::new(kind, HOUR);
    let lines = h.write_dataset("S6", &["a", "b"]);
    let (last, rest) = lines.split_last().unwrap();
    for l in rest {
        h.send(l, 1, 5).await;
    }
    h.restart(HOUR).await;
    // The manifest arrives after the restart; earlier uploads still count.
    h.send(last, 1, 5).await;
    h.wait_for("success", |h| {
        h.dataset("S6")
            .is_some_and(|d| d.state == DatasetState::Succeeded)
    })
    .await;
    assert_eq!(h.events().len(), 1);
    h.restart(HOUR).await;
    h.handle.recheck().await.unwrap();
    assert_eq!(h.events().len(), 1);
}

async fn unreadable_manifest_is_retried_at_each_recheck(kind: Kind) {
    let h = Harness::new(kind, HOUR);
    h.send("S7-vaultjob/S7.manifest", 1, 5).await;
    h.wait_for("read attempt", |h| {
        h.dataset("S7").is_some_and(|d| d.note.is_some())
    })
    .await;
    assert!(
        h.dataset("S7")
            .unwrap()
            .note
            .unwrap()
            .starts_with("cannot read manifest")
    );
    h.write_dataset("S7", &[]);
    h.handle.recheck().await.unwrap();
    h.wait_for("manifest load", |h| {
        h.dataset("S7").is_some_and(|d| d.manifest_loaded)
    })
    .await;
    h.send("S7-vaultjob/", 0, 5).await;
    h.wait_for("success", |h| {
        h.dataset("S7")
            .is_some_and(|d| d.state == DatasetState::Succeeded)
    })
    .await;
}

/// Lists from a fixed table; a prefix it lacks hangs forever (a
/// listing that never answers).
struct TableLister(HashMap<String, Vec<ListedObject>>);

impl listing::PrefixLister for TableLister {
    fn list<'a>(&'a self, _bucket: &'a str, prefix: &'a str) -> listing::ListingFuture<'a> {
        let found = self.0.get(prefix).cloned();
        Box::pin(async move {
            match found {
                Some(objects) => Ok(objects),
                None => std::future::pending().await,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_heals_its_dataset_and_a_hung_one_holds_only_its_own_for_one_recheck() {
    let object = |key: &str| ListedObject {
        key: key.into(),
        size: 1,
        last_modified_ms: 5_000,
    };
    let lister = TableLister(HashMap::from([(
        "Heals-vaultjob/".to_owned(),
        vec![object("Heals-vaultjob/"), object("Heals-vaultjob/b")],
    )]));
    let verify = VerifySettings {
        lister: Arc::new(lister),
        periodic: None,
        recheck: Duration::from_millis(200),
        hung_after: Duration::from_millis(200),
        default_bucket: None,
        share: None,
    };
    let h = Harness::with_verify(Kind::Sqlite, Duration::from_millis(100), Some(verify));
    for set_id in ["Heals", "Hangs"] {
        let lines = h.write_dataset(set_id, &["a", "b"]);
        // The watcher saw the file on the share, so S3's copy can be
        // compared with it.
        h.local(set_id, &format!("{set_id}-vaultjob/b"), 1).await;
        for l in lines.iter().filter(|l| !l.ends_with("/b")) {
            h.send(l, 1, 5).await;
        }
    }
    // Re-checks until both are decided (generously: a busy machine).
    let start = Instant::now();
    while h.events().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            h.events()
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcome = |set_id: &str| h.dataset(set_id).unwrap();
    let heals = outcome("Heals");
    assert_eq!(heals.state, DatasetState::Succeeded);
    assert_eq!(heals.listed_entries, 1);
    let entry = h.entry("Heals", "Heals-vaultjob/b").unwrap();
    assert!(entry.upload.unwrap().origin.is_listed());
    let hangs = outcome("Hangs");
    assert_eq!(hangs.state, DatasetState::TimedOut);
    // Its listing gave up, or the re-check came first: either way it
    // waited one re-check and says why.
    let note = hangs.note.clone().unwrap();
    assert!(
        note.contains("S3 listing") && note.contains("within"),
        "{note}"
    );
    let claimed = hangs.listing_ms.unwrap();
    assert!(hangs.decided_ms.unwrap() >= claimed + 200, "{hangs:?}");
}

/// Lists what it holds now (tests change it between listings), each
/// listing taking `delay`.
struct SharedLister {
    objects: std::sync::Mutex<HashMap<String, Vec<ListedObject>>>,
    delay: Duration,
}

impl listing::PrefixLister for Arc<SharedLister> {
    fn list<'a>(&'a self, _bucket: &'a str, prefix: &'a str) -> listing::ListingFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(self
                .objects
                .lock()
                .unwrap()
                .get(prefix)
                .cloned()
                .unwrap_or_default())
        })
    }
}

fn periodic(lister: &Arc<SharedLister>, recheck: Duration) -> VerifySettings {
    VerifySettings {
        lister: Arc::new(lister.clone()),
        periodic: Some((Duration::ZERO, Duration::ZERO)),
        recheck,
        hung_after: recheck,
        default_bucket: Some("bkt".into()),
        share: None,
    }
}

fn object(key: &str, size: u64) -> ListedObject {
    ListedObject {
        key: key.into(),
        size,
        last_modified_ms: 5_000,
    }
}

/// Observed: a 100-byte partial copy of a 1 MiB file, never notified,
/// was recorded from the listing and the dataset went `Successful`; and
/// a listed record was never replaced once S3 held the whole object.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_copy_in_s3_is_not_counted_until_the_whole_file_is_listed() {
    let lister = Arc::new(SharedLister {
        objects: Default::default(),
        delay: Duration::ZERO,
    });
    let h = Harness::with_verify(
        Kind::Sqlite,
        HOUR,
        Some(periodic(&lister, Duration::from_secs(60))),
    );
    let lines = h.write_dataset("Part", &["a", "big"]);
    h.local("Part", "Part-vaultjob/big", 1 << 20).await;
    for l in lines.iter().filter(|l| !l.ends_with("/big")) {
        h.send(l, 1, 5).await;
    }
    let listing = |big: u64| {
        lister.objects.lock().unwrap().insert(
            "Part-vaultjob/".into(),
            vec![
                object("Part-vaultjob/", 0),
                object("Part-vaultjob/big", big),
            ],
        );
    };
    listing(100);
    let start = Instant::now();
    while !h
        .dataset("Part")
        .and_then(|d| d.note)
        .is_some_and(|n| n.contains("partial or stale in S3"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            h.dataset("Part")
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        h.handle.recheck().await.unwrap();
    }
    h.send("Part-vaultjob/a", 1, 5).await; // a batch after the re-checks
    let d = h.dataset("Part").unwrap();
    assert_eq!(d.state, DatasetState::Reconciling, "{d:?}");
    assert!(
        d.note
            .unwrap()
            .contains("Part-vaultjob/big (S3 holds 100 bytes, the share 1048576)")
    );
    assert!(
        h.entry("Part", "Part-vaultjob/big")
            .unwrap()
            .upload
            .is_none()
    );
    assert!(h.events().is_empty(), "a partial copy was counted");
    // The gateway finishes the upload: the next listing counts it.
    listing(1 << 20);
    let start = Instant::now();
    while h.events().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            h.dataset("Part")
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = h.dataset("Part").unwrap();
    assert_eq!((d.state, d.listed_entries), (DatasetState::Succeeded, 1));
    let big = h
        .entry("Part", "Part-vaultjob/big")
        .unwrap()
        .upload
        .unwrap();
    assert_eq!((big.size, big.origin), (1 << 20, UploadOrigin::Listed));
}

/// Observed: beside 10 idle datasets listed periodically, a dataset S3
/// held completely timed out, "the S3 listing of the dataset did not
/// finish within one re-check": each re-check claimed every dataset
/// again while its listing was still queued, and dropped each result
/// whose claim had been replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_backlog_never_drops_a_result_and_deadline_listings_go_first() {
    let lister = Arc::new(SharedLister {
        objects: Default::default(),
        delay: Duration::from_millis(50),
    });
    let h = Harness::with_verify(
        Kind::Sqlite,
        Duration::from_millis(300),
        Some(periodic(&lister, Duration::from_millis(400))),
    );
    for i in 0..10 {
        // Idle: their manifest never arrives.
        h.send(&format!("Idle{i}-vaultjob/x"), 1, 5).await;
    }
    let lines = h.write_dataset("Whole", &["a", "b"]);
    h.local("Whole", "Whole-vaultjob/b", 1).await;
    lister.objects.lock().unwrap().insert(
        "Whole-vaultjob/".into(),
        lines
            .iter()
            .map(|l| {
                let key = if l.ends_with("-vaultjob") {
                    format!("{l}/")
                } else {
                    l.clone()
                };
                object(&key, if l.ends_with(".manifest") { 2 } else { 1 })
            })
            .collect(),
    );
    for l in lines.iter().filter(|l| !l.ends_with("/b")) {
        h.send(l, if l.ends_with(".manifest") { 2 } else { 1 }, 5)
            .await;
    }
    // Re-checks far more often than a listing takes.
    let start = Instant::now();
    while h.events().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            h.dataset("Whole")
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = h.dataset("Whole").unwrap();
    assert_eq!(d.state, DatasetState::Succeeded, "{d:?}");
    assert_eq!(h.events().len(), 1);
}

/// A store whose commits fail while `down` is set (a store outage).
struct Outage {
    inner: MemoryStore,
    down: Arc<std::sync::atomic::AtomicBool>,
}

struct OutageTx<'a> {
    inner: Box<dyn StoreTx + 'a>,
    down: bool,
}

impl Store for Outage {
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>> {
        self.inner.open_datasets()
    }
    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>> {
        let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(OutageTx {
            inner: self.inner.begin()?,
            down,
        }))
    }
}

impl StoreTx for OutageTx<'_> {
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>> {
        self.inner.dataset(set_id)
    }
    fn put_dataset(&mut self, dataset: &DatasetRecord) -> StoreResult<()> {
        self.inner.put_dataset(dataset)
    }
    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>> {
        self.inner.entry(set_id, key)
    }
    fn put_entry(&mut self, entry: &EntryRecord) -> StoreResult<()> {
        self.inner.put_entry(entry)
    }
    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>> {
        self.inner.unjudged_entries(set_id, limit)
    }
    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
        self.inner.manifest_entries(set_id)
    }
    fn stale_local_entries(&mut self, set_id: &str, before: i64) -> StoreResult<Vec<EntryRecord>> {
        self.inner.stale_local_entries(set_id, before)
    }
    fn push_event(&mut self, event: &OutboxEvent) -> StoreResult<i64> {
        self.inner.push_event(event)
    }
    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()> {
        self.inner.add_counter(name, delta)
    }
    fn commit(self: Box<Self>) -> StoreResult<Committed> {
        if self.down {
            return Err(StoreError::Backend {
                store: "test".into(),
                message: "the store is down".into(),
            });
        }
        self.inner.commit()
    }
}

/// Found by the history checker: what the share watcher saw was lost
/// with a batch the store failed to commit (the watcher does not send
/// it again), so a listing could not compare S3's copy with the file.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_watcher_saw_survives_a_failed_batch() {
    let memory = MemoryStore::new();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let share = tempfile::tempdir().unwrap();
    let (engine, handle) = Engine::new(
        Box::new(Outage {
            inner: memory.clone(),
            down: down.clone(),
        }),
        Box::new(ExactMatch),
        settings(share.path(), HOUR),
        watch::channel(0).0,
    );
    let thread = std::thread::spawn(move || engine.run().unwrap());
    let change = LocalChange {
        set_id: "Down".into(),
        entry: "Down-vaultjob/a".into(),
        file: Some(LocalFile {
            size: 5,
            mtime: 1,
            is_dir: false,
            seen_ms: 1,
        }),
    };
    let h = handle.clone();
    tokio::task::block_in_place(|| h.blocking_local(vec![change])).unwrap();
    // A batch that fails: the store is down.
    assert!(handle.ingest(Vec::new()).await.is_err());
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    handle.recheck().await.unwrap();
    handle.ingest(Vec::new()).await.unwrap();
    let reader = memory.reader();
    let d = tokio::task::block_in_place(|| reader.dataset_detail("Down", 10).unwrap());
    let d = d.expect("the observation was recorded once the store was back");
    assert_eq!(d.record.counts.local_bytes, 5);
    handle.shutdown().await;
    thread.join().unwrap();
}

/// S3's checksums of objects, from a table a test changes (S3 itself is
/// asked in the e2e tests, on moto).
#[derive(Default)]
struct TableHeads(std::sync::Mutex<HashMap<String, content::ObjectChecksums>>);

impl TableHeads {
    /// The object at `key` holds `bytes`, with S3's default checksum.
    fn put(&self, key: &str, bytes: &[u8]) {
        let crc = crate::checksum::of_bytes(crate::checksum::Algorithm::Crc64Nvme, bytes);
        self.0.lock().unwrap().insert(
            key.to_owned(),
            content::ObjectChecksums {
                size: bytes.len() as u64,
                checksums: vec![(crate::checksum::Algorithm::Crc64Nvme, crc)],
                checksum_type: Some("FULL_OBJECT".into()),
            },
        );
    }
}

impl content::ObjectHeads for Arc<TableHeads> {
    fn head<'a>(&'a self, _bucket: &'a str, key: &'a str) -> content::HeadFuture<'a> {
        let found = self.0.lock().unwrap().get(key).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// `required` content checks of dataset `set_id` (files `a`, `d/b`) whose
/// `a` S3 holds with other bytes of the same size, once every file is
/// checked: every name is there, the count says complete, the bytes say no.
async fn a_checked_dataset_with_a_mismatch(
    kind: Kind,
    set_id: &str,
) -> (Harness, Arc<TableHeads>, ContentSettings) {
    let heads = Arc::new(TableHeads::default());
    let content = ContentSettings {
        heads: Arc::new(heads.clone()),
        default: ContentMode::Required,
        routes: Vec::new(),
        share: PathBuf::new(),
        give_up_after: Duration::from_secs(5),
        claim_expires_after: Duration::from_secs(300),
    };
    let h = Harness::with_content(kind, HOUR, content.clone());
    let lines = h.write_dataset(set_id, &["a", "d/b"]);
    for line in &lines {
        let path = h.share.join(line);
        if path.is_file() {
            heads.put(line, &std::fs::read(&path).unwrap());
        }
    }
    heads.put(&format!("{set_id}-vaultjob/a"), b"x");
    for line in &lines {
        let path = h.share.join(line);
        if path.is_dir() {
            h.send(&format!("{line}/"), 0, 5).await;
        } else {
            h.send(line, std::fs::metadata(&path).unwrap().len(), 5)
                .await;
        }
    }
    h.wait_for("every file checked", |h| {
        h.dataset(set_id).is_some_and(|d| {
            d.counts.verified + d.counts.content_mismatch == d.manifest_entries
                && d.manifest_entries > 0
        })
    })
    .await;
    let content = ContentSettings {
        share: h.share.clone(),
        ..content
    };
    (h, heads, content)
}

async fn required_content_holds_a_mismatch_until_a_newer_upload_proves_the_file(kind: Kind) {
    let (h, heads, _) = a_checked_dataset_with_a_mismatch(kind, "C1").await;
    for _ in 0..3 {
        h.handle.recheck().await.unwrap();
    }
    h.wait_for("re-checked", |h| {
        h.dataset("C1").is_some_and(|d| d.note.is_some())
    })
    .await;
    let d = h.dataset("C1").unwrap();
    assert_eq!(
        d.state,
        DatasetState::Reconciling,
        "a mismatch never succeeds"
    );
    assert_eq!(
        (d.counts.content_mismatch, d.counts.matched),
        (1, d.manifest_entries)
    );
    let note = d.note.unwrap();
    assert!(note.contains("C1-vaultjob/a (CRC64NVME: S3 "), "{note}");
    assert!(h.events().is_empty());
    let a = h.entry("C1", "C1-vaultjob/a").unwrap();
    assert_eq!(a.content.unwrap().outcome, ContentOutcome::Mismatch);

    // The gateway uploads the file again: the newer upload is checked.
    heads.put("C1-vaultjob/a", b"a");
    h.send("C1-vaultjob/a", 1, 6).await;
    h.wait_for("success", |h| {
        h.dataset("C1")
            .is_some_and(|d| d.state == DatasetState::Succeeded)
    })
    .await;
    let d = h.dataset("C1").unwrap();
    assert_eq!(
        (d.counts.verified, d.counts.content_mismatch),
        (d.manifest_entries, 0)
    );
}

/// Found in review: a Timeout named the files not proven only from the
/// deciding engine's memory, so after a restart (or when another agent had
/// checked them) its note gave counts and no names. The test moves the
/// stored deadline into the past, which DynamoDB's transactions do not
/// allow (a deadline changes only with its manifest), so it runs on the
/// local backends; the names are read through `manifest_entries`, which
/// the conformance suite checks on every backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_content_timeout_names_the_files_not_proven_after_a_restart_memory() {
    a_content_timeout_names_the_files_not_proven_after_a_restart(Kind::Memory).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_timeout_names_the_files_not_proven_after_a_restart_sqlite() {
    a_content_timeout_names_the_files_not_proven_after_a_restart(Kind::Sqlite).await
}

async fn a_content_timeout_names_the_files_not_proven_after_a_restart(kind: Kind) {
    let (mut h, _heads, content) = a_checked_dataset_with_a_mismatch(kind, "C2").await;
    // A new engine, whose deadline for the dataset has passed.
    h.stop().await;
    tokio::task::block_in_place(|| {
        let mut store = (h.open)().store;
        let mut tx = store.begin().unwrap();
        let mut d = tx.dataset("C2").unwrap().unwrap();
        d.deadline_ms = Some(1);
        tx.put_dataset(&d).unwrap();
        tx.commit().unwrap();
    });
    h.start_again(HOUR, Some(content));
    let start = Instant::now();
    while h.events().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{:?}",
            h.dataset("C2")
        );
        h.handle.recheck().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = h.dataset("C2").unwrap();
    assert_eq!(d.state, DatasetState::TimedOut, "{d:?}");
    let note = d.note.unwrap();
    assert!(note.contains("1 mismatched"), "{note}");
    assert!(
        note.contains("not proven: C2-vaultjob/a (CRC64NVME: S3 "),
        "{note}"
    );
}
