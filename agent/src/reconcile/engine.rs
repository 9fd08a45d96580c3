//! The reconcile engine: the one writer of the store.
//!
//! It runs on its own thread and takes [`Command`]s from a channel. Whatever
//! is queued when it wakes up is applied in one transaction (group commit):
//! upload records, the touched datasets' counters, decisions and the events
//! they produce all commit together, and only then are the senders answered.
//! So a 202 means "recorded and reconciled", and an event is in the outbox
//! exactly when its dataset's decision is.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::listing::{self, ListedObject, ListingJob, Listings, VerifySettings};
use super::manifest::ExpectedLine;
use super::manifest_reader::{self, ManifestJob, ManifestReader, ReaderSettings};
use super::policy::{
    Decision, ExpectedEntry, Policy, PolicyState, Summary, UploadVerdict, UploadView,
};
use crate::backoff::Backoff;
use crate::health::Health;
use crate::notification::time::now_ms;
use crate::notification::{Classification, Classifier, Notification, ObjectUpload, UploadKind};
use crate::outbound::{self, Origin};
use crate::store::{
    Committed, Counts, DatasetRecord, DatasetState, EntryRecord, LocalFile, ManifestRef,
    OutboxEvent, Store, StoreError, StoreResult, StoreTx, UploadRecord, Verdict,
};
use crate::telemetry;

/// Most commands folded into one transaction.
const MAX_COMMANDS_PER_BATCH: usize = 512;
/// Commands waiting for the engine. Small on purpose: senders wait (back
/// pressure) instead of parking parsed notifications in memory.
const QUEUE_CAPACITY: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the reconcile engine has stopped")]
    Stopped,
    #[error("could not record the batch: {0}")]
    Store(String),
}

/// What a sender gets back once its notifications are committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestReceipt {
    pub accepted: usize,
    pub data: usize,
    pub manifests: usize,
    /// Keys outside any `*<job_dir_suffix>` directory: counted, ignored.
    pub outside: usize,
    /// Events of other detail-types: counted, ignored.
    pub other: usize,
}

/// A notification already classified (done by the sender's thread, so the
/// engine thread only writes).
#[derive(Clone)]
pub enum Ingested {
    Upload {
        upload: ObjectUpload,
        set_id: String,
        entry: String,
        kind: UploadKind,
    },
    Outside,
    Other,
}

pub enum Command {
    Ingest {
        items: Vec<Ingested>,
        reply: oneshot::Sender<Result<IngestReceipt, EngineError>>,
    },
    ManifestRead {
        set_id: String,
        /// The event time of the manifest notification the read was for.
        manifest_time: i64,
        result: Result<Vec<ExpectedLine>, String>,
    },
    /// What the share watcher saw: files present (with their size) or gone.
    Local { changes: Vec<LocalChange> },
    /// After a full scan of a dataset that started at `scan_started_ms`:
    /// entries not seen since are gone.
    LocalPrune {
        set_id: String,
        scan_started_ms: i64,
    },
    /// The S3 listing a dataset's claim asked for, and the share's files
    /// under the listed keys (by key), looked at right after.
    Listed {
        job: ListingJob,
        result: Result<Vec<ListedObject>, String>,
        on_share: HashMap<String, LocalFile>,
    },
    /// Periodic re-check: deadlines, manifests not yet readable, decisions.
    Tick,
    /// Commit what is queued, then stop.
    Shutdown,
}

/// One observation of the share watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalChange {
    pub set_id: String,
    /// The path relative to the share root, as a manifest line.
    pub entry: String,
    /// `None`: the path is gone.
    pub file: Option<LocalFile>,
}

/// A command's work without its reply channel: what a retry runs again.
#[derive(Clone)]
enum Step {
    Ingest(Vec<Ingested>),
    ManifestRead {
        set_id: String,
        manifest_time: i64,
        result: Result<Vec<ExpectedLine>, String>,
    },
    Local(Vec<LocalChange>),
    LocalPrune {
        set_id: String,
        scan_started_ms: i64,
    },
    Listed {
        job: ListingJob,
        result: Result<Vec<ListedObject>, String>,
        on_share: HashMap<String, LocalFile>,
    },
    Tick,
    /// Datasets whose policy calls were deferred by the policy's time budget.
    Deferred(Vec<String>),
    /// Datasets to decide again on a fresh read: the store said other
    /// writers changed them while the last batch ran.
    Revisit(Vec<String>),
}

/// How often a batch is run again after another writer changed what it
/// read ([`StoreError::Conflict`]).
const CONFLICT_RETRIES: u32 = 10;

/// The cloneable front door of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    classifier: Arc<Classifier>,
}

impl EngineHandle {
    pub fn classify(&self, notifications: Vec<Notification>) -> Vec<Ingested> {
        notifications
            .into_iter()
            .map(|n| match n {
                Notification::Other { .. } => Ingested::Other,
                Notification::Upload(upload) => match self.classifier.classify(&upload.key) {
                    Classification::Outside => Ingested::Outside,
                    Classification::Dataset {
                        set_id,
                        entry,
                        kind,
                    } => Ingested::Upload {
                        upload,
                        set_id,
                        entry,
                        kind,
                    },
                },
            })
            .collect()
    }

    /// Records notifications durably; returns once they are committed.
    pub async fn ingest(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<IngestReceipt, EngineError> {
        let rx = self.submit(self.classify(notifications)).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Queues classified items; the returned receiver resolves at commit.
    pub async fn submit(
        &self,
        items: Vec<Ingested>,
    ) -> Result<oneshot::Receiver<Result<IngestReceipt, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Ingest { items, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }

    /// For the share watcher's thread (not an async task): queues
    /// observations, waiting while the engine is busy.
    pub fn blocking_local(&self, changes: Vec<LocalChange>) -> Result<(), EngineError> {
        self.tx
            .blocking_send(Command::Local { changes })
            .map_err(|_| EngineError::Stopped)
    }

    pub fn blocking_prune(&self, set_id: String, scan_started_ms: i64) -> Result<(), EngineError> {
        self.tx
            .blocking_send(Command::LocalPrune {
                set_id,
                scan_started_ms,
            })
            .map_err(|_| EngineError::Stopped)
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub async fn tick(&self) -> Result<(), EngineError> {
        self.tx
            .send(Command::Tick)
            .await
            .map_err(|_| EngineError::Stopped)
    }

    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }

    /// False once the engine thread has stopped.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub share_path: PathBuf,
    pub classifier: Classifier,
    /// wait x iterations: how long after its manifest a dataset times out.
    pub deadline: Duration,
    pub origin: Origin,
    /// Also put the reference's per-upload events in the outbox (for sinks
    /// with `publish_upload_events`).
    pub upload_events: bool,
    /// Largest manifest read from the share.
    pub max_manifest_bytes: u64,
    /// Longest a manifest read may take before its dataset notes it as
    /// unreadable (the read is retried at a later re-check).
    pub manifest_read_timeout: Duration,
    /// Where the engine reports its progress and store failures.
    pub health: Health,
    /// `[reconcile] verify`: cross-check against S3 listings (None: off).
    pub verify: Option<VerifySettings>,
}

/// Everything the engine owns besides the store.
struct Core {
    policy: Box<dyn Policy>,
    settings: EngineSettings,
    /// Manifests being read from the share right now.
    reading: HashSet<String>,
    manifest_reader: ManifestReader,
    /// Datasets whose policy calls waited for a later batch (the policy
    /// used its time): batches of their own continue them, taking turns
    /// with batches of commands.
    deferred: HashSet<String>,
    /// The listing worker, with `[reconcile] verify`.
    listings: Option<Listings>,
    /// Why each dataset's last listing failed (for its Timeout's note).
    listing_failures: HashMap<String, String>,
    /// Datasets whose listing is queued or running: never claimed again
    /// before its result is in.
    listing_in_flight: HashSet<String>,
    /// Datasets past their deadline whose listing this agent applied.
    listed_past_deadline: HashSet<String>,
}

/// One transaction's worth of changes, acted on once committed.
#[derive(Default)]
struct Work {
    /// Datasets as this transaction left them...
    touched: HashMap<String, DatasetRecord>,
    /// ...and as it read them (`None`: new): only changed ones are written.
    as_read: HashMap<String, Option<DatasetRecord>>,
    events: Vec<OutboxEvent>,
    counters: HashMap<&'static str, i64>,
    /// (set id, manifest key, manifest event time).
    manifest_reads: Vec<(String, String, i64)>,
    /// Manifests loaded: (set id, lines, lines taking part). Logged only
    /// once committed, since a conflicting batch runs again.
    manifests_loaded: Vec<(String, usize, usize)>,
    /// Uploads applied (logged once committed).
    uploads_seen: Vec<(UploadKind, String, String, u64)>,
    /// Listings claimed: started once committed.
    listings: Vec<ListingJob>,
    /// Listings applied in this batch, by set-id.
    listed: HashMap<String, ListingOutcome>,
}

/// What applying one dataset's listing found.
struct ListingOutcome {
    objects: usize,
    recorded: u64,
    /// Objects not counted: partial or stale copies.
    partial: usize,
    /// Manifest entries S3 does not hold either.
    lacking: usize,
    /// Names what S3 lacks, for the Timeout (None: it lacks nothing).
    lacking_note: Option<String>,
}

pub struct Engine {
    store: Box<dyn Store>,
    core: Core,
    outbox: watch::Sender<i64>,
    rx: mpsc::Receiver<Command>,
    /// What the share watcher saw that a failed batch did not record: it
    /// has no sender to retry it, so the next batch does (first).
    unrecorded_local: Vec<Step>,
}

/// Most watcher observations kept for the next batch after failed ones
/// (the store is down); past that, a rescan is what recovers them.
const UNRECORDED_LOCAL_MAX: usize = 65_536;

impl Engine {
    /// Creates the engine and its handle. `outbox` is told the highest
    /// outbox sequence after each commit that added events.
    pub fn new(
        store: Box<dyn Store>,
        policy: Box<dyn Policy>,
        settings: EngineSettings,
        outbox: watch::Sender<i64>,
    ) -> (Engine, EngineHandle) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let mut policy = policy;
        let waker = tx.clone();
        // A full queue means a batch is coming anyway.
        policy.set_waker(Arc::new(move || {
            let _ = waker.try_send(Command::Tick);
        }));
        let handle = EngineHandle {
            tx: tx.clone(),
            classifier: Arc::new(settings.classifier.clone()),
        };
        let reader_settings = ReaderSettings {
            share: settings.share_path.clone(),
            max_bytes: settings.max_manifest_bytes,
            timeout: settings.manifest_read_timeout,
        };
        let listings = settings
            .verify
            .as_ref()
            .map(|v| listing::spawn(v, tx.clone()));
        let manifest_reader = manifest_reader::spawn(reader_settings, tx, settings.health.clone());
        let core = Core {
            policy,
            settings,
            reading: HashSet::new(),
            manifest_reader,
            deferred: HashSet::new(),
            listings,
            listing_failures: HashMap::new(),
            listing_in_flight: HashSet::new(),
            listed_past_deadline: HashSet::new(),
        };
        (
            Engine {
                store,
                core,
                outbox,
                rx,
                unrecorded_local: Vec::new(),
            },
            handle,
        )
    }

    /// Runs until every handle is dropped. Call on a dedicated thread.
    pub fn run(mut self) -> StoreResult<()> {
        let open = self.store.open_datasets()?.len();
        info!(open_datasets = open, "reconcile engine started");
        // Resume: re-read manifests and re-check deadlines right away.
        self.process(vec![Command::Tick]);
        // Deferred policy work runs in batches of its own, taking turns with
        // batches of commands: it always progresses, and a command never
        // waits for more than one slow policy call besides its own batch.
        let mut deferred_turn = false;
        loop {
            if !self.core.deferred.is_empty() && (deferred_turn || self.rx.is_empty()) {
                self.process(Vec::new());
                deferred_turn = false;
                continue;
            }
            deferred_turn = true;
            let mut batch = Vec::new();
            match self.rx.blocking_recv() {
                Some(first) => batch.push(first),
                None => break,
            }
            while batch.len() < MAX_COMMANDS_PER_BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|c| matches!(c, Command::Shutdown));
            self.process(batch);
            if stop {
                break;
            }
        }
        info!("reconcile engine stopped");
        Ok(())
    }

    fn process(&mut self, batch: Vec<Command>) {
        let reloaded = self.core.policy.begin_batch();
        let mut replies = Vec::new();
        let batch_len = batch.len();
        // Observations a failed batch left go first: newer ones follow.
        let mut steps = std::mem::take(&mut self.unrecorded_local);
        for cmd in batch {
            steps.push(match cmd {
                Command::Ingest { items, reply } => {
                    replies.push((reply, receipt_of(&items)));
                    Step::Ingest(items)
                }
                Command::ManifestRead {
                    set_id,
                    manifest_time,
                    result,
                } => Step::ManifestRead {
                    set_id,
                    manifest_time,
                    result,
                },
                Command::Local { changes } => Step::Local(changes),
                Command::LocalPrune {
                    set_id,
                    scan_started_ms,
                } => Step::LocalPrune {
                    set_id,
                    scan_started_ms,
                },
                Command::Listed {
                    job,
                    result,
                    on_share,
                } => {
                    self.core.listing_in_flight.remove(&job.set_id);
                    Step::Listed {
                        job,
                        result,
                        on_share,
                    }
                }
                // Re-checks queued while a batch ran are one re-check.
                Command::Tick if steps.iter().any(|s| matches!(s, Step::Tick)) => continue,
                Command::Tick => Step::Tick,
                Command::Shutdown => continue,
            });
        }
        if reloaded && !steps.iter().any(|s| matches!(s, Step::Tick)) {
            // A replaced plugin judges what its predecessor could not.
            steps.push(Step::Tick);
        }
        if steps.is_empty() && !self.core.deferred.is_empty() {
            steps.push(Step::Deferred(self.core.deferred.drain().collect()));
        }
        let health = self.core.settings.health.clone();
        health.batch_started();
        let had_recheck = steps.iter().any(|s| matches!(s, Step::Tick));
        let result = self.commit_steps(&steps, batch_len);
        health.batch_finished(had_recheck && result.is_ok());
        match result {
            Ok(revisit) => {
                health.clear("store");
                for (reply, receipt) in replies {
                    count_notifications(&receipt);
                    let _ = reply.send(Ok(receipt));
                }
                if !revisit.is_empty()
                    && let Err(e) = self.commit_steps(&[Step::Revisit(revisit)], 0)
                {
                    // The uploads are recorded; the re-check decides later.
                    warn!(error = %e, "could not decide after the batch; the next re-check will");
                }
            }
            Err(e) => {
                error!(error = %e, "could not commit a batch; its senders get an error and may retry");
                let message = e.to_string();
                health.set("store", message.clone());
                for (reply, _) in replies {
                    let _ = reply.send(Err(EngineError::Store(message.clone())));
                }
                // Manifest reads of the failed batch are lost; the next tick re-reads.
                self.core.reading.clear();
                self.keep_local(&steps);
            }
        }
    }

    /// Keeps the watcher's observations of a failed batch for the next one
    /// (the newest, if there are too many).
    fn keep_local(&mut self, steps: &[Step]) {
        let mut kept = 0;
        for step in steps.iter().rev() {
            let size = match step {
                Step::Local(changes) => changes.len(),
                Step::LocalPrune { .. } => 1,
                _ => continue,
            };
            if kept + size > UNRECORDED_LOCAL_MAX {
                error!(
                    kept,
                    "too many share observations waiting for the store; the rest are recovered by the next rescan"
                );
                break;
            }
            kept += size;
            self.unrecorded_local.push(step.clone());
        }
        self.unrecorded_local.reverse();
    }

    /// Runs `steps` in one transaction, again on fresh reads while another
    /// writer conflicts, and acts on what committed. Returns the datasets
    /// the store asks to decide again.
    fn commit_steps(&mut self, steps: &[Step], commands: usize) -> StoreResult<Vec<String>> {
        // Jittered: agents contending for the same entries fall out of step
        // instead of colliding again.
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(1280))
            .limited(CONFLICT_RETRIES);
        let started = std::time::Instant::now();
        let (committed, mut work) = loop {
            let mut work = Work::default();
            match self.apply(steps, &mut work, now_ms()) {
                Err(StoreError::Conflict(reason)) => {
                    metrics::counter!(telemetry::DYNAMODB_CONFLICTS).increment(1);
                    let attempt = backoff.attempts() + 1;
                    if attempt > 3 {
                        warn!(attempt, %reason, "batch conflicted with another agent; running it again on fresh reads");
                    } else {
                        debug!(attempt, %reason, "batch conflicted with another agent; running it again on fresh reads");
                    }
                    if !backoff.wait_blocking() {
                        return Err(StoreError::Conflict(reason));
                    }
                }
                Err(e) => return Err(e),
                Ok(committed) => break (committed, work),
            }
        };
        debug!(
            commands,
            attempts = backoff.attempts() + 1,
            ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        metrics::counter!(telemetry::BATCHES).increment(1);
        metrics::histogram!(telemetry::COMMIT_SECONDS).record(started.elapsed());
        // A claim another writer won first: the dataset stays decided, but
        // the event and its log line are the other's. A stale claim was not
        // made at all: the dataset is decided again on a fresh read.
        let unclaimed = |set_id: &String| {
            committed.lost_claims.contains(set_id) || committed.stale_claims.contains(set_id)
        };
        work.events
            .retain(|e| !(outbound::is_decision(&e.detail_type) && unclaimed(&e.set_id)));
        for set_id in &committed.stale_claims {
            work.touched.remove(set_id);
        }
        self.core.committed(&mut work);
        if let Some(max) = work.events.iter().map(|e| e.seq).max() {
            self.outbox.send_replace(max);
        }
        let mut revisit = committed.revisit;
        for set_id in committed.stale_claims {
            if !revisit.contains(&set_id) {
                revisit.push(set_id);
            }
        }
        Ok(revisit)
    }

    /// Applies one batch in one transaction: the records, the decisions
    /// (claims) and their events. See [`Store`] for the protocol.
    fn apply(&mut self, steps: &[Step], work: &mut Work, now: i64) -> StoreResult<Committed> {
        let open = if steps.iter().any(|s| matches!(s, Step::Tick)) {
            Some(self.store.open_datasets()?)
        } else {
            None
        };
        // Uploads of all queued requests are applied together in key order:
        // neighbouring keys share B-tree pages, so each page is visited once.
        let mut uploads = Vec::new();
        let mut tx = self.store.begin()?;
        // What the watcher saw.
        let entries: Vec<(&str, &str)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Local(changes) => Some(changes),
                _ => None,
            })
            .flatten()
            .map(|c| (c.set_id.as_str(), c.entry.as_str()))
            .collect();
        prefetch_entries(&mut *tx, &entries)?;
        for step in steps {
            match step {
                Step::Ingest(items) => uploads.extend(items),
                Step::ManifestRead {
                    set_id,
                    manifest_time,
                    result,
                } => {
                    self.core.apply_manifest(
                        &mut *tx,
                        work,
                        set_id,
                        *manifest_time,
                        result,
                        now,
                    )?;
                }
                Step::Tick => {
                    let open = open.as_deref().unwrap_or_default();
                    self.core.tick(&mut *tx, work, open, now)?;
                }
                Step::Deferred(set_ids) => {
                    for set_id in set_ids {
                        self.core.continue_deferred(&mut *tx, work, set_id, now)?;
                    }
                }
                Step::Revisit(set_ids) => {
                    let ids: Vec<&str> = set_ids.iter().map(String::as_str).collect();
                    tx.prefetch(&ids, &[])?;
                    for set_id in set_ids {
                        work.dataset(&mut *tx, set_id, now)?;
                    }
                }
                Step::Local(changes) => {
                    for change in changes {
                        self.core.apply_local(&mut *tx, work, change, now)?;
                    }
                }
                Step::LocalPrune {
                    set_id,
                    scan_started_ms,
                } => {
                    self.core
                        .prune_local(&mut *tx, work, set_id, *scan_started_ms, now)?;
                }
                Step::Listed {
                    job,
                    result,
                    on_share,
                } => {
                    self.core
                        .apply_listing(&mut *tx, work, job, result, on_share, now)?;
                }
            }
        }
        self.core.ingest(&mut *tx, work, uploads, now)?;
        self.core.decide_touched(work, now);
        for ds in work.touched.values() {
            if work.as_read.get(&ds.set_id).and_then(Option::as_ref) != Some(ds) {
                tx.put_dataset(ds)?;
            }
        }
        for event in &mut work.events {
            event.seq = tx.push_event(event)?;
        }
        for (name, delta) in &work.counters {
            tx.add_counter(name, *delta)?;
        }
        tx.commit()
    }
}

/// Reads ahead `entries` and their datasets (for a remote store, in one
/// round trip per 100 keys instead of one per entry).
fn prefetch_entries(tx: &mut dyn StoreTx, entries: &[(&str, &str)]) -> StoreResult<()> {
    let mut datasets: Vec<&str> = Vec::new();
    for (set_id, _) in entries {
        // Entries usually come grouped by dataset: check the last first.
        if datasets.last() != Some(set_id) && !datasets.contains(set_id) {
            datasets.push(set_id);
        }
    }
    tx.prefetch(&datasets, entries)
}

fn view<'a>(
    set_id: &'a str,
    entry: &'a str,
    up: &'a UploadRecord,
    kind: UploadKind,
) -> UploadView<'a> {
    UploadView {
        set_id,
        object_key: &up.object_key,
        entry,
        size: up.size,
        event_time: up.event_time,
        kind,
    }
}

impl Work {
    /// The dataset as this transaction sees it, loading it on first touch.
    fn dataset<'w>(
        &'w mut self,
        tx: &mut dyn StoreTx,
        set_id: &str,
        now: i64,
    ) -> StoreResult<&'w mut DatasetRecord> {
        if !self.touched.contains_key(set_id) {
            let read = tx.dataset(set_id)?;
            let ds = read
                .clone()
                .unwrap_or_else(|| DatasetRecord::new(set_id, now));
            self.as_read.insert(set_id.to_owned(), read);
            self.touched.insert(set_id.to_owned(), ds);
        }
        Ok(self.touched.get_mut(set_id).expect("inserted above"))
    }

    fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_default() += 1;
    }
}

/// Accepted notifications by kind, once committed.
fn count_notifications(receipt: &IngestReceipt) {
    for (kind, n) in [
        ("data", receipt.data),
        ("manifest", receipt.manifests),
        ("outside", receipt.outside),
        ("other", receipt.other),
    ] {
        if n > 0 {
            metrics::counter!(telemetry::NOTIFICATIONS, "kind" => kind).increment(n as u64);
        }
    }
}

fn receipt_of(items: &[Ingested]) -> IngestReceipt {
    let mut receipt = IngestReceipt {
        accepted: items.len(),
        ..Default::default()
    };
    for item in items {
        match item {
            Ingested::Outside => receipt.outside += 1,
            Ingested::Other => receipt.other += 1,
            Ingested::Upload {
                kind: UploadKind::Data,
                ..
            } => receipt.data += 1,
            Ingested::Upload {
                kind: UploadKind::Manifest,
                ..
            } => receipt.manifests += 1,
        }
    }
    receipt
}

impl Core {
    fn ingest(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        mut items: Vec<&Ingested>,
        now: i64,
    ) -> StoreResult<()> {
        // Stable: repeats of one key keep their arrival order.
        fn sort_key(item: &Ingested) -> Option<&str> {
            match item {
                Ingested::Upload { entry, .. } => Some(entry),
                _ => None,
            }
        }
        items.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        let entries: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|item| match item {
                Ingested::Upload { set_id, entry, .. } => Some((set_id.as_str(), entry.as_str())),
                _ => None,
            })
            .collect();
        prefetch_entries(tx, &entries)?;
        for item in items {
            match item {
                Ingested::Outside => work.count("outside_keys"),
                Ingested::Other => work.count("other_events"),
                Ingested::Upload {
                    upload,
                    set_id,
                    entry,
                    kind,
                } => {
                    self.apply_upload(tx, work, upload, set_id, entry, *kind, false, now)?;
                }
            }
        }
        Ok(())
    }

    /// Runs the policy's per-upload hooks on an entry's upload and stores
    /// the verdict in it. A failed call leaves the upload unjudged: it
    /// blocks success (fail closed) and is judged again at the next re-check.
    /// Returns the reason to show in status, if any.
    /// `kind`: known on arrival; otherwise it is worked out from the key.
    fn judge(
        &mut self,
        set_id: &str,
        row: &mut EntryRecord,
        kind: Option<UploadKind>,
        state: &mut Option<PolicyState>,
    ) -> Option<String> {
        let key = row.key.as_str();
        let up = row.upload.as_mut()?;
        let kind =
            kind.unwrap_or_else(|| match self.settings.classifier.classify(&up.object_key) {
                Classification::Dataset { kind, .. } => kind,
                Classification::Outside => UploadKind::Data,
            });
        let mut note = None;
        let v = view(set_id, key, up, kind);
        let mut verdict = match self.policy.on_upload(&v, state) {
            Ok(UploadVerdict::Count) => Verdict::Count,
            Ok(UploadVerdict::Ignore) => Verdict::Ignore,
            Ok(UploadVerdict::Reject(reason)) => {
                warn!(set_id, key = %up.object_key, %reason, "upload rejected by policy");
                note = Some(format!("upload {} rejected: {reason}", up.object_key));
                Verdict::Reject
            }
            Err(e) if e.deferred => {
                self.deferred.insert(set_id.to_owned());
                Verdict::Unjudged
            }
            Err(e) => {
                note = Some(e.to_string());
                Verdict::Unjudged
            }
        };
        let mut matched = false;
        if verdict == Verdict::Count
            && let Some(size) = row.expected
        {
            let expected = ExpectedEntry { entry: key, size };
            match self.policy.entry_matches(&expected, &v, state) {
                Ok(m) => matched = m,
                // Never deferred: it completes the judgment `on-upload` began.
                Err(e) => {
                    note = Some(e.to_string());
                    verdict = Verdict::Unjudged;
                }
            }
        }
        up.verdict = verdict;
        up.matched = matched;
        note
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_upload(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        upload: &ObjectUpload,
        set_id: &str,
        entry: &str,
        kind: UploadKind,
        listed: bool,
        now: i64,
    ) -> StoreResult<()> {
        // The batch may run again on a conflict: log once it commits.
        work.uploads_seen
            .push((kind, set_id.to_owned(), upload.key.clone(), upload.size));
        work.count("uploads");
        let prev = tx.entry(set_id, entry)?;
        if let Some(old) = prev.as_ref().and_then(|p| p.upload.as_ref())
            && old.event_time > upload.event_time
            // A listed record gives way to any notification.
            && (!old.listed || listed)
        {
            // An older notification arriving late must not undo a newer one.
            work.count("stale_uploads");
            return Ok(());
        }
        let before = EntryRecord::contribution(prev.as_ref());
        let mut row = prev.unwrap_or_else(|| EntryRecord::new(entry, set_id));
        let manifest = (kind == UploadKind::Manifest).then(|| ManifestRef {
            key: upload.key.clone(),
            bucket: upload.bucket.clone(),
            size: upload.size,
            event_time: upload.event_time,
        });
        if self.settings.upload_events {
            let this = ManifestRef {
                key: upload.key.clone(),
                bucket: upload.bucket.clone(),
                size: upload.size,
                event_time: upload.event_time,
            };
            let detail_type = match kind {
                UploadKind::Data => outbound::DATA_UPLOAD,
                UploadKind::Manifest => outbound::MANIFEST_UPLOAD,
            };
            work.events.push(outbound::upload_event(
                detail_type,
                set_id,
                &this,
                &self.settings.origin,
                now,
            ));
        }
        row.upload = Some(UploadRecord {
            object_key: upload.key.clone(),
            bucket: upload.bucket.clone(),
            size: upload.size,
            event_time: upload.event_time,
            verdict: Verdict::Unjudged,
            matched: false,
            modified: upload.modified,
            listed,
        });
        // The policy state travels with the dataset: taken for the calls,
        // put back after (a failed transaction discards both).
        let mut state = work.dataset(tx, set_id, now)?.policy_state.take();
        let note = self.judge(set_id, &mut row, Some(kind), &mut state);
        tx.put_entry(&row)?;

        let deadline = self.settings.deadline.as_millis() as i64;
        let ds = work.dataset(tx, set_id, now)?;
        ds.policy_state = state;
        ds.counts -= before;
        ds.counts += EntryRecord::contribution(Some(&row));
        ds.last_seen_ms = ds.last_seen_ms.max(now);
        if note.is_some() {
            ds.note = note;
        }
        if let Some(m) = manifest {
            let newer = ds
                .manifest
                .as_ref()
                .is_some_and(|old| old.event_time < m.event_time);
            if newer || ds.manifest.is_none() {
                ds.manifest = Some(m);
            }
            if ds.state == DatasetState::Collecting {
                ds.state = DatasetState::Reconciling;
                ds.manifest_seen_ms = Some(now);
                ds.deadline_ms = Some(now.saturating_add(deadline));
                let read = manifest_read(ds);
                work.manifest_reads.push(read);
            } else if newer && ds.state == DatasetState::Reconciling {
                // Re-sealed: decide on the new manifest, never the old one.
                if ds.manifest_loaded {
                    ds.manifest_loaded = false;
                    ds.note = Some("the manifest was rewritten; reading it again".into());
                }
                let read = manifest_read(ds);
                work.manifest_reads.push(read);
            }
        }
        Ok(())
    }

    fn apply_manifest(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        set_id: &str,
        manifest_time: i64,
        result: &Result<Vec<ExpectedLine>, String>,
        now: i64,
    ) -> StoreResult<()> {
        self.reading.remove(set_id);
        if let Ok(lines) = result {
            let keys: Vec<(&str, &str)> = lines.iter().map(|(k, _)| (set_id, k.as_str())).collect();
            prefetch_entries(tx, &keys)?;
        }
        let ds = work.dataset(tx, set_id, now)?;
        if ds.manifest_loaded || ds.state.is_decided() {
            return Ok(());
        }
        if ds.manifest.as_ref().map(|m| m.event_time) != Some(manifest_time) {
            // A newer manifest was notified while this one was read.
            let read = manifest_read(ds);
            work.manifest_reads.push(read);
            return Ok(());
        }
        let reloading = ds.manifest_entries > 0;
        let mut lines = match result {
            Ok(lines) => lines.clone(),
            Err(message) => {
                warn!(set_id, %message, "manifest not usable yet; retrying at the next re-check");
                ds.note = Some(message.clone());
                return Ok(());
            }
        };
        // Which lines take part is the policy's call; if it cannot answer,
        // the manifest stays unloaded and is read again at the next re-check.
        let total = lines.len();
        let mut expects_error = None;
        let mut state = ds.policy_state.take();
        lines.retain(
            |(key, _)| match self.policy.expects(set_id, key, &mut state) {
                Ok(keep) => keep,
                Err(e) => {
                    expects_error.get_or_insert(e.to_string());
                    true
                }
            },
        );
        if let Some(message) = expects_error {
            ds.policy_state = state;
            ds.note = Some(message);
            return Ok(());
        }
        let mut counts = ds.counts;
        let mut note = None;
        if reloading {
            // The old manifest's expectations go; the new one sets its own.
            for mut row in tx.manifest_entries(set_id)? {
                counts -= EntryRecord::contribution(Some(&row));
                row.expected = None;
                if let Some(up) = row.upload.as_mut() {
                    up.matched = false;
                }
                counts += EntryRecord::contribution(Some(&row));
                tx.put_entry(&row)?;
            }
        }
        for (key, size) in &lines {
            let prev = tx.entry(set_id, key)?;
            counts -= EntryRecord::contribution(prev.as_ref());
            let mut row = prev.unwrap_or_else(|| EntryRecord::new(key, set_id));
            row.expected = Some(*size);
            if let Some(n) = self.judge(set_id, &mut row, None, &mut state) {
                note = Some(n);
            }
            counts += EntryRecord::contribution(Some(&row));
            tx.put_entry(&row)?;
        }
        let ds = work.dataset(tx, set_id, now)?;
        ds.policy_state = state;
        ds.counts = counts;
        ds.manifest_entries = lines.len() as u64;
        ds.manifest_loaded = true;
        ds.note = note;
        work.manifests_loaded
            .push((set_id.to_owned(), total, lines.len()));
        Ok(())
    }

    /// Records what the share watcher saw of one path.
    fn apply_local(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        change: &LocalChange,
        now: i64,
    ) -> StoreResult<()> {
        let prev = tx.entry(&change.set_id, &change.entry)?;
        if prev.is_none() && change.file.is_none() {
            return Ok(());
        }
        let before = EntryRecord::contribution(prev.as_ref());
        let mut row = prev.unwrap_or_else(|| EntryRecord::new(&change.entry, &change.set_id));
        row.local = change.file;
        tx.put_entry(&row)?;
        let ds = work.dataset(tx, &change.set_id, now)?;
        ds.counts -= before;
        ds.counts += EntryRecord::contribution(Some(&row));
        ds.last_local_ms = Some(now);
        Ok(())
    }

    /// Forgets local files a full scan no longer found.
    fn prune_local(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        set_id: &str,
        before_ms: i64,
        now: i64,
    ) -> StoreResult<()> {
        for row in tx.stale_local_entries(set_id, before_ms)? {
            self.apply_local(
                tx,
                work,
                &LocalChange {
                    set_id: set_id.to_owned(),
                    entry: row.key,
                    file: None,
                },
                now,
            )?;
        }
        Ok(())
    }

    /// Re-check of every dataset still reconciling: manifests not read yet,
    /// uploads a failed policy call left unjudged, then (in `decide_touched`)
    /// the decision and the deadline.
    fn tick(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        open: &[DatasetRecord],
        now: i64,
    ) -> StoreResult<()> {
        if let Some((every, after)) = self.settings.verify.as_ref().and_then(|v| v.periodic) {
            let (every, after) = (every.as_millis() as i64, after.as_millis() as i64);
            // Periodic listings are bounded: what does not fit now is
            // claimed at a later re-check.
            let mut room = self
                .listings
                .as_ref()
                .map_or(0, |l| listing::PERIODIC_QUEUED.saturating_sub(l.queued().1));
            for d in open {
                let due = now - d.first_seen_ms >= after
                    && d.listing_ms.is_none_or(|t| now - t >= every)
                    && d.deadline_ms.is_none_or(|deadline| deadline > now)
                    && !self.listing_in_flight.contains(&d.set_id);
                if due && room > 0 {
                    room -= 1;
                    let mut jobs = Vec::new();
                    let ds = work.dataset(tx, &d.set_id, now)?;
                    self.claim_listing(ds, &mut jobs, now);
                    work.listings.extend(jobs);
                }
            }
        }
        let reconciling: Vec<&str> = open
            .iter()
            .filter(|d| d.state == DatasetState::Reconciling)
            .map(|d| d.set_id.as_str())
            .collect();
        tx.prefetch(&reconciling, &[])?;
        for set_id in reconciling {
            let ds = work.dataset(tx, set_id, now)?;
            let unjudged = ds.counts.unjudged > 0;
            if !ds.manifest_loaded && !self.reading.contains(set_id) {
                let read = manifest_read(ds);
                work.manifest_reads.push(read);
            }
            if unjudged {
                self.rejudge(tx, work, set_id, now)?;
            }
        }
        Ok(())
    }

    /// Continues a dataset whose policy calls were deferred: judges what is
    /// left unjudged, and (in `decide_touched`) decides.
    fn continue_deferred(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        set_id: &str,
        now: i64,
    ) -> StoreResult<()> {
        let ds = work.dataset(tx, set_id, now)?;
        if ds.state.is_decided() {
            return Ok(());
        }
        if ds.counts.unjudged > 0 {
            self.rejudge(tx, work, set_id, now)?;
        }
        Ok(())
    }

    /// Judges again the uploads whose policy call failed or was deferred.
    fn rejudge(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        set_id: &str,
        now: i64,
    ) -> StoreResult<()> {
        const PER_TICK: usize = 10_000;
        let rows = tx.unjudged_entries(set_id, PER_TICK)?;
        let mut state = work.dataset(tx, set_id, now)?.policy_state.take();
        let mut delta_note = None;
        let mut counts_delta = (Counts::default(), Counts::default());
        self.deferred.remove(set_id);
        for mut row in rows {
            let before = EntryRecord::contribution(Some(&row));
            let note = self.judge(set_id, &mut row, None, &mut state);
            if self.deferred.contains(set_id) {
                // The policy's time is used: the rest waits for a later batch.
                break;
            }
            if let Some(n) = note {
                delta_note = Some(n);
            }
            counts_delta.0 += before;
            counts_delta.1 += EntryRecord::contribution(Some(&row));
            tx.put_entry(&row)?;
        }
        let ds = work.dataset(tx, set_id, now)?;
        ds.policy_state = state;
        ds.counts -= counts_delta.0;
        ds.counts += counts_delta.1;
        ds.note = delta_note;
        Ok(())
    }

    /// Asks the policy about every touched dataset still reconciling.
    fn decide_touched(&mut self, work: &mut Work, now: i64) {
        for ds in work.touched.values_mut() {
            if ds.state != DatasetState::Reconciling {
                continue;
            }
            if ds.manifest_loaded {
                let summary = Summary {
                    set_id: &ds.set_id,
                    manifest_entries: ds.manifest_entries,
                    received: ds.counts.received,
                    matched: ds.counts.matched,
                    mismatched: ds.counts.mismatched,
                    missing: ds.missing().unwrap_or(0),
                    unexpected: ds.unexpected().unwrap_or(0),
                    ignored: ds.counts.ignored,
                    rejected: ds.counts.rejected,
                };
                let decision = if ds.counts.unjudged > 0 {
                    // Fail closed: the policy has not judged every upload.
                    Ok(Decision::Wait(ds.note.clone().unwrap_or_else(|| {
                        format!(
                            "{} uploads not judged yet by the policy",
                            ds.counts.unjudged
                        )
                    })))
                } else {
                    self.policy.decide(&summary, &mut ds.policy_state)
                };
                match decision {
                    Ok(Decision::Complete) => {
                        if summary.missing > 0 || summary.unexpected > 0 || summary.mismatched > 0 {
                            // Allowed (a policy defines "complete"), but said.
                            warn!(
                                set_id = %ds.set_id,
                                policy = %self.policy.describe(&ds.set_id),
                                missing = summary.missing,
                                unexpected = summary.unexpected,
                                mismatched = summary.mismatched,
                                "the policy declared the dataset complete although {} manifest entries are missing",
                                summary.missing
                            );
                        }
                        ds.note = None;
                        close(
                            ds,
                            DatasetState::Succeeded,
                            &self.settings.origin,
                            now,
                            &mut work.events,
                        );
                        continue;
                    }
                    Ok(Decision::Fail(reason)) => {
                        ds.note = Some(reason);
                        close(
                            ds,
                            DatasetState::Failed,
                            &self.settings.origin,
                            now,
                            &mut work.events,
                        );
                        continue;
                    }
                    Ok(Decision::Wait(reason)) => {
                        // What the last listing found stays said until the
                        // next listing.
                        let partial = ds.note.as_deref().and_then(partial_part).map(str::to_owned);
                        ds.note = (!reason.is_empty()).then_some(reason).or(ds.note.take());
                        if let Some(partial) = partial {
                            ds.note = Some(with_partial(ds.note.as_deref(), &partial));
                        }
                    }
                    Err(e) if e.deferred => {
                        self.deferred.insert(ds.set_id.clone());
                    }
                    Err(e) => {
                        error!(set_id = %ds.set_id, error = %e, "policy decision failed; dataset keeps waiting");
                        ds.note = Some(e.to_string());
                    }
                }
            }
            if ds.deadline_ms.is_some_and(|d| d <= now)
                && self.may_time_out(ds, work.listed.get(&ds.set_id), &mut work.listings, now)
            {
                close(
                    ds,
                    DatasetState::TimedOut,
                    &self.settings.origin,
                    now,
                    &mut work.events,
                );
            }
        }
    }

    /// Whether a dataset past its deadline times out now. With `verify`,
    /// not before its prefix was listed (claimed here) and the listing
    /// applied, or one re-check has passed without it.
    fn may_time_out(
        &mut self,
        ds: &mut DatasetRecord,
        listed: Option<&ListingOutcome>,
        listings: &mut Vec<ListingJob>,
        now: i64,
    ) -> bool {
        let Some(recheck) = self.settings.verify.as_ref().map(|v| v.recheck) else {
            return true;
        };
        let deadline = ds.deadline_ms.unwrap_or(now);
        if let Some(outcome) = listed
            && ds.counts.unjudged == 0
        {
            // Listed, recorded and judged, still not complete.
            if let Some(note) = &outcome.lacking_note {
                ds.note = Some(note.clone());
            }
            return true;
        }
        if self.listing_in_flight.contains(&ds.set_id) {
            // Its result comes within one re-check of the listing starting
            // (the worker gives up then), and is applied.
            return false;
        }
        let failure = self.listing_failures.remove(&ds.set_id);
        match ds.listing_ms.filter(|t| *t >= deadline) {
            None => !self.claim_listing(ds, listings, now),
            Some(_) if failure.is_some() => {
                let message = failure.unwrap_or_default();
                ds.note = Some(format!("S3 listing failed: {message}"));
                true
            }
            Some(claimed) if now >= claimed + recheck.as_millis() as i64 => {
                if self.listed_past_deadline.contains(&ds.set_id) {
                    // Listed here and applied; still not decided (its
                    // uploads not judged): it times out as it stands.
                    return true;
                }
                // Claimed by an agent that has not applied it within a
                // re-check: it may have died, or this agent restarted.
                // List again here rather than time out unlisted.
                if self.claim_listing(ds, listings, now) {
                    return false;
                }
                ds.note =
                    Some("the S3 listing of the dataset did not finish within one re-check".into());
                true
            }
            Some(_) => false,
        }
    }

    /// Claims the listing of a dataset's prefix (started once committed);
    /// false if its bucket is unknown.
    fn claim_listing(
        &self,
        ds: &mut DatasetRecord,
        listings: &mut Vec<ListingJob>,
        now: i64,
    ) -> bool {
        let Some(verify) = &self.settings.verify else {
            return false;
        };
        if self.listing_in_flight.contains(&ds.set_id)
            || listings.iter().any(|j| j.set_id == ds.set_id)
        {
            return false;
        }
        let dir = self.settings.classifier.dataset_dir(&ds.set_id);
        let Some(job) = verify.job_for(ds, dir, now) else {
            return false;
        };
        ds.listing_ms = Some(now);
        if ds.deadline_ms.is_some_and(|d| d <= now) {
            ds.note = Some(format!(
                "deadline passed; listing s3://{}/{} before timing out",
                job.bucket, job.prefix
            ));
        }
        listings.push(job);
        true
    }

    /// Records the objects a listing found that no notification announced,
    /// as uploads marked `listed`; they reconcile as usual. An object counts
    /// only when it is the file on the share: its size (and time) confirm
    /// the local file the watcher saw, or else its size is the manifest's.
    /// Anything else is a partial or stale copy (the gateway makes partial
    /// copies visible), noted and not counted, and the next listing looks
    /// again. A listed record is replaced by a later listing or notification.
    fn apply_listing(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        job: &ListingJob,
        result: &Result<Vec<ListedObject>, String>,
        on_share: &HashMap<String, LocalFile>,
        now: i64,
    ) -> StoreResult<()> {
        let set_id = job.set_id.as_str();
        let ds = work.dataset(tx, set_id, now)?;
        if ds.state.is_decided() {
            return Ok(());
        }
        let objects = match result {
            Ok(objects) => objects,
            Err(message) => {
                let message = crate::logging::clean_external(message);
                warn!(set_id, error = %message, "S3 listing failed; listed again later (past its deadline, the dataset times out after one re-check)");
                ds.note = Some(format!("S3 listing failed: {message}"));
                self.listing_failures.insert(set_id.to_owned(), message);
                return Ok(());
            }
        };
        let mut found = Vec::new();
        for o in objects {
            if let Classification::Dataset {
                set_id: owner,
                entry,
                kind,
            } = self.settings.classifier.classify(&o.key)
                && owner == set_id
            {
                found.push((o, entry, kind));
            }
        }
        let keys: Vec<(&str, &str)> = found.iter().map(|(_, e, _)| (set_id, e.as_str())).collect();
        prefetch_entries(tx, &keys)?;
        let mut recorded = 0;
        let mut partial = Vec::new();
        for (object, entry, kind) in &found {
            let row = tx.entry(set_id, entry)?;
            let current = row.as_ref().and_then(|r| r.upload.as_ref());
            if current.is_some_and(|u| !u.listed) {
                continue; // notified: the notification is the record
            }
            let upload = ObjectUpload {
                event_id: String::new(),
                bucket: job.bucket.clone(),
                key: object.key.clone(),
                size: object.size,
                event_time: object.last_modified_ms.div_euclid(1000),
                modified: None,
            };
            let share_file = on_share.get(&object.key);
            if let Err(why) = listed_copy_is_whole(row.as_ref(), share_file, &upload) {
                partial.push(format!("{entry} ({why})"));
                if let Some(row) = row.filter(|r| r.upload.is_some()) {
                    // A copy recorded by an earlier listing is no longer
                    // the file on the share.
                    self.forget_listed(tx, work, row, now)?;
                }
                continue;
            }
            if current.is_some_and(|u| u.size == upload.size && u.event_time == upload.event_time) {
                continue; // recorded by an earlier listing, unchanged
            }
            self.apply_upload(tx, work, &upload, set_id, entry, *kind, true, now)?;
            recorded += 1;
        }
        let lacking: Vec<String> = tx
            .manifest_entries(set_id)?
            .into_iter()
            .filter(|e| e.upload.is_none())
            .map(|e| e.key)
            .collect();
        let ds = work.dataset(tx, set_id, now)?;
        ds.listed_entries += recorded;
        if ds.deadline_ms.is_some_and(|d| d <= now) {
            self.listed_past_deadline.insert(set_id.to_owned());
        }
        // This listing's word on partial copies replaces the last one's.
        let rest = ds.note.as_deref().map(|n| match n.find(PARTIAL_MARK) {
            Some(at) => n[..at].trim_end_matches("; ").to_owned(),
            None => n.to_owned(),
        });
        ds.note = if partial.is_empty() {
            rest.filter(|r| !r.is_empty())
        } else {
            Some(with_partial(rest.as_deref(), &partial_note(&partial)))
        };
        let mut note = (!lacking.is_empty()).then(|| lacking_note(&lacking, objects.len()));
        if let (Some(n), false) = (note.as_mut(), partial.is_empty()) {
            n.push_str("; ");
            n.push_str(&partial_note(&partial));
        }
        work.listed.insert(
            set_id.to_owned(),
            ListingOutcome {
                objects: objects.len(),
                recorded,
                partial: partial.len(),
                lacking: lacking.len(),
                lacking_note: note,
            },
        );
        Ok(())
    }

    /// Drops a listed upload that a later listing no longer confirms.
    fn forget_listed(
        &mut self,
        tx: &mut dyn StoreTx,
        work: &mut Work,
        mut row: EntryRecord,
        now: i64,
    ) -> StoreResult<()> {
        let before = EntryRecord::contribution(Some(&row));
        row.upload = None;
        tx.put_entry(&row)?;
        let ds = work.dataset(tx, &row.set_id, now)?;
        ds.counts -= before;
        ds.counts += EntryRecord::contribution(Some(&row));
        ds.listed_entries = ds.listed_entries.saturating_sub(1);
        Ok(())
    }

    /// After a commit: update the cache and start the manifest reads.
    fn committed(&mut self, work: &mut Work) {
        for (kind, set_id, key, size) in work.uploads_seen.drain(..) {
            log_upload(kind, &set_id, &key, size);
        }
        for (set_id, lines, expected) in work.manifests_loaded.drain(..) {
            info!(set_id, lines, expected, "manifest loaded");
        }
        // Decisions are logged once they are the store's, not when taken:
        // another writer may have claimed one first.
        for event in &work.events {
            if outbound::is_decision(&event.detail_type)
                && let Some(ds) = work.touched.get(&event.set_id)
            {
                log_decision(ds, &event.detail_type);
                metrics::counter!(telemetry::DECISIONS, "outcome" => ds.state.as_str())
                    .increment(1);
                let latency_ms = ds.decided_ms.unwrap_or(ds.last_seen_ms) - ds.last_seen_ms;
                metrics::histogram!(telemetry::DECISION_LATENCY_SECONDS)
                    .record(latency_ms.max(0) as f64 / 1e3);
            }
        }
        for ds in work.touched.values() {
            if ds.state.is_decided() {
                self.listing_failures.remove(&ds.set_id);
                self.listed_past_deadline.remove(&ds.set_id);
            }
        }
        for (set_id, outcome) in &work.listed {
            self.listing_failures.remove(set_id);
            info!(
                set_id,
                listed = outcome.objects,
                recorded_from_listing = outcome.recorded,
                partial_copies = outcome.partial,
                lacking = outcome.lacking,
                "S3 listing applied"
            );
            metrics::counter!(telemetry::LISTED_UPLOADS).increment(outcome.recorded);
        }
        if let Some(listings) = &self.listings {
            for job in work.listings.drain(..) {
                info!(set_id = %job.set_id, bucket = %job.bucket, prefix = %job.prefix, before_timeout = job.before_timeout, "listing the dataset's S3 prefix");
                let set_id = job.set_id.clone();
                if listings.start(job) {
                    self.listing_in_flight.insert(set_id);
                } else {
                    warn!(
                        set_id,
                        "the S3 listing queue is full or stopped; listing later"
                    );
                }
            }
        }
        for (set_id, key, manifest_time) in work.manifest_reads.drain(..) {
            if self.reading.insert(set_id.clone()) {
                self.read_manifest(set_id, key, manifest_time);
            }
        }
    }

    /// Queues a manifest for the reader, so a slow share never stalls ingest.
    fn read_manifest(&mut self, set_id: String, key: String, manifest_time: i64) {
        let job = ManifestJob {
            dir: self.settings.classifier.dataset_dir(&set_id),
            with_sizes: self.policy.wants_expected_sizes(&set_id),
            set_id,
            key,
            manifest_time,
        };
        if !self.manifest_reader.read(job) {
            error!("the manifest reader has stopped; retrying at the next re-check");
        }
    }
}

/// A read of the dataset's current manifest.
fn manifest_read(ds: &DatasetRecord) -> (String, String, i64) {
    let (key, time) = ds
        .manifest
        .as_ref()
        .map(|m| (m.key.clone(), m.event_time))
        .unwrap_or_default();
    (ds.set_id.clone(), key, time)
}

/// Whether an object seen only in a listing is the whole file on the share:
/// it confirms the file (size, and not older) as seen on the share right
/// after the listing, else as the watcher last saw it, or else its size is
/// the manifest's. A directory counts by its presence. Otherwise it says
/// why not.
fn listed_copy_is_whole(
    row: Option<&EntryRecord>,
    on_share: Option<&LocalFile>,
    object: &ObjectUpload,
) -> Result<(), String> {
    if object.key.ends_with('/') {
        return Ok(());
    }
    let candidate = UploadRecord {
        object_key: object.key.clone(),
        bucket: object.bucket.clone(),
        size: object.size,
        event_time: object.event_time,
        verdict: Verdict::Unjudged,
        matched: false,
        modified: None,
        listed: true,
    };
    let local = on_share.copied().or_else(|| row.and_then(|r| r.local));
    let expected = row.and_then(|r| r.expected).flatten();
    match (local, expected) {
        (Some(local), _) if local.confirmed_by(Some(&candidate)) => Ok(()),
        (Some(local), _) if local.size != object.size => Err(format!(
            "S3 holds {} bytes, the share {}",
            object.size, local.size
        )),
        (Some(_), _) => Err("S3's copy is older than the file on the share".into()),
        (None, Some(size)) if size == object.size => Ok(()),
        (None, Some(size)) => Err(format!(
            "S3 holds {} bytes, the manifest {size}",
            object.size
        )),
        (None, None) => Err("its size on the share is not known yet".into()),
    }
}

/// Where a note says what the last listing did not count.
const PARTIAL_MARK: &str = "not counted, partial or stale in S3: ";

/// The part of a note about partial copies, if any.
fn partial_part(note: &str) -> Option<&str> {
    note.find(PARTIAL_MARK).map(|at| &note[at..])
}

/// A note followed by the part about partial copies.
fn with_partial(note: Option<&str>, partial: &str) -> String {
    match note.filter(|n| !n.is_empty()) {
        Some(n) if n.contains(PARTIAL_MARK) => n.to_owned(),
        Some(n) => format!("{n}; {partial}"),
        None => partial.to_owned(),
    }
}

/// A dataset's note on listed objects that are not (yet) the whole file.
fn partial_note(partial: &[String]) -> String {
    const NAMED: usize = 5;
    let names = partial.iter().take(NAMED).cloned().collect::<Vec<_>>();
    let more = partial.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{PARTIAL_MARK}{}{more}", names.join(", "))
}

/// A Timeout's note after a listing: what S3 lacks, by name (the first few).
fn lacking_note(lacking: &[String], listed: usize) -> String {
    const NAMED: usize = 5;
    let names = lacking
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = lacking.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "S3 lacks {} manifest entries (listed {listed} objects): {names}{more}",
        lacking.len()
    )
}

/// Decides a dataset once and for all, queueing its one event.
fn close(
    ds: &mut DatasetRecord,
    state: DatasetState,
    origin: &Origin,
    now: i64,
    events: &mut Vec<OutboxEvent>,
) {
    let Some(manifest) = ds.manifest.as_ref() else {
        return;
    };
    let detail_type = if state == DatasetState::Succeeded {
        outbound::SUCCESSFUL
    } else {
        outbound::TIMEOUT
    };
    ds.state = state;
    ds.decided_ms = Some(now);
    events.push(outbound::reconcile_event(
        detail_type,
        &ds.set_id,
        manifest,
        origin,
        now,
    ));
}

/// One line per classified upload, like the reference's log group.
fn log_upload(kind: UploadKind, set_id: &str, key: &str, size: u64) {
    info!(
        kind = if kind == UploadKind::Manifest {
            "manifest"
        } else {
            "data"
        },
        set_id, key, size, "upload"
    );
}

fn log_decision(ds: &DatasetRecord, detail_type: &str) {
    let since_last = ds.decided_ms.unwrap_or_default() - ds.last_seen_ms;
    match ds.state {
        DatasetState::Succeeded => info!(
            set_id = %ds.set_id, entries = ds.manifest_entries, ms_after_last_upload = since_last,
            from_listing = ds.listed_entries,
            "{detail_type}"
        ),
        _ => warn!(
            set_id = %ds.set_id, entries = ds.manifest_entries, missing = ds.missing().unwrap_or(0),
            unexpected = ds.unexpected().unwrap_or(0), reason = ds.note.as_deref().unwrap_or("deadline passed"),
            "{detail_type}"
        ),
    }
}

#[cfg(test)]
mod tests {
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
            let (share, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let share_path = share.path().to_owned();
            let (open, keep) = storage(kind, state.path());
            let (handle, opened, thread) = Self::start(&open, &share_path, deadline, verify);
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
        ) -> (
            EngineHandle,
            (Arc<dyn StoreReader>, Arc<dyn Outbox>),
            std::thread::JoinHandle<()>,
        ) {
            let opened = tokio::task::block_in_place(open);
            let mut settings = settings(share, deadline);
            settings.verify = verify;
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
            self.handle.shutdown().await;
            self.thread.take().unwrap().join().unwrap();
            let (handle, (reader, outbox), thread) =
                Self::start(&self.open, &self.share, deadline, None);
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
        a_resealed_dataset_is_decided_on_its_newest_manifest,
        out_of_order_with_duplicates_and_directory_slashes_succeeds_once,
        manifest_last_succeeds_when_it_is_read,
        newer_notification_replaces_and_stale_one_is_ignored,
        missing_file_times_out_once_at_the_deadline,
        unexpected_upload_blocks_exact_match_and_says_why,
        state_survives_a_restart,
        unreadable_manifest_is_retried_at_each_recheck,
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
            h.handle.tick().await.unwrap();
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
        h.handle.tick().await.unwrap();
        assert!(h.events().is_empty(), "not before the deadline");
        tokio::time::sleep(Duration::from_millis(350)).await;
        h.handle.tick().await.unwrap();
        h.handle.tick().await.unwrap();
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
        h.handle.tick().await.unwrap();
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
        h.handle.tick().await.unwrap();
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
        h.handle.tick().await.unwrap();
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
            h.handle.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcome = |set_id: &str| h.dataset(set_id).unwrap();
        let heals = outcome("Heals");
        assert_eq!(heals.state, DatasetState::Succeeded);
        assert_eq!(heals.listed_entries, 1);
        let entry = h.entry("Heals", "Heals-vaultjob/b").unwrap();
        assert!(entry.upload.unwrap().listed);
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
            h.handle.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..5 {
            h.handle.tick().await.unwrap();
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
            h.handle.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let d = h.dataset("Part").unwrap();
        assert_eq!((d.state, d.listed_entries), (DatasetState::Succeeded, 1));
        let big = h
            .entry("Part", "Part-vaultjob/big")
            .unwrap()
            .upload
            .unwrap();
        assert_eq!((big.size, big.listed), (1 << 20, true));
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
            h.handle.tick().await.unwrap();
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
        fn unjudged_entries(
            &mut self,
            set_id: &str,
            limit: usize,
        ) -> StoreResult<Vec<EntryRecord>> {
            self.inner.unjudged_entries(set_id, limit)
        }
        fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
            self.inner.manifest_entries(set_id)
        }
        fn stale_local_entries(
            &mut self,
            set_id: &str,
            before: i64,
        ) -> StoreResult<Vec<EntryRecord>> {
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
        handle.tick().await.unwrap();
        handle.ingest(Vec::new()).await.unwrap();
        let reader = memory.reader();
        let d = tokio::task::block_in_place(|| reader.dataset_detail("Down", 10).unwrap());
        let d = d.expect("the observation was recorded once the store was back");
        assert_eq!(d.record.counts.local_bytes, 5);
        handle.shutdown().await;
        thread.join().unwrap();
    }
}
