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

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use tracing::debug;

use super::item::{
    self, DATASET_SK, Item, MANIFEST_EVENT_TIME, OPEN_PARTITION, REVISION, VERSION,
    dataset_from_item, entry_from_item, entry_item, key, n, revision, s,
};
use super::table::{TRANSACTION_MAX, Table, TransactFailure, build_error};
use crate::store::{
    Committed, Counts, DatasetRecord, EntryRecord, OutboxEvent, PolicyState, StoreError,
    StoreResult, StoreTx,
};

/// An entry as read (with its version) and as this batch left it.
struct Slot {
    base: Option<(EntryRecord, i64)>,
    current: Option<EntryRecord>,
}

impl Slot {
    fn view(&self) -> Option<EntryRecord> {
        self.current
            .clone()
            .or_else(|| self.base.as_ref().map(|(e, _)| e.clone()))
    }
}

pub struct DynamoTx<'a> {
    table: &'a Table,
    sinks: &'a [String],
    next_seq: &'a mut i64,
    /// Datasets as read (`None`: absent)...
    datasets: HashMap<String, Option<DatasetRecord>>,
    /// ...and their revisions as read (absent: 0).
    revisions: HashMap<String, i64>,
    dataset_puts: BTreeMap<String, DatasetRecord>,
    /// Keyed by (set-id, entry key): written in key order.
    entries: BTreeMap<(String, String), Slot>,
    events: Vec<OutboxEvent>,
    counters: Vec<(String, i64)>,
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

/// The requests one commit sends.
struct Plan {
    transactions: Vec<Vec<TransactWriteItem>>,
    /// Per decided dataset: outcome, event and open-list removal.
    decisions: Vec<(String, Vec<TransactWriteItem>)>,
    decision_events: Vec<String>,
    /// Undecided datasets whose counters this commit changed by a delta:
    /// their totals may include other agents' work the batch never read.
    revisit: Vec<String>,
}

/// An entry as it will be written, and as it was read with its version
/// (none when the entry is new).
type Change<'t> = (&'t EntryRecord, Option<(&'t EntryRecord, i64)>);

/// Entries of one dataset that go into one transaction, with the counter
/// change they make together.
struct Unit<'t> {
    set_id: &'t str,
    entries: Vec<Item>,
    conditions: Vec<Option<i64>>,
    delta: [i64; 10],
    /// The last unit of a dataset also carries its other fields, so a
    /// dataset never looks loaded before all its entries are in.
    last: bool,
}

impl Plan {
    fn build(tx: &DynamoTx<'_>) -> StoreResult<Plan> {
        let table = &*tx.table.name;
        // Changed entries by dataset, with their old version.
        let mut by_dataset: BTreeMap<&str, Vec<Change<'_>>> = BTreeMap::new();
        for ((set_id, _), slot) in &tx.entries {
            let Some(current) = &slot.current else {
                continue;
            };
            let base = slot.base.as_ref().map(|(e, v)| (e, *v));
            if base.is_some_and(|(b, _)| b == current) {
                continue;
            }
            by_dataset.entry(set_id).or_default().push((current, base));
        }
        for set_id in tx.dataset_puts.keys() {
            by_dataset.entry(set_id).or_default();
        }
        let mut units = Vec::new();
        for (set_id, rows) in &by_dataset {
            // Room for the dataset's update and its open-list entry.
            let chunks: Vec<_> = if rows.is_empty() {
                vec![&rows[..]]
            } else {
                rows.chunks(TRANSACTION_MAX - 2).collect()
            };
            let count = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut delta = [0i64; 10];
                let mut entries = Vec::new();
                let mut conditions = Vec::new();
                for (current, base) in chunk {
                    let after = EntryRecord::contribution(Some(current)).values();
                    let before = EntryRecord::contribution(base.map(|(b, _)| b)).values();
                    for k in 0..10 {
                        delta[k] += after[k] as i64 - before[k] as i64;
                    }
                    let ver = base.map(|(_, v)| v);
                    entries.push(entry_item(current, ver.unwrap_or(0) + 1));
                    conditions.push(ver);
                }
                units.push(Unit {
                    set_id,
                    entries,
                    conditions,
                    delta,
                    last: i + 1 == count,
                });
            }
        }

        let mut transactions = Vec::new();
        let mut current: Vec<TransactWriteItem> = Vec::new();
        let mut in_current: Vec<&str> = Vec::new();
        // Each dataset's revision once this commit's updates are in.
        let mut revisions: HashMap<&str, i64> = HashMap::new();
        for unit in units {
            let base = tx.datasets.get(unit.set_id).cloned().flatten();
            let put = tx.dataset_puts.get(unit.set_id);
            let update = dataset_update(table, &unit, base.as_ref(), put)?;
            if update.is_some() {
                *revisions
                    .entry(unit.set_id)
                    .or_insert_with(|| tx.revisions.get(unit.set_id).copied().unwrap_or(0)) += 1;
            }
            let register = base.is_none();
            let size = unit.entries.len() + usize::from(update.is_some()) + usize::from(register);
            if size == 0 {
                continue;
            }
            if current.len() + size > TRANSACTION_MAX || in_current.contains(&unit.set_id) {
                transactions.push(std::mem::take(&mut current));
                in_current.clear();
            }
            in_current.push(unit.set_id);
            for (item, ver) in unit.entries.into_iter().zip(unit.conditions) {
                let put = Put::builder().table_name(table).set_item(Some(item));
                let put = match ver {
                    None => put
                        .condition_expression("attribute_not_exists(#sk)")
                        .expression_attribute_names("#sk", item::SK),
                    Some(v) => put
                        .condition_expression("#ver = :ver")
                        .expression_attribute_names("#ver", VERSION)
                        .expression_attribute_values(":ver", n(v)),
                };
                let put = put.build().map_err(|e| build_error(table, e))?;
                current.push(TransactWriteItem::builder().put(put).build());
            }
            if let Some(update) = update {
                current.push(TransactWriteItem::builder().update(update).build());
            }
            if register {
                // Unconditional: two agents seeing a new dataset at once
                // both write the same item.
                let put = Put::builder()
                    .table_name(table)
                    .set_item(Some(key(OPEN_PARTITION, unit.set_id)))
                    .build()
                    .map_err(|e| build_error(table, e))?;
                current.push(TransactWriteItem::builder().put(put).build());
            }
        }
        if !current.is_empty() {
            transactions.push(current);
        }

        let mut decisions = Vec::new();
        let mut decision_events = Vec::new();
        for (set_id, ds) in &tx.dataset_puts {
            let was_decided = tx
                .datasets
                .get(set_id)
                .and_then(|d| d.as_ref())
                .is_some_and(|d| d.state.is_decided());
            if !ds.state.is_decided() || was_decided {
                continue;
            }
            let event = tx
                .events
                .iter()
                .find(|e| &e.set_id == set_id && crate::outbound::is_decision(&e.detail_type));
            let mut items = Vec::new();
            let mut u = UpdateBuilder::default();
            // The claim holds only on the dataset the decision was taken
            // on: its revision as read plus this commit's own updates.
            let expected = revisions
                .get(set_id.as_str())
                .copied()
                .unwrap_or_else(|| tx.revisions.get(set_id).copied().unwrap_or(0));
            // (0: never written, so the attribute is absent.)
            let unchanged = u.still(REVISION, (expected != 0).then_some(expected));
            u.add(REVISION, 1);
            u.set("outcome", s(ds.state.as_str()));
            u.set("decidedMs", n(ds.decided_ms.unwrap_or_default()));
            match &ds.note {
                Some(note) => u.set("note", s(note)),
                None => u.remove("note"),
            }
            let outcome = u.name("outcome");
            let update = u
                .finish(table, key(set_id, DATASET_SK))
                .condition_expression(format!("attribute_not_exists({outcome}) AND {unchanged}"))
                .build()
                .map_err(|e| build_error(table, e))?;
            items.push(TransactWriteItem::builder().update(update).build());
            if let Some(event) = event
                && !tx.sinks.is_empty()
            {
                decision_events.push(event.id.clone());
                let put = Put::builder()
                    .table_name(table)
                    .set_item(Some(item::outbox_item(event, tx.sinks)))
                    .build()
                    .map_err(|e| build_error(table, e))?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            let delete = Delete::builder()
                .table_name(table)
                .set_key(Some(key(OPEN_PARTITION, set_id)))
                .build()
                .map_err(|e| build_error(table, e))?;
            items.push(TransactWriteItem::builder().delete(delete).build());
            decisions.push((set_id.clone(), items));
        }
        let revisit = by_dataset
            .iter()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(set_id, _)| (*set_id).to_owned())
            .filter(|set_id| {
                !tx.dataset_puts
                    .get(set_id)
                    .is_some_and(|d| d.state.is_decided())
            })
            .collect();
        Ok(Plan {
            transactions,
            decisions,
            decision_events,
            revisit,
        })
    }
}

/// The dataset item's update for one unit: the counter change, and for the
/// last unit the fields the engine changed (compared with what was read).
fn dataset_update(
    table: &str,
    unit: &Unit<'_>,
    base: Option<&DatasetRecord>,
    put: Option<&DatasetRecord>,
) -> StoreResult<Option<Update>> {
    let mut u = UpdateBuilder::default();
    let mut conditions = Vec::new();
    for (name, delta) in Counts::NAMES.iter().zip(unit.delta) {
        if delta != 0 {
            u.add(name, delta);
        }
    }
    if unit.last
        && let Some(ds) = put
    {
        let old = base
            .cloned()
            .unwrap_or_else(|| DatasetRecord::new(&ds.set_id, i64::MIN));
        if base.is_none() {
            u.set_if_absent("firstSeenMs", n(ds.first_seen_ms));
        }
        if ds.last_seen_ms != old.last_seen_ms {
            u.set("lastSeenMs", n(ds.last_seen_ms));
        }
        let manifest_changed = ds.manifest != old.manifest
            || ds.manifest_loaded != old.manifest_loaded
            || ds.manifest_entries != old.manifest_entries;
        if manifest_changed {
            // Only on the manifest this batch read: a batch that loaded an
            // older manifest than another agent just recorded must not
            // mark the newer one loaded (it runs again on fresh reads).
            let read = old.manifest.as_ref().map(|m| m.event_time);
            conditions.push(u.still(MANIFEST_EVENT_TIME, read));
        }
        if ds.manifest != old.manifest
            && let Some(m) = &ds.manifest
        {
            u.set("manifestKey", s(&m.key));
            u.set("manifestBucket", s(&m.bucket));
            u.set("manifestSize", n(m.size));
            u.set(MANIFEST_EVENT_TIME, n(m.event_time));
        }
        // The first manifest notification starts the clock; later ones
        // (from this or another agent) must not move it.
        if old.manifest_seen_ms.is_none()
            && let (Some(seen), Some(deadline)) = (ds.manifest_seen_ms, ds.deadline_ms)
        {
            u.set_if_absent("manifestSeenMs", n(seen));
            u.set_if_absent("deadlineMs", n(deadline));
        }
        // Both ways: a re-sealed dataset's newer manifest unloads the old.
        if ds.manifest_loaded != old.manifest_loaded || ds.manifest_entries != old.manifest_entries
        {
            u.set("manifestLoaded", AttributeValue::Bool(ds.manifest_loaded));
            u.set("manifestEntries", n(ds.manifest_entries));
        }
        if ds.note != old.note {
            match &ds.note {
                Some(note) => u.set("note", s(note)),
                None => u.remove("note"),
            }
        }
        if ds.last_local_ms != old.last_local_ms
            && let Some(t) = ds.last_local_ms
        {
            u.set("lastLocalMs", n(t));
        }
        if ds.policy_state != old.policy_state {
            conditions.push(policy_state_update(
                &mut u,
                old.policy_state.as_ref(),
                ds.policy_state.as_ref(),
            ));
        }
        if ds.listing_ms != old.listing_ms
            && let Some(t) = ds.listing_ms
        {
            // A claim: only if no other agent claimed since this batch read.
            conditions.push(listing_claim(&mut u, old.listing_ms, t));
        }
        if ds.listed_entries != old.listed_entries {
            u.add(
                "listedEntries",
                ds.listed_entries as i64 - old.listed_entries as i64,
            );
        }
    } else if base.is_none() && unit.last {
        u.set_if_absent("firstSeenMs", n(crate::notification::time::now_ms()));
    }
    if u.is_empty() && unit.entries.is_empty() {
        return Ok(None);
    }
    // Every write to the dataset, its entries' included, moves the revision
    // a decision is conditioned on.
    u.add(REVISION, 1);
    let update = u.finish(table, key(unit.set_id, DATASET_SK));
    if conditions.is_empty() {
        update
    } else {
        let all: Vec<String> = conditions.iter().map(|c| format!("({c})")).collect();
        update.condition_expression(all.join(" AND "))
    }
    .build()
    .map(Some)
    .map_err(|e| build_error(table, e))
}

/// Writes a dataset's new policy state, on the condition that the stored
/// one is still what this batch read: two agents judging the same dataset
/// at once must not overwrite each other's state (the loser's batch runs
/// again on fresh reads). Returns the condition.
fn policy_state_update(
    u: &mut UpdateBuilder,
    old: Option<&PolicyState>,
    new: Option<&PolicyState>,
) -> String {
    let (name_attr, value_attr) = (u.name(item::POLICY_NAME), u.name(item::POLICY_STATE));
    let condition = match old {
        Some(p) => {
            let value = u.value(AttributeValue::B(Blob::new(p.value.clone())));
            let name = u.value(s(&p.policy));
            format!("{value_attr} = {value} AND {name_attr} = {name}")
        }
        None => format!("attribute_not_exists({value_attr})"),
    };
    match new {
        Some(p) => {
            u.set(item::POLICY_NAME, s(&p.policy));
            u.set(
                item::POLICY_STATE,
                AttributeValue::B(Blob::new(p.value.clone())),
            );
        }
        None => {
            u.remove(item::POLICY_NAME);
            u.remove(item::POLICY_STATE);
        }
    }
    condition
}

/// Claims a dataset's listing at `at`, on the condition that the stored
/// claim is still the one this batch read. Returns the condition.
fn listing_claim(u: &mut UpdateBuilder, old: Option<i64>, at: i64) -> String {
    let condition = u.still(item::LISTING_MS, old);
    u.set(item::LISTING_MS, n(at));
    condition
}

/// An `UpdateExpression` with placeholders for every name and value (some
/// of our attribute names are DynamoDB reserved words).
#[derive(Default)]
pub struct UpdateBuilder {
    sets: Vec<String>,
    adds: Vec<String>,
    removes: Vec<String>,
    names: HashMap<String, String>,
    values: Item,
}

impl UpdateBuilder {
    pub fn name(&mut self, attr: &str) -> String {
        let next = format!("#n{}", self.names.len());
        self.names.entry(attr.to_owned()).or_insert(next).clone()
    }

    pub fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    /// The condition that the stored number `attr` is still what was read
    /// (`None`: it was absent).
    pub fn still(&mut self, attr: &str, read: Option<i64>) -> String {
        let name = self.name(attr);
        match read {
            Some(v) => {
                let value = self.value(n(v));
                format!("{name} = {value}")
            }
            None => format!("attribute_not_exists({name})"),
        }
    }

    pub fn set(&mut self, attr: &str, v: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets.push(format!("{name} = {value}"));
    }

    pub fn set_if_absent(&mut self, attr: &str, v: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets
            .push(format!("{name} = if_not_exists({name}, {value})"));
    }

    pub fn add(&mut self, attr: &str, delta: i64) {
        let (name, value) = (self.name(attr), self.value(n(delta)));
        self.adds.push(format!("{name} {value}"));
    }

    pub fn remove(&mut self, attr: &str) {
        let name = self.name(attr);
        self.removes.push(name);
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.adds.is_empty() && self.removes.is_empty()
    }

    pub fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.adds.is_empty() {
            parts.push(format!("ADD {}", self.adds.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        parts.join(" ")
    }

    /// The update of the item at `key`; the caller may add a condition
    /// using names from [`UpdateBuilder::name`] before `build()`.
    fn finish(self, table: &str, key: Item) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        let expression = self.expression();
        let names = self
            .names
            .into_iter()
            .map(|(attr, ph)| (ph, attr))
            .collect();
        let builder = Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names));
        if self.values.is_empty() {
            builder
        } else {
            builder.set_expression_attribute_values(Some(self.values))
        }
    }
}
