//! What the share watcher saw: local files, and those a full scan no
//! longer found.

use super::*;

impl Reconciler {
    /// Records what the share watcher saw of one path.
    pub(super) fn apply_local(&mut self, b: &mut Batch, change: &LocalChange) -> StoreResult<()> {
        let prev = b.tx.entry(&change.set_id, &change.entry)?;
        if prev.is_none() && change.file.is_none() {
            return Ok(());
        }
        let before = EntryRecord::contribution(prev.as_ref());
        let mut row = prev.unwrap_or_else(|| EntryRecord::new(&change.entry, &change.set_id));
        row.local = change.file;
        b.put_entry(before, &row)?;
        let now = b.now;
        b.dataset(&change.set_id)?.last_local_ms = Some(now);
        Ok(())
    }

    /// Forgets local files a full scan no longer found.
    pub(super) fn prune_local(
        &mut self,
        b: &mut Batch,
        set_id: &str,
        before_ms: i64,
    ) -> StoreResult<()> {
        for row in b.tx.stale_local_entries(set_id, before_ms)? {
            let gone = LocalChange {
                set_id: set_id.to_owned(),
                entry: row.key,
                file: None,
            };
            self.apply_local(b, &gone)?;
        }
        Ok(())
    }
}
