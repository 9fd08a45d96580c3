//! After a commit: logs, metrics, and the work started off the engine's
//! thread (listings, manifest reads).

use super::*;

impl Reconciler {
    /// After a commit: update the cache and start the manifest reads.
    pub(super) fn committed(&mut self, work: &mut Effects) {
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
        for (outcome, bytes) in work.content_checked.drain(..) {
            metrics::counter!(telemetry::CONTENT_FILES, "outcome" => outcome.as_str()).increment(1);
            if outcome == ContentOutcome::Verified {
                metrics::counter!(telemetry::CONTENT_VERIFIED_BYTES).increment(bytes);
            }
        }
        let jobs = std::mem::take(&mut work.content_jobs);
        self.start_content_checks(jobs);
        for ds in work.touched.values() {
            if ds.state.is_decided() {
                self.content_problems.remove(&ds.set_id);
                self.content_scanned.remove(&ds.set_id);
                self.listing_failures.remove(&ds.set_id);
                self.listed_past_deadline.remove(&ds.set_id);
                self.manifest_failed.remove(&ds.set_id);
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
}

/// Accepted notifications by kind, once committed.
pub(super) fn count_notifications(receipt: &IngestReceipt) {
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

/// One line per classified upload, like the reference's log group.
pub(super) fn log_upload(kind: UploadKind, set_id: &str, key: &str, size: u64) {
    info!(
        kind = if kind == UploadKind::Manifest {
            "manifest"
        } else {
            "data"
        },
        set_id, key, size, "upload"
    );
}

pub(super) fn log_decision(ds: &DatasetRecord, detail_type: &str) {
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
