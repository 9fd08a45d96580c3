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

use super::content::{self, ContentChecks, ContentJob, ContentMode, ContentSettings};
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
    Committed, ContentCheck, ContentOutcome, Counts, DatasetRecord, DatasetState, EntryRecord,
    LocalFile, ManifestRef, OutboxEvent, Store, StoreError, StoreResult, StoreTx, UploadOrigin,
    UploadRecord, Verdict,
};
use crate::telemetry;

mod batch;
mod content_checked;
mod decide;
mod effects;
mod listed;
mod local;
mod manifest;
mod recheck;
mod upload;

use upload::UploadAt;

use batch::*;
use effects::*;
use listed::*;
use manifest::*;

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

/// One unit of a batch's work. A batch that conflicts runs its steps
/// again on fresh reads, so a step is plain data; who to answer travels
/// beside it, in the [`Command`].
#[derive(Clone)]
pub enum Step {
    /// Notifications to record.
    Ingest(Vec<Ingested>),
    /// A manifest read off the engine's thread.
    ManifestRead {
        set_id: String,
        /// The event time of the manifest notification the read was for.
        manifest_time: i64,
        result: Result<Vec<ExpectedLine>, String>,
    },
    /// What the share watcher saw: files present (with their size) or gone.
    Local(Vec<LocalChange>),
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
    /// What comparing an upload's S3 checksum with its file found.
    ContentChecked {
        job: ContentJob,
        check: ContentCheck,
    },
    /// The periodic re-check: deadlines, manifests not yet readable,
    /// uploads not judged, periodic listings.
    Recheck,
    /// Datasets whose policy calls were deferred by the policy's time budget.
    Deferred(Vec<String>),
    /// Datasets to decide again on a fresh read: the store said other
    /// writers changed them while the last batch ran.
    Revisit(Vec<String>),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// Who hears that an ingest was committed, and with what receipt.
pub type IngestReply = oneshot::Sender<Result<IngestReceipt, EngineError>>;

/// What the engine's channel carries: a step, and for an ingest its sender.
pub struct Command {
    pub step: Step,
    pub reply: Option<IngestReply>,
}

impl From<Step> for Command {
    fn from(step: Step) -> Command {
        Command { step, reply: None }
    }
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

/// How often a batch is run again after another writer changed what it
/// read ([`StoreError::Conflict`]).
const CONFLICT_RETRIES: u32 = 10;

/// The cloneable front door of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    classifier: Arc<Classifier>,
    news: watch::Receiver<Arc<CommitNews>>,
}

/// What the latest commit changed: the datasets it wrote. Waiters
/// (`GET /status/{set-id}?wait=`) look at their dataset again only when it
/// is named, or when they missed a commit (`seq` jumped).
#[derive(Debug, Default)]
pub struct CommitNews {
    pub seq: u64,
    pub set_ids: Vec<String>,
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
            .send(Command {
                step: Step::Ingest(items),
                reply: Some(reply),
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }

    /// For the share watcher's thread (not an async task): queues
    /// observations, waiting while the engine is busy.
    pub fn blocking_local(&self, changes: Vec<LocalChange>) -> Result<(), EngineError> {
        self.tx
            .blocking_send(Step::Local(changes).into())
            .map_err(|_| EngineError::Stopped)
    }

    pub fn blocking_prune(&self, set_id: String, scan_started_ms: i64) -> Result<(), EngineError> {
        self.tx
            .blocking_send(
                Step::LocalPrune {
                    set_id,
                    scan_started_ms,
                }
                .into(),
            )
            .map_err(|_| EngineError::Stopped)
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Queues a re-check (the agent sends one every `recheck_interval`).
    pub async fn recheck(&self) -> Result<(), EngineError> {
        self.tx
            .send(Step::Recheck.into())
            .await
            .map_err(|_| EngineError::Stopped)
    }

    pub async fn shutdown(&self) {
        let _ = self.tx.send(Step::Shutdown.into()).await;
    }

    /// What each commit changes, as it happens.
    pub fn news(&self) -> watch::Receiver<Arc<CommitNews>> {
        self.news.clone()
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
    /// `[reconcile] verify_content`: prove uploads' bytes (None: off).
    pub content: Option<ContentSettings>,
}

/// What the engine knows besides the store: the policy, the settings, and
/// the work it has started off its thread (manifest reads, listings).
struct Reconciler {
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
    /// The content-check worker, with `[reconcile] verify_content`.
    content_checks: Option<ContentChecks>,
    /// Per dataset, the last files whose content was not proven (a few),
    /// for its note and its Timeout's.
    content_problems: HashMap<String, Vec<String>>,
    /// When a re-check last looked for unclaimed content checks, by dataset.
    content_scanned: HashMap<String, i64>,
    /// Why each dataset's last listing failed (for its Timeout's note).
    listing_failures: HashMap<String, String>,
    /// Datasets whose listing is queued or running: never claimed again
    /// before its result is in.
    listing_in_flight: HashSet<String>,
    /// Datasets past their deadline whose listing this agent applied.
    listed_past_deadline: HashSet<String>,
    /// Datasets whose last manifest read here failed (or whose policy
    /// could not say which lines take part): a Timeout need not wait for it.
    manifest_failed: HashSet<String>,
}

pub struct Engine {
    store: Box<dyn Store>,
    reconciler: Reconciler,
    outbox: watch::Sender<i64>,
    /// Told the datasets of every commit, for waiters.
    news: watch::Sender<Arc<CommitNews>>,
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
            let _ = waker.try_send(Step::Recheck.into());
        }));
        let (news, news_rx) = watch::channel(Arc::new(CommitNews::default()));
        let handle = EngineHandle {
            tx: tx.clone(),
            classifier: Arc::new(settings.classifier.clone()),
            news: news_rx,
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
        let content_checks = settings
            .content
            .as_ref()
            .map(|c| content::spawn(c, tx.clone()));
        let manifest_reader = manifest_reader::spawn(reader_settings, tx, settings.health.clone());
        let reconciler = Reconciler {
            policy,
            settings,
            reading: HashSet::new(),
            manifest_reader,
            deferred: HashSet::new(),
            listings,
            content_checks,
            content_problems: HashMap::new(),
            content_scanned: HashMap::new(),
            listing_failures: HashMap::new(),
            listing_in_flight: HashSet::new(),
            listed_past_deadline: HashSet::new(),
            manifest_failed: HashSet::new(),
        };
        (
            Engine {
                store,
                reconciler,
                outbox,
                news,
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
        self.process(vec![Step::Recheck.into()]);
        // Deferred policy work runs in batches of its own, taking turns with
        // batches of commands: it always progresses, and a command never
        // waits for more than one slow policy call besides its own batch.
        let mut deferred_turn = false;
        loop {
            if !self.reconciler.deferred.is_empty() && (deferred_turn || self.rx.is_empty()) {
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
            let stop = batch.iter().any(|c| matches!(c.step, Step::Shutdown));
            self.process(batch);
            if stop {
                break;
            }
        }
        info!("reconcile engine stopped");
        Ok(())
    }

    fn process(&mut self, batch: Vec<Command>) {
        let reloaded = self.reconciler.policy.begin_batch();
        let mut replies = Vec::new();
        let batch_len = batch.len();
        // Observations a failed batch left go first: newer ones follow.
        let mut steps = std::mem::take(&mut self.unrecorded_local);
        for Command { step, reply } in batch {
            match &step {
                // Re-checks queued while a batch ran are one re-check.
                Step::Recheck if steps.iter().any(|s| matches!(s, Step::Recheck)) => continue,
                Step::Shutdown | Step::Deferred(_) | Step::Revisit(_) => continue,
                Step::Listed { job, .. } => {
                    self.reconciler.listing_in_flight.remove(&job.set_id);
                }
                Step::Ingest(items) => {
                    if let Some(reply) = reply {
                        replies.push((reply, receipt_of(items)));
                    }
                }
                _ => {}
            }
            steps.push(step);
        }
        if reloaded && !steps.iter().any(|s| matches!(s, Step::Recheck)) {
            // A replaced plugin judges what its predecessor could not.
            steps.push(Step::Recheck);
        }
        if steps.is_empty() && !self.reconciler.deferred.is_empty() {
            steps.push(Step::Deferred(self.reconciler.deferred.drain().collect()));
        }
        let health = self.reconciler.settings.health.clone();
        health.batch_started();
        let had_recheck = steps.iter().any(|s| matches!(s, Step::Recheck));
        let result = self.commit_steps(&steps, batch_len);
        health.batch_finished(had_recheck && result.is_ok());
        if had_recheck && result.is_ok() {
            // Tests wait on this fact rather than on a clock.
            metrics::counter!(telemetry::RECHECKS).increment(1);
        }
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
                // Manifest reads of the failed batch are lost; the next re-check re-reads.
                self.reconciler.reading.clear();
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

#[cfg(test)]
mod tests;
