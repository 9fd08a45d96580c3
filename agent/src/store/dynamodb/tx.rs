//! One engine batch against the shared table.
//!
//! Reads go to DynamoDB (or to what this batch already read or wrote);
//! writes are buffered and sent at commit. At commit every changed entry is
//! written with a condition on its version, in the same transaction as the
//! change it makes to its dataset's counters (`ADD` of the difference between
//! its old and new contribution). So counters stay exactly the sum over
//! entries however many agents write, and an agent that dies mid-way leaves
//! either both or neither. If another agent changed an entry first, commit
//! fails with [`StoreError::Conflict`] and the engine runs the batch again on
//! fresh reads: applying a notification twice changes nothing, so the part
//! that did commit is harmless.
//!
//! A decision is its own transaction: the outcome is set only if the dataset
//! has none (so exactly one agent wins), together with its event in the
//! shared outbox and the removal of the dataset from the open list.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use tracing::debug;

use super::item::{self, DATASET_SK, Item, dataset_from_item, entry_from_item, key, n, revision};
use super::plan::Plan;
use super::table::{Table, TransactFailure};
use crate::store::{
    Committed, DatasetRecord, EntryRecord, OutboxEvent, StoreError, StoreResult, StoreTx,
};

/// An entry as read (with its version) and as this batch left it.
pub(super) struct Slot {
    pub(super) base: Option<(EntryRecord, i64)>,
    pub(super) current: Option<EntryRecord>,
}

impl Slot {
    pub(super) fn view(&self) -> Option<EntryRecord> {
        self.current
            .clone()
            .or_else(|| self.base.as_ref().map(|(e, _)| e.clone()))
    }
}

pub struct DynamoTx<'a> {
    pub(super) table: &'a Table,
    pub(super) sinks: &'a [String],
    pub(super) next_seq: &'a mut i64,
    /// Datasets as read (`None`: absent)...
    pub(super) datasets: HashMap<String, Option<DatasetRecord>>,
    /// ...and their revisions as read (absent: 0).
    pub(super) revisions: HashMap<String, i64>,
    pub(super) dataset_puts: BTreeMap<String, DatasetRecord>,
    /// Keyed by (set-id, entry key): written in key order.
    pub(super) entries: BTreeMap<(String, String), Slot>,
    pub(super) events: Vec<OutboxEvent>,
    pub(super) counters: Vec<(String, i64)>,
}

impl<'a> DynamoTx<'a> {
    pub fn new(table: &'a Table, sinks: &'a [String], next_seq: &'a mut i64) -> Self {
        DynamoTx {
            table,
            sinks,
            next_seq,
            datasets: HashMap::new(),
            revisions: HashMap::new(),
            dataset_puts: BTreeMap::new(),
            entries: BTreeMap::new(),
            events: Vec::new(),
            counters: Vec::new(),
        }
    }

    fn remember_dataset(&mut self, item: &Item) -> StoreResult<DatasetRecord> {
        let ds = dataset_from_item(item)?;
        self.revisions.insert(ds.set_id.clone(), revision(item)?);
        self.datasets.insert(ds.set_id.clone(), Some(ds.clone()));
        Ok(ds)
    }

    fn remember_entry(&mut self, item: &Item) -> StoreResult<EntryRecord> {
        let (e, ver) = entry_from_item(item)?;
        let slot = self
            .entries
            .entry((e.set_id.clone(), e.key.clone()))
            .or_insert(Slot {
                base: Some((e, ver)),
                current: None,
            });
        Ok(slot.view().expect("a slot read from an item has a base"))
    }

    /// Entries of a partition matching `filter`, as this batch sees them.
    fn query_entries(
        &mut self,
        set_id: &str,
        filter: &str,
        values: Item,
        limit: usize,
    ) -> StoreResult<Vec<EntryRecord>> {
        let items = self
            .table
            .block(self.table.query(set_id, Some((filter, values)), limit))?;
        items
            .iter()
            .filter(|i| item::get_s(i, item::SK) != Some(DATASET_SK))
            .map(|i| self.remember_entry(i))
            .collect()
    }
}

impl StoreTx for DynamoTx<'_> {
    fn prefetch(&mut self, datasets: &[&str], entries: &[(&str, &str)]) -> StoreResult<()> {
        let mut keys = Vec::new();
        let mut wanted_ds = Vec::new();
        for set_id in datasets {
            if !self.datasets.contains_key(*set_id) && !wanted_ds.contains(set_id) {
                wanted_ds.push(*set_id);
                keys.push(key(set_id, DATASET_SK));
            }
        }
        // BatchGetItem refuses a request that names a key twice.
        let mut wanted = std::collections::BTreeSet::new();
        for (set_id, k) in entries {
            let id = ((*set_id).to_owned(), (*k).to_owned());
            if !self.entries.contains_key(&id) && !wanted.contains(&id) {
                keys.push(key(set_id, k));
                wanted.insert(id);
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let found = self.table.block(self.table.batch_get(keys))?;
        for i in &found {
            if item::get_s(i, item::SK) == Some(DATASET_SK) {
                self.remember_dataset(i)?;
            } else {
                self.remember_entry(i)?;
            }
        }
        // What was asked and not found is known to be absent.
        for set_id in wanted_ds {
            self.datasets.entry(set_id.to_owned()).or_insert(None);
        }
        for id in wanted {
            self.entries.entry(id).or_insert(Slot {
                base: None,
                current: None,
            });
        }
        Ok(())
    }

    fn dataset(&mut self, set_id: &str) -> StoreResult<Option<DatasetRecord>> {
        if let Some(ds) = self.dataset_puts.get(set_id) {
            return Ok(Some(ds.clone()));
        }
        if !self.datasets.contains_key(set_id) {
            match self.table.block(self.table.get(set_id, DATASET_SK))? {
                Some(found) => {
                    self.remember_dataset(&found)?;
                }
                None => {
                    self.datasets.insert(set_id.to_owned(), None);
                }
            }
        }
        Ok(self.datasets[set_id].clone())
    }

    fn put_dataset(&mut self, dataset: &DatasetRecord) -> StoreResult<()> {
        if !self.datasets.contains_key(&dataset.set_id) {
            self.dataset(&dataset.set_id)?;
        }
        self.dataset_puts
            .insert(dataset.set_id.clone(), dataset.clone());
        Ok(())
    }

    fn entry(&mut self, set_id: &str, key: &str) -> StoreResult<Option<EntryRecord>> {
        let id = (set_id.to_owned(), key.to_owned());
        if let Some(slot) = self.entries.get(&id) {
            return Ok(slot.view());
        }
        let found = self.table.block(self.table.get(set_id, key))?;
        let base = found.as_ref().map(entry_from_item).transpose()?;
        let view = base.as_ref().map(|(e, _)| e.clone());
        self.entries.insert(
            id,
            Slot {
                base,
                current: None,
            },
        );
        Ok(view)
    }

    fn put_entry(&mut self, entry: &EntryRecord) -> StoreResult<()> {
        let id = (entry.set_id.clone(), entry.key.clone());
        if !self.entries.contains_key(&id) {
            self.entry(&entry.set_id, &entry.key)?;
        }
        if let Some(slot) = self.entries.get_mut(&id) {
            slot.current = Some(entry.clone());
        }
        Ok(())
    }

    fn unjudged_entries(&mut self, set_id: &str, limit: usize) -> StoreResult<Vec<EntryRecord>> {
        let values = HashMap::from([(
            ":unjudged".to_owned(),
            n(crate::store::Verdict::Unjudged.code()),
        )]);
        self.query_entries(set_id, "verdict = :unjudged", values, limit)
    }

    fn manifest_entries(&mut self, set_id: &str) -> StoreResult<Vec<EntryRecord>> {
        let values = HashMap::from([(":yes".to_owned(), AttributeValue::Bool(true))]);
        self.query_entries(set_id, "inManifest = :yes", values, usize::MAX)
    }

    fn stale_local_entries(
        &mut self,
        set_id: &str,
        seen_before_ms: i64,
    ) -> StoreResult<Vec<EntryRecord>> {
        let values = HashMap::from([(":before".to_owned(), n(seen_before_ms))]);
        self.query_entries(set_id, "localSeenMs < :before", values, usize::MAX)
    }

    fn push_event(&mut self, event: &OutboxEvent) -> StoreResult<i64> {
        // Sequence numbers are this agent's own: they only wake its
        // dispatchers. Shared delivery goes by the outbox partition.
        *self.next_seq += 1;
        let mut event = event.clone();
        event.seq = *self.next_seq;
        self.events.push(event);
        Ok(*self.next_seq)
    }

    fn add_counter(&mut self, name: &str, delta: i64) -> StoreResult<()> {
        self.counters.push((name.to_owned(), delta));
        Ok(())
    }

    fn commit(self: Box<Self>) -> StoreResult<Committed> {
        let this = *self;
        let table = this.table;
        let plan = Plan::build(&this)?;
        for tx in plan.transactions {
            match table.block(table.transact(tx)) {
                Ok(()) => {}
                Err(TransactFailure::Condition(_)) => {
                    return Err(StoreError::Conflict(
                        "another agent changed the same entries at the same time".into(),
                    ));
                }
                Err(TransactFailure::Other(e)) => return Err(e),
            }
        }
        // Upload events: after the entries that produced them. If the agent
        // dies in between, the notification was not acknowledged and its
        // re-delivery produces them again.
        let uploads: Vec<&OutboxEvent> = this
            .events
            .iter()
            .filter(|e| !plan.decision_events.contains(&e.id))
            .collect();
        if !this.sinks.is_empty() {
            let items = uploads
                .iter()
                .map(|e| item::outbox_item(e, this.sinks))
                .collect();
            table.block(table.batch_put(items))?;
        }
        let mut committed = Committed {
            revisit: plan.revisit,
            ..Committed::default()
        };
        for (set_id, tx) in plan.decisions {
            match table.block(table.transact(tx)) {
                Ok(()) => {}
                Err(TransactFailure::Condition(_)) => {
                    // Either another agent decided first, or the dataset
                    // changed since this batch read it: the claim was taken
                    // on a state that is not the committed one. Which, the
                    // committed item says.
                    let now = table.block(table.get(&set_id, DATASET_SK))?;
                    if now.as_ref().is_some_and(|i| i.contains_key("outcome")) {
                        debug!(set_id, "another agent decided this dataset first");
                        committed.lost_claims.push(set_id);
                    } else {
                        debug!(
                            set_id,
                            "the dataset changed after this batch read it; deciding again"
                        );
                        committed.stale_claims.push(set_id);
                    }
                }
                Err(TransactFailure::Other(e)) => return Err(e),
            }
        }
        let mut counters = table.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (name, delta) in this.counters {
            *counters.entry(name).or_default() += delta;
        }
        Ok(committed)
    }
}
