//! How one commit's buffered writes become DynamoDB requests: entries
//! grouped with their dataset's counter change into transactions, the
//! conditions each write carries (versions, the dataset's revision, the
//! manifest read), and each decision as a claim of its own.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use super::item::{
    self, DATASET_SK, Item, MANIFEST_EVENT_TIME, OPEN_PARTITION, REVISION, VERSION, entry_item,
    key, n, s,
};
use super::table::{TRANSACTION_MAX, build_error};
use super::tx::DynamoTx;
use super::update::UpdateBuilder;
use crate::store::{Counts, DatasetRecord, EntryRecord, PolicyState, StoreResult};

/// The requests one commit sends.
pub(super) struct Plan {
    pub(super) transactions: Vec<Vec<TransactWriteItem>>,
    /// Per decided dataset: outcome, event and open-list removal.
    pub(super) decisions: Vec<(String, Vec<TransactWriteItem>)>,
    pub(super) decision_events: Vec<String>,
    /// Undecided datasets whose counters this commit changed by a delta:
    /// their totals may include other agents' work the batch never read.
    pub(super) revisit: Vec<String>,
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
    delta: [i64; Counts::LEN],
    /// The last unit of a dataset also carries its other fields, so a
    /// dataset never looks loaded before all its entries are in.
    last: bool,
}

impl Plan {
    pub(super) fn build(tx: &DynamoTx<'_>) -> StoreResult<Plan> {
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
                let mut delta = [0i64; Counts::LEN];
                let mut entries = Vec::new();
                let mut conditions = Vec::new();
                for (current, base) in chunk {
                    let after = EntryRecord::contribution(Some(current)).values();
                    let before = EntryRecord::contribution(base.map(|(b, _)| b)).values();
                    for k in 0..Counts::LEN {
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
