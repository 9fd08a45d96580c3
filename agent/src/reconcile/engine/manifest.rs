//! A dataset's manifest: read off the engine's thread, loaded into its
//! entries' expectations, read again when the dataset is re-sealed.

use super::*;

impl Reconciler {
    /// Loads a manifest read into its entries' expectations (replacing the
    /// last manifest's), unless a newer manifest was notified meanwhile.
    pub(super) fn apply_manifest(
        &mut self,
        b: &mut Batch,
        set_id: &str,
        manifest_time: i64,
        result: &Result<Vec<ExpectedLine>, String>,
    ) -> StoreResult<()> {
        self.reading.remove(set_id);
        if let Ok(lines) = result {
            let keys: Vec<(&str, &str)> = lines.iter().map(|(k, _)| (set_id, k.as_str())).collect();
            b.prefetch_entries(&keys)?;
        }
        let ds = b.dataset(set_id)?;
        if ds.manifest_loaded || ds.state.is_decided() {
            return Ok(());
        }
        if ds.manifest.as_ref().map(|m| m.event_time) != Some(manifest_time) {
            // A newer manifest was notified while this one was read.
            let read = manifest_read(ds);
            b.effects.manifest_reads.push(read);
            return Ok(());
        }
        let reloading = ds.manifest_entries > 0;
        let mut lines = match result {
            Ok(lines) => lines.clone(),
            Err(message) => {
                warn!(set_id, %message, "manifest not usable yet; retrying at the next re-check");
                ds.note = Some(message.clone());
                self.manifest_failed.insert(set_id.to_owned());
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
            self.manifest_failed.insert(set_id.to_owned());
            return Ok(());
        }
        let mut note = None;
        if reloading {
            // The old manifest's expectations go; the new one sets its own.
            for mut row in b.tx.manifest_entries(set_id)? {
                let before = EntryRecord::contribution(Some(&row));
                row.expected = None;
                if let Some(up) = row.upload.as_mut() {
                    up.matched = false;
                }
                b.put_entry(before, &row)?;
            }
        }
        for (key, size) in &lines {
            let prev = b.tx.entry(set_id, key)?;
            let before = EntryRecord::contribution(prev.as_ref());
            let mut row = prev.unwrap_or_else(|| EntryRecord::new(key, set_id));
            row.expected = Some(*size);
            if let Some(n) = self.judge(set_id, &mut row, None, &mut state) {
                note = Some(n);
            }
            b.put_entry(before, &row)?;
        }
        let ds = b.dataset(set_id)?;
        ds.policy_state = state;
        ds.manifest_entries = lines.len() as u64;
        ds.manifest_loaded = true;
        self.manifest_failed.remove(set_id);
        ds.note = note;
        b.effects
            .manifests_loaded
            .push((set_id.to_owned(), total, lines.len()));
        Ok(())
    }

    /// Queues a manifest for the reader, so a slow share never stalls ingest.
    pub(super) fn read_manifest(&mut self, set_id: String, key: String, manifest_time: i64) {
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
pub(super) fn manifest_read(ds: &DatasetRecord) -> (String, String, i64) {
    let (key, time) = ds
        .manifest
        .as_ref()
        .map(|m| (m.key.clone(), m.event_time))
        .unwrap_or_default();
    (ds.set_id.clone(), key, time)
}
