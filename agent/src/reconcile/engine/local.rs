//! What the share watcher saw: local files, and those a full scan no
//! longer found.

use super::*;

impl Core {
    /// Records what the share watcher saw of one path.
    pub(super) fn apply_local(
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
    pub(super) fn prune_local(
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
}
