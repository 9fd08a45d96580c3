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
    pub(super) fn apply(
        &mut self,
        steps: &[Step],
        work: &mut Work,
        now: i64,
    ) -> StoreResult<Committed> {
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
pub(super) fn prefetch_entries(tx: &mut dyn StoreTx, entries: &[(&str, &str)]) -> StoreResult<()> {
    let mut datasets: Vec<&str> = Vec::new();
    for (set_id, _) in entries {
        // Entries usually come grouped by dataset: check the last first.
        if datasets.last() != Some(set_id) && !datasets.contains(set_id) {
            datasets.push(set_id);
        }
    }
    tx.prefetch(&datasets, entries)
}

impl Work {
    /// The dataset as this transaction sees it, loading it on first touch.
    pub(super) fn dataset<'w>(
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

    pub(super) fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_default() += 1;
    }
}
