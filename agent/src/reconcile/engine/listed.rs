//! `[reconcile] verify`: claiming a dataset's S3 listing, applying what
//! it found (only whole copies of the share's files count), and whether a
//! dataset past its deadline may time out yet.

use super::*;

impl Reconciler {
    /// Readies a dataset past its deadline for its Timeout; true when it
    /// times out now. With `verify`, not before a listing claimed past the
    /// deadline was applied or failed: this claims that listing (or lists
    /// again when nobody applied a claim within a re-check), and puts what
    /// the listing found, or why it failed, in the dataset's note.
    pub(super) fn prepare_timeout(
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
            // Its result comes (the worker cuts a listing that never
            // answers), and is applied.
            return false;
        }
        let failure = self.listing_failures.remove(&ds.set_id);
        match (ds.listing_ms.filter(|t| *t >= deadline), failure) {
            (None, _) => !self.claim_listing(ds, listings, now),
            (Some(_), Some(message)) => {
                ds.note = Some(format!("S3 listing failed: {message}"));
                true
            }
            (Some(claimed), None) if now >= claimed + recheck.as_millis() as i64 => {
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
            (Some(_), None) => false,
        }
    }

    /// Claims the listing of a dataset's prefix (started once committed);
    /// false if its bucket is unknown.
    pub(super) fn claim_listing(
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
    pub(super) fn apply_listing(
        &mut self,
        b: &mut Batch,
        job: &ListingJob,
        result: &Result<Vec<ListedObject>, String>,
        on_share: &HashMap<String, LocalFile>,
    ) -> StoreResult<()> {
        let set_id = job.set_id.as_str();
        let now = b.now;
        let ds = b.dataset(set_id)?;
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
        b.prefetch_entries(&keys)?;
        let mut recorded = 0;
        let mut partial = Vec::new();
        for (object, entry, kind) in &found {
            let row = b.tx.entry(set_id, entry)?;
            let current = row.as_ref().and_then(|r| r.upload.as_ref());
            if current.is_some_and(|u| !u.origin.is_listed()) {
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
                    self.forget_listed(b, row)?;
                }
                continue;
            }
            if current.is_some_and(|u| u.size == upload.size && u.event_time == upload.event_time) {
                continue; // recorded by an earlier listing, unchanged
            }
            let at = UploadAt {
                set_id,
                entry,
                kind: *kind,
                origin: UploadOrigin::Listed,
            };
            self.apply_upload(b, &upload, at)?;
            recorded += 1;
        }
        let lacking: Vec<String> =
            b.tx.manifest_entries(set_id)?
                .into_iter()
                .filter(|e| e.upload.is_none())
                .map(|e| e.key)
                .collect();
        let ds = b.dataset(set_id)?;
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
        b.effects.listed.insert(
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
    pub(super) fn forget_listed(&mut self, b: &mut Batch, mut row: EntryRecord) -> StoreResult<()> {
        let before = EntryRecord::contribution(Some(&row));
        row.upload = None;
        b.put_entry(before, &row)?;
        let ds = b.dataset(&row.set_id)?;
        ds.listed_entries = ds.listed_entries.saturating_sub(1);
        Ok(())
    }
}

/// Whether an object seen only in a listing is the whole file on the share:
/// it confirms the file (size, and not older) as seen on the share right
/// after the listing, else as the watcher last saw it, or else its size is
/// the manifest's. A directory counts by its presence. Otherwise it says
/// why not.
pub(super) fn listed_copy_is_whole(
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
        origin: UploadOrigin::Listed,
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
pub(super) const PARTIAL_MARK: &str = "not counted, partial or stale in S3: ";

/// The part of a note about partial copies, if any.
pub(super) fn partial_part(note: &str) -> Option<&str> {
    note.find(PARTIAL_MARK).map(|at| &note[at..])
}

/// A note followed by the part about partial copies.
pub(super) fn with_partial(note: Option<&str>, partial: &str) -> String {
    match note.filter(|n| !n.is_empty()) {
        Some(n) if n.contains(PARTIAL_MARK) => n.to_owned(),
        Some(n) => format!("{n}; {partial}"),
        None => partial.to_owned(),
    }
}

/// A dataset's note on listed objects that are not (yet) the whole file.
pub(super) fn partial_note(partial: &[String]) -> String {
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
pub(super) fn lacking_note(lacking: &[String], listed: usize) -> String {
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
