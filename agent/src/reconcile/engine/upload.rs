//! Notified (or listed) uploads: recorded, judged by the policy, counted.

use super::*;

pub(super) fn view<'a>(
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

/// Which entry an upload is of, and how the agent learnt of it.
pub(super) struct UploadAt<'a> {
    pub set_id: &'a str,
    pub entry: &'a str,
    pub kind: UploadKind,
    pub origin: UploadOrigin,
}

impl Reconciler {
    /// Records a batch's notifications, in key order.
    pub(super) fn ingest(&mut self, b: &mut Batch, mut items: Vec<&Ingested>) -> StoreResult<()> {
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
        b.prefetch_entries(&entries)?;
        for item in items {
            match item {
                Ingested::Outside => b.count("outside_keys"),
                Ingested::Other => b.count("other_events"),
                Ingested::Upload {
                    upload,
                    set_id,
                    entry,
                    kind,
                } => {
                    let at = UploadAt {
                        set_id,
                        entry,
                        kind: *kind,
                        origin: UploadOrigin::Notified,
                    };
                    self.apply_upload(b, upload, at)?;
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
    pub(super) fn judge(
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
            Err(e) if e.is_deferred() => {
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

    /// Records an upload of an entry (replacing an older one), has the
    /// policy judge it, and notes a dataset's manifest when it is one.
    pub(super) fn apply_upload(
        &mut self,
        b: &mut Batch,
        upload: &ObjectUpload,
        at: UploadAt,
    ) -> StoreResult<()> {
        let UploadAt {
            set_id,
            entry,
            kind,
            origin,
        } = at;
        let now = b.now;
        // The batch may run again on a conflict: log once it commits.
        b.effects
            .uploads_seen
            .push((kind, set_id.to_owned(), upload.key.clone(), upload.size));
        b.count("uploads");
        let prev = b.tx.entry(set_id, entry)?;
        if let Some(old) = prev.as_ref().and_then(|p| p.upload.as_ref())
            && old.event_time > upload.event_time
            // A listed record gives way to any notification.
            && (!old.origin.is_listed() || origin.is_listed())
        {
            // An older notification arriving late must not undo a newer one.
            b.count("stale_uploads");
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
            b.effects.events.push(outbound::upload_event(
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
            origin,
        });
        // The policy state travels with the dataset: taken for the calls,
        // put back after (a failed transaction discards both).
        let mut state = b.dataset(set_id)?.policy_state.take();
        let note = self.judge(set_id, &mut row, Some(kind), &mut state);
        if self.content_mode(set_id) != ContentMode::Off {
            Self::claim_content_check(b, &mut row);
        }
        b.put_entry(before, &row)?;

        let deadline = self.settings.deadline.as_millis() as i64;
        let ds = b.dataset(set_id)?;
        ds.policy_state = state;
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
                b.effects.manifest_reads.push(read);
            } else if newer && ds.state == DatasetState::Reconciling {
                // Re-sealed: decide on the new manifest, never the old one.
                if ds.manifest_loaded {
                    ds.manifest_loaded = false;
                    ds.note = Some("the manifest was rewritten; reading it again".into());
                }
                let read = manifest_read(ds);
                b.effects.manifest_reads.push(read);
            }
        }
        Ok(())
    }
}
