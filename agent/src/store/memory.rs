//! A store in memory, gone when the process ends: for tests, benchmarks
//! and `plugin test`-style dry runs. It keeps the same contract as the
//! durable backends (one writer, atomic commits, one outbox with a cursor
//! per sink), which the conformance suite checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    Committed, DatasetDetail, DatasetRecord, EntryRecord, Outbox, OutboxEvent, OutboxResult, Store,
    StoreReader, StoreResult, StoreTx, Verdict,
};

#[derive(Default)]
struct State {
    datasets: BTreeMap<String, DatasetRecord>,
    /// Keyed by (set-id, entry key): a dataset's entries are one range.
    entries: BTreeMap<(String, String), EntryRecord>,
    outbox: Vec<OutboxEvent>,
    /// Event id -> sequence: an event is added once.
    event_ids: HashMap<String, i64>,
    cursors: HashMap<String, i64>,
    counters: BTreeMap<String, i64>,
}

/// The write side; [`MemoryStore::reader`] and [`MemoryStore::outbox`] see
/// what it commits.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reader(&self) -> MemoryStore {
        self.clone()
    }

    pub fn outbox(&self) -> MemoryStore {
        self.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>> {
        let mut open: Vec<DatasetRecord> = self
            .lock()
            .datasets
            .values()
            .filter(|d| !d.state.is_decided())
            .cloned()
            .collect();
        open.sort_by(|a, b| (a.first_seen_ms, &a.set_id).cmp(&(b.first_seen_ms, &b.set_id)));
        Ok(open)
    }

    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>> {
        Ok(Box::new(MemoryTx {
            store: self,
            datasets: HashMap::new(),
            entries: BTreeMap::new(),
            events: Vec::new(),
            counters: Vec::new(),
        }))
    }
}

/// Writes wait here until commit; reads see them first.
struct MemoryTx<'a> {
    store: &'a MemoryStore,
    datasets: HashMap<String, DatasetRecord>,
    entries: BTreeMap<(String, String), EntryRecord>,
    events: Vec<OutboxEvent>,
    counters: Vec<(String, i64)>,
}

impl MemoryTx<'_> {
    /// A dataset's entries as this transaction sees them, filtered.
    fn entries_where(
        &self,
        set_id: &str,
        limit: usize,
        keep: impl Fn(&EntryRecord) -> bool,
    ) -> Vec<EntryRecord> {
        let state = self.store.lock();
        let mut merged: BTreeMap<&str, &EntryRecord> = dataset_range(&state.entries, set_id)
            .map(|((_, k), e)| (k.as_str(), e))
            .collect();
        for ((_, k), e) in dataset_range(&self.entries, set_id) {
            merged.insert(k, e);
        }
        merged
            .into_values()
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect()
    }
}

fn dataset_range<'m>(
    entries: &'m BTreeMap<(String, String), EntryRecord>,
    set_id: &str,
) -> impl Iterator<Item = (&'m (String, String), &'m EntryRecord)> {
    entries
        .range((set_id.to_owned(), String::new())..)
        .take_while(move |((s, _), _)| s == set_id)
}

impl StoreTx for MemoryTx<'_> {
    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>> {
        if let Some(ds) = self.datasets.get(set_id) {
            return Ok(Some(ds.clone()));
        }
        Ok(self.store.lock().datasets.get(set_id).cloned())
    }

    fn put_dataset(&mut self, dataset: &DatasetRecord) -> StoreResult<()> {
        self.datasets
            .insert(dataset.set_id.clone(), dataset.clone());
        Ok(())
    }

    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>> {
        let id = (set_id.to_owned(), key.to_owned());
        if let Some(e) = self.entries.get(&id) {
            return Ok(Some(e.clone()));
        }
        Ok(self.store.lock().entries.get(&id).cloned())
    }

    fn put_entry(&mut self, entry: &EntryRecord) -> StoreResult<()> {
        self.entries
            .insert((entry.set_id.clone(), entry.key.clone()), entry.clone());
        Ok(())
    }

    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>> {
        Ok(self.entries_where(set_id, limit, |e| {
            e.upload
                .as_ref()
                .is_some_and(|u| u.verdict == Verdict::Unjudged)
        }))
    }

    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
        Ok(self.entries_where(set_id, usize::MAX, |e| e.expected.is_some()))
    }

    fn stale_local_entries(
        &mut self,
        set_id: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>> {
        Ok(self.entries_where(set_id, usize::MAX, |e| {
            e.local.is_some_and(|l| l.seen_ms < seen_before_ms)
        }))
    }

    fn push_event(&mut self, event: &OutboxEvent) -> StoreResult<i64> {
        let state = self.store.lock();
        let known = state.event_ids.get(&event.id).copied();
        if let Some(seq) =
            known.or_else(|| self.events.iter().find(|e| e.id == event.id).map(|e| e.seq))
        {
            return Ok(seq);
        }
        let seq = (state.outbox.len() + self.events.len()) as i64 + 1;
        drop(state);
        let mut event = event.clone();
        event.seq = seq;
        self.events.push(event);
        Ok(seq)
    }

    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()> {
        self.counters.push((name.to_owned(), delta));
        Ok(())
    }

    fn commit(self: Box<Self>) -> StoreResult<Committed> {
        let this = *self;
        let mut state = this.store.lock();
        state.datasets.extend(this.datasets);
        state.entries.extend(this.entries);
        for event in this.events {
            state.event_ids.insert(event.id.clone(), event.seq);
            state.outbox.push(event);
        }
        for (name, delta) in this.counters {
            *state.counters.entry(name).or_default() += delta;
        }
        Ok(Committed::default())
    }
}

impl StoreReader for MemoryStore {
    fn datasets(&self) -> StoreResult<Vec<DatasetRecord>> {
        let mut all: Vec<DatasetRecord> = self.lock().datasets.values().cloned().collect();
        all.sort_by(|a, b| (a.first_seen_ms, &a.set_id).cmp(&(b.first_seen_ms, &b.set_id)));
        Ok(all)
    }

    fn dataset_detail(&self, set_id: &str, limit: usize) -> StoreResult<Option<DatasetDetail>> {
        let state = self.lock();
        let Some(record) = state.datasets.get(set_id).cloned() else {
            return Ok(None);
        };
        let entries = dataset_range(&state.entries, set_id).map(|(_, e)| e.clone());
        Ok(Some(DatasetDetail::from_entries(record, entries, limit)))
    }

    fn counters(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(self
            .lock()
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }
}

impl Outbox for MemoryStore {
    fn hold(&self, _sink: &str, _ttl: Duration) -> OutboxResult<bool> {
        Ok(true)
    }

    fn pending(&self, sink: &str, limit: usize) -> OutboxResult<Vec<OutboxEvent>> {
        let state = self.lock();
        let cursor = state.cursors.get(sink).copied().unwrap_or(0);
        // Sequence numbers are positions: the events after the cursor.
        Ok(state
            .outbox
            .iter()
            .skip(cursor.max(0) as usize)
            .take(limit)
            .cloned()
            .collect())
    }

    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> OutboxResult<()> {
        if let Some(seq) = events.iter().map(|e| e.seq).max() {
            let mut state = self.lock();
            let cursor = state.cursors.entry(sink.to_owned()).or_default();
            *cursor = (*cursor).max(seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, Backend, Opened};
    use super::*;

    #[test]
    fn keeps_the_store_contract() {
        conformance::run(&Backend {
            name: "memory",
            shared: false,
            fresh: Box::new(|| {
                let store = MemoryStore::new();
                Box::new(move || Opened {
                    store: Box::new(store.clone()),
                    reader: Arc::new(store.reader()),
                    outbox: Arc::new(store.outbox()),
                })
            }),
        });
    }
}
