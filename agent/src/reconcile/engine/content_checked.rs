//! `[reconcile] verify_content`: queuing each upload's content check,
//! recording what it found, queuing again what a re-check finds unchecked,
//! and what `required` holds back.
//!
//! A check is claimed in the entry (`Checking`, with the time) in the same
//! transaction that records the upload, so with the shared store exactly
//! one agent fetches an object: the one whose batch committed. Another
//! agent claims it again only once the claim is older than
//! `claim_expires_after` (its agent died, or its queue was full).

use super::*;

/// Files named in a dataset's note on content not proven.
const NAMED: usize = 5;

impl Reconciler {
    /// The content mode of a dataset (off without `verify_content`).
    pub(super) fn content_mode(&self, set_id: &str) -> ContentMode {
        self.settings
            .content
            .as_ref()
            .map_or(ContentMode::Off, |c| c.mode_for(set_id))
    }

    /// Claims the check of an entry's upload (written with the entry) and
    /// queues it, started once the batch commits. Directories have no
    /// bytes: they count by presence.
    pub(super) fn claim_content_check(b: &mut Batch, row: &mut EntryRecord) {
        let Some(up) = row.upload.as_ref() else {
            return;
        };
        if row.is_directory_upload() {
            return;
        }
        let claim = ContentCheck::new(up.event_time, ContentOutcome::Checking, "", b.now);
        row.content = Some(claim);
        let up = row.upload.as_ref().expect("checked above");
        b.effects.content_jobs.push(ContentJob {
            set_id: row.set_id.clone(),
            entry: row.key.clone(),
            bucket: up.bucket.clone(),
            key: up.object_key.clone(),
            upload_time: up.event_time,
        });
    }

    /// Records a check, unless the entry's upload changed since (a newer
    /// upload has its own check coming).
    pub(super) fn apply_content_check(
        &mut self,
        b: &mut Batch,
        job: &ContentJob,
        check: &ContentCheck,
    ) -> StoreResult<()> {
        let Some(mut row) = b.tx.entry(&job.set_id, &job.entry)? else {
            return Ok(());
        };
        if row.upload.as_ref().map(|u| u.event_time) != Some(job.upload_time)
            || row.content.as_ref() == Some(check)
        {
            return Ok(());
        }
        let before = EntryRecord::contribution(Some(&row));
        row.content = Some(check.clone());
        b.put_entry(before, &row)?;
        b.effects
            .content_checked
            .push((check.outcome, row.upload.as_ref().map_or(0, |u| u.size)));
        let problems = self.content_problems.entry(job.set_id.clone()).or_default();
        problems.retain(|p| !p.starts_with(&format!("{} (", job.entry)));
        if check.outcome != ContentOutcome::Verified {
            warn!(set_id = %job.set_id, key = %job.key, outcome = check.outcome.as_str(), detail = %check.detail, "content not proven");
            problems.insert(0, format!("{} ({})", job.entry, check.detail));
            problems.truncate(NAMED);
        }
        Ok(())
    }

    /// At a re-check: claims again the checks of uploads whose claim is old
    /// (lost to a restart, a full queue, S3 failing past the retries), at
    /// most once per `claim_expires_after` per dataset.
    pub(super) fn recheck_content(&mut self, b: &mut Batch, set_id: &str) -> StoreResult<()> {
        let (Some(checks), Some(settings)) = (&self.content_checks, &self.settings.content) else {
            return Ok(());
        };
        let expires = settings.claim_expires_after.as_millis() as i64;
        if self.content_mode(set_id) == ContentMode::Off || checks.checking(set_id) > 0 {
            return Ok(());
        }
        let now = b.now;
        if self
            .content_scanned
            .get(set_id)
            .is_some_and(|at| now - at < expires)
        {
            return Ok(());
        }
        let ds = b.dataset(set_id)?;
        if !ds.manifest_loaded || content_pending(&ds.counts) == 0 {
            return Ok(());
        }
        self.content_scanned.insert(set_id.to_owned(), now);
        for mut row in b.tx.manifest_entries(set_id)? {
            let unclaimed = match row.content_of_upload() {
                None => true,
                Some(c) => c.outcome == ContentOutcome::Checking && now - c.at_ms >= expires,
            };
            if row.upload.is_some() && unclaimed && !row.is_directory_upload() {
                let before = EntryRecord::contribution(Some(&row));
                Self::claim_content_check(b, &mut row);
                b.put_entry(before, &row)?;
            }
        }
        Ok(())
    }

    /// With `required`: what keeps a dataset the policy calls complete from
    /// `Successful` (None: every file of the manifest is proven). It names
    /// the files this engine saw fail (it runs at every batch: no scan).
    pub(super) fn content_unproven(&self, ds: &DatasetRecord) -> Option<String> {
        if self.content_mode(&ds.set_id) != ContentMode::Required
            || ds.counts.verified >= ds.manifest_entries
        {
            return None;
        }
        let seen = self.content_problems.get(&ds.set_id);
        Some(content_note(ds, seen.map_or(&[], Vec::as_slice)))
    }

    /// The note of a Timeout for content not proven. It names the files
    /// from the store, so a restarted engine, or another agent's check,
    /// still names them (once per dataset, so the scan is affordable).
    pub(super) fn content_timeout_note(&self, tx: &mut dyn StoreTx, ds: &DatasetRecord) -> String {
        let named = match tx.manifest_entries(&ds.set_id) {
            Ok(entries) => entries
                .iter()
                .filter_map(|row| {
                    let check = row.content_of_upload()?;
                    matches!(
                        check.outcome,
                        ContentOutcome::Mismatch | ContentOutcome::Unverifiable
                    )
                    .then(|| format!("{} ({})", row.key, check.detail))
                })
                .take(NAMED)
                .collect(),
            Err(e) => {
                warn!(set_id = %ds.set_id, error = %e, "cannot list the files not proven; the Timeout names the ones this agent saw");
                self.content_problems
                    .get(&ds.set_id)
                    .cloned()
                    .unwrap_or_default()
            }
        };
        content_note(ds, &named)
    }
    /// After a commit: starts the queued checks.
    pub(super) fn start_content_checks(&mut self, jobs: Vec<ContentJob>) {
        let Some(checks) = &self.content_checks else {
            return;
        };
        let mut dropped = 0;
        for job in jobs {
            if self.content_mode(&job.set_id) == ContentMode::Off {
                continue;
            }
            if !checks.start(job) && checks.queued() >= content::QUEUED_MAX {
                dropped += 1;
            }
        }
        if dropped > 0 {
            warn!(
                dropped,
                "the content-check queue is full; a later re-check queues those checks again"
            );
        }
    }
}

/// Manifest entries with a counted upload whose content is not judged yet.
fn content_pending(c: &Counts) -> u64 {
    (c.matched + c.mismatched).saturating_sub(c.verified + c.content_mismatch + c.unverifiable)
}

/// "content: 3 of 5 manifest entries verified (1 mismatched, 1
/// unverifiable, 0 pending); not proven: a.bin (CRC64NVME: S3 ..., the
/// share ...)".
fn content_note(ds: &DatasetRecord, named: &[String]) -> String {
    let c = &ds.counts;
    let mut note = format!(
        "content: {} of {} manifest entries verified ({} mismatched, {} unverifiable, {} pending)",
        c.verified,
        ds.manifest_entries,
        c.content_mismatch,
        c.unverifiable,
        ds.manifest_entries
            .saturating_sub(c.verified + c.content_mismatch + c.unverifiable)
    );
    if !named.is_empty() {
        note.push_str("; not proven: ");
        note.push_str(&named.join("; "));
    }
    note
}
