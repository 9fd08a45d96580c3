//! The periodic re-check: periodic listings, manifests not read yet, and
//! uploads the policy has not judged.

use super::*;

impl Reconciler {
    /// Re-check of every dataset still reconciling: manifests not read yet,
    /// uploads a failed policy call left unjudged, then (in `decide_touched`)
    /// the decision and the deadline.
    pub(super) fn recheck(&mut self, b: &mut Batch, open: &[DatasetRecord]) -> StoreResult<()> {
        let now = b.now;
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
                    self.claim_listing(b.dataset(&d.set_id)?, &mut jobs, now);
                    b.effects.listings.extend(jobs);
                }
            }
        }
        let reconciling: Vec<&str> = open
            .iter()
            .filter(|d| d.state == DatasetState::Reconciling)
            .map(|d| d.set_id.as_str())
            .collect();
        b.tx.prefetch(&reconciling, &[])?;
        for set_id in reconciling {
            let ds = b.dataset(set_id)?;
            let unjudged = ds.counts.unjudged > 0;
            if !ds.manifest_loaded && !self.reading.contains(set_id) {
                let read = manifest_read(ds);
                b.effects.manifest_reads.push(read);
            }
            if unjudged {
                self.rejudge(b, set_id)?;
            }
            self.recheck_content(b, set_id)?;
        }
        Ok(())
    }

    /// Continues a dataset whose policy calls were deferred: judges what is
    /// left unjudged, and (in `decide_touched`) decides.
    pub(super) fn continue_deferred(&mut self, b: &mut Batch, set_id: &str) -> StoreResult<()> {
        let ds = b.dataset(set_id)?;
        if ds.state.is_decided() {
            return Ok(());
        }
        if ds.counts.unjudged > 0 {
            self.rejudge(b, set_id)?;
        }
        Ok(())
    }

    /// Judges again the uploads whose policy call failed or was deferred.
    pub(super) fn rejudge(&mut self, b: &mut Batch, set_id: &str) -> StoreResult<()> {
        const PER_RECHECK: usize = 10_000;
        let rows = b.tx.unjudged_entries(set_id, PER_RECHECK)?;
        let mut state = b.dataset(set_id)?.policy_state.take();
        let mut delta_note = None;
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
            b.put_entry(before, &row)?;
        }
        let ds = b.dataset(set_id)?;
        ds.policy_state = state;
        ds.note = delta_note;
        Ok(())
    }
}
