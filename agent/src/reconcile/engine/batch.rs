//! One batch, one transaction: the steps applied in order, the conflict
//! retry on fresh reads, and what a batch keeps until it commits.

use super::*;

impl Engine {
    /// Runs `steps` in one transaction, again on fresh reads while another
    /// writer conflicts, and acts on what committed. Returns the datasets
    /// the store asks to decide again.
    pub(super) fn commit_steps(
        &mut self,
        steps: &[Step],
        commands: usize,
    ) -> StoreResult<Vec<String>> {
        // Jittered: agents contending for the same entries fall out of step
        // instead of colliding again.
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(1280))
            .limited(CONFLICT_RETRIES);
        let started = std::time::Instant::now();
        let (committed, mut effects) = loop {
            match self.apply(steps, now_ms()) {
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
                Ok(done) => break done,
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
        effects
            .events
            .retain(|e| !(outbound::is_decision(&e.detail_type) && unclaimed(&e.set_id)));
        for set_id in &committed.stale_claims {
            effects.touched.remove(set_id);
        }
        self.reconciler.committed(&mut effects);
        if !effects.touched.is_empty() {
            let seq = self.news.borrow().seq + 1;
            let set_ids = effects.touched.keys().cloned().collect();
            self.news
                .send_replace(Arc::new(CommitNews { seq, set_ids }));
        }
        if let Some(max) = effects.events.iter().map(|e| e.seq).max() {
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
    fn apply(&mut self, steps: &[Step], now: i64) -> StoreResult<(Committed, Effects)> {
        let open = if steps.iter().any(|s| matches!(s, Step::Recheck)) {
            Some(self.store.open_datasets()?)
        } else {
            None
        };
        let mut b = Batch::begin(&mut *self.store, now)?;
        let r = &mut self.reconciler;
        // What the watcher saw, read ahead in one go.
        let entries: Vec<(&str, &str)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Local(changes) => Some(changes),
                _ => None,
            })
            .flatten()
            .map(|c| (c.set_id.as_str(), c.entry.as_str()))
            .collect();
        b.prefetch_entries(&entries)?;
        // Uploads of all queued requests are applied together in key order:
        // neighbouring keys share B-tree pages, so each page is visited once.
        let mut uploads = Vec::new();
        for step in steps {
            match step {
                Step::Ingest(items) => uploads.extend(items),
                Step::ManifestRead {
                    set_id,
                    manifest_time,
                    result,
                } => r.apply_manifest(&mut b, set_id, *manifest_time, result)?,
                Step::Recheck => r.recheck(&mut b, open.as_deref().unwrap_or_default())?,
                Step::Deferred(set_ids) => {
                    for set_id in set_ids {
                        r.continue_deferred(&mut b, set_id)?;
                    }
                }
                Step::Revisit(set_ids) => {
                    let ids: Vec<&str> = set_ids.iter().map(String::as_str).collect();
                    b.tx.prefetch(&ids, &[])?;
                    for set_id in set_ids {
                        b.dataset(set_id)?;
                    }
                }
                Step::Local(changes) => {
                    for change in changes {
                        r.apply_local(&mut b, change)?;
                    }
                }
                Step::LocalPrune {
                    set_id,
                    scan_started_ms,
                } => r.prune_local(&mut b, set_id, *scan_started_ms)?,
                Step::Listed {
                    job,
                    result,
                    on_share,
                } => r.apply_listing(&mut b, job, result, on_share)?,
                Step::ContentChecked { job, check } => r.apply_content_check(&mut b, job, check)?,
                Step::Shutdown => {}
            }
        }
        r.ingest(&mut b, uploads)?;
        r.decide_touched(&mut b);
        b.commit()
    }
}

/// One batch's transaction, the time it runs at, and what it did: every
/// step handler works through it.
pub(super) struct Batch<'t> {
    pub tx: Box<dyn StoreTx + 't>,
    pub now: i64,
    /// The datasets as this transaction read them (`None`: new): only the
    /// ones it changed are written.
    as_read: HashMap<String, Option<DatasetRecord>>,
    pub effects: Effects,
}

/// What a batch changed and must act on once it commits (a batch that
/// conflicts runs again, so nothing is acted on before).
#[derive(Default)]
pub(super) struct Effects {
    /// The datasets as this transaction leaves them.
    pub touched: HashMap<String, DatasetRecord>,
    pub events: Vec<OutboxEvent>,
    pub counters: HashMap<&'static str, i64>,
    /// Manifest reads to start: (set id, manifest key, manifest event time).
    pub manifest_reads: Vec<(String, String, i64)>,
    /// Manifests loaded: (set id, lines, lines taking part), to log.
    pub manifests_loaded: Vec<(String, usize, usize)>,
    /// Uploads applied, to log.
    pub uploads_seen: Vec<(UploadKind, String, String, u64)>,
    /// Listings claimed, to start.
    pub listings: Vec<ListingJob>,
    /// Uploads whose content to check, once committed.
    pub content_jobs: Vec<ContentJob>,
    /// Content checks recorded (outcome, bytes), to count.
    pub content_checked: Vec<(ContentOutcome, u64)>,
    /// Listings applied in this batch, by set-id.
    pub listed: HashMap<String, ListingOutcome>,
}

/// What applying one dataset's listing found.
pub(super) struct ListingOutcome {
    pub objects: usize,
    pub recorded: u64,
    /// Objects not counted: partial or stale copies.
    pub partial: usize,
    /// Manifest entries S3 does not hold either.
    pub lacking: usize,
    /// Names what S3 lacks, for the Timeout (None: it lacks nothing).
    pub lacking_note: Option<String>,
}

impl<'t> Batch<'t> {
    pub fn begin(store: &'t mut dyn Store, now: i64) -> StoreResult<Batch<'t>> {
        Ok(Batch {
            tx: store.begin()?,
            now,
            as_read: HashMap::new(),
            effects: Effects::default(),
        })
    }

    /// The dataset as this transaction sees it, loading it on first touch.
    pub fn dataset(&mut self, set_id: &str) -> StoreResult<&mut DatasetRecord> {
        let touched = &mut self.effects.touched;
        if !touched.contains_key(set_id) {
            let read = self.tx.dataset(set_id)?;
            let ds = read
                .clone()
                .unwrap_or_else(|| DatasetRecord::new(set_id, self.now));
            self.as_read.insert(set_id.to_owned(), read);
            touched.insert(set_id.to_owned(), ds);
        }
        Ok(touched.get_mut(set_id).expect("inserted above"))
    }

    /// Writes an entry and moves its dataset's counters from what the entry
    /// counted for (`before`, its contribution as read) to what it counts
    /// for now: the one place counters and rows change together.
    pub fn put_entry(&mut self, before: Counts, row: &EntryRecord) -> StoreResult<()> {
        self.tx.put_entry(row)?;
        let ds = self.dataset(&row.set_id)?;
        ds.counts -= before;
        ds.counts += EntryRecord::contribution(Some(row));
        Ok(())
    }

    /// Reads ahead `entries` and their datasets (for a remote store, in one
    /// round trip per 100 keys instead of one per entry).
    pub fn prefetch_entries(&mut self, entries: &[(&str, &str)]) -> StoreResult<()> {
        let mut datasets: Vec<&str> = Vec::new();
        for (set_id, _) in entries {
            // Entries usually come grouped by dataset: check the last first.
            if datasets.last() != Some(set_id) && !datasets.contains(set_id) {
                datasets.push(set_id);
            }
        }
        self.tx.prefetch(&datasets, entries)
    }

    pub fn count(&mut self, name: &'static str) {
        *self.effects.counters.entry(name).or_default() += 1;
    }

    /// Writes the changed datasets, the events and counters, and commits.
    fn commit(self) -> StoreResult<(Committed, Effects)> {
        let Batch {
            mut tx,
            as_read,
            mut effects,
            ..
        } = self;
        for ds in effects.touched.values() {
            if as_read.get(&ds.set_id).and_then(Option::as_ref) != Some(ds) {
                tx.put_dataset(ds)?;
            }
        }
        for event in &mut effects.events {
            event.seq = tx.push_event(event)?;
        }
        for (name, delta) in &effects.counters {
            tx.add_counter(name, *delta)?;
        }
        Ok((tx.commit()?, effects))
    }
}
