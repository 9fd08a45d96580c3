//! The read side of the shared table (`/status`), and the shared outbox.
//!
//! Any agent may decide a dataset, so its event goes into an outbox
//! partition that every agent can read. For each sink one agent at a time
//! holds a lease and delivers; an event leaves the outbox once every sink
//! has it. If the holder dies, its lease runs out and another agent takes
//! over, re-sending at most the batch that was in flight (same event ids).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::item::{
    self, DATASET_SK, LEASE_PARTITION, OUTBOX_PARTITION, dataset_from_item, entry_from_item, key,
    n, s,
};
use super::table::Table;
use crate::notification::time::now_ms;
use crate::store::{
    DatasetDetail, DatasetRecord, Outbox, OutboxEvent, OutboxResult, StoreReader, StoreResult,
};

#[derive(Clone)]
pub struct DynamoReader {
    table: Table,
}

impl DynamoReader {
    pub(super) fn new(table: Table) -> Self {
        DynamoReader { table }
    }
}

/// Entries `/status/{set-id}` reads for its example paths: one Query page
/// (at about 300 bytes an entry, some 75 read units with consistent reads,
/// where a 100,000-entry dataset read whole costs some 7,500).
pub const DETAIL_PAGE_ITEMS: usize = 1000;

impl StoreReader for DynamoReader {
    /// The datasets not decided yet (listing decided ones would scan the
    /// whole table); `/status/{set-id}` shows any dataset.
    fn datasets(&self) -> StoreResult<Vec<DatasetRecord>> {
        self.table.block(super::open_datasets(&self.table))
    }

    fn dataset_detail(&self, set_id: &str, limit: usize) -> StoreResult<Option<DatasetDetail>> {
        let table = &self.table;
        let Some(found) = table.block(table.get(set_id, DATASET_SK))? else {
            return Ok(None);
        };
        let record = dataset_from_item(&found)?;
        if !record.manifest_loaded && record.counts.pending == 0 {
            return Ok(Some(DatasetDetail::from_entries(record, [], limit)));
        }
        // One page: the status page asks every 2 s, and a dataset may hold
        // 100,000 entries. The counts are exact (the dataset item); the
        // example paths come from the first entries.
        let (items, more) = table.block(table.query_page(set_id, DETAIL_PAGE_ITEMS))?;
        let mut entries = Vec::new();
        for i in &items {
            if item::get_s(i, item::SK) != Some(DATASET_SK) {
                entries.push(entry_from_item(i)?.0);
            }
        }
        let examined = entries.len() as u64;
        let mut detail = DatasetDetail::from_entries(record, entries, limit);
        detail.examined = more.then_some(examined);
        Ok(Some(detail))
    }

    fn counters(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut counters: Vec<(String, i64)> = self
            .table
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counters.push(("dynamodb_requests".into(), self.table.requests() as i64));
        counters.sort();
        Ok(counters)
    }
}

impl Outbox for DynamoReader {
    fn hold(&self, sink: &str, ttl: Duration) -> OutboxResult<bool> {
        let table = &self.table;
        let now = now_ms();
        table.count("UpdateItem");
        let result = table.block(
            table
                .client()
                .update_item()
                .table_name(&*table.name)
                .set_key(Some(key(LEASE_PARTITION, sink)))
                .update_expression("SET #owner = :me, #expires = :expires")
                .condition_expression(
                    "attribute_not_exists(#owner) OR #owner = :me OR #expires < :now",
                )
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#expires", "expiresMs")
                .expression_attribute_values(":me", s(&*table.agent_id))
                .expression_attribute_values(":expires", n(now + ttl.as_millis() as i64))
                .expression_attribute_values(":now", n(now))
                .send(),
        );
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(UpdateItemError::is_conditional_check_failed_exception) =>
            {
                Ok(false)
            }
            Err(e) => Err(table.error("taking the sink lease", e).into()),
        }
    }

    fn pending(&self, sink: &str, limit: usize) -> OutboxResult<Vec<OutboxEvent>> {
        let table = &self.table;
        let values = HashMap::from([(":sink".to_owned(), s(sink))]);
        let items = table.block(table.query(
            OUTBOX_PARTITION,
            Some(("contains(pending, :sink)", values)),
            limit,
        ))?;
        let mut events = items
            .iter()
            .map(item::outbox_from_item)
            .collect::<StoreResult<Vec<_>>>()?;
        events.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(events)
    }

    fn delivered(&self, sink: &str, events: &[OutboxEvent]) -> OutboxResult<()> {
        let table = &self.table;
        for event in events {
            table.count("UpdateItem");
            let out = table.block(
                table
                    .client()
                    .update_item()
                    .table_name(&*table.name)
                    .set_key(Some(key(OUTBOX_PARTITION, &event.id)))
                    .update_expression("DELETE pending :sink")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#pk", item::PK)
                    .expression_attribute_values(":sink", AttributeValue::Ss(vec![sink.to_owned()]))
                    .return_values(ReturnValue::AllNew)
                    .send(),
            );
            let attributes = match out {
                Ok(out) => out.attributes.unwrap_or_default(),
                // Already gone: another agent finished it.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(UpdateItemError::is_conditional_check_failed_exception) =>
                {
                    continue;
                }
                Err(e) => return Err(table.error("marking an event delivered", e).into()),
            };
            if !attributes.contains_key("pending") {
                // Every sink has it. Conditional, in case a sink was added
                // back in the meantime.
                table.count("DeleteItem");
                table
                    .block(
                        table
                            .client()
                            .delete_item()
                            .table_name(&*table.name)
                            .set_key(Some(key(OUTBOX_PARTITION, &event.id)))
                            .condition_expression("attribute_not_exists(pending)")
                            .send(),
                    )
                    .map(|_| ())
                    .or_else(|e| match e.as_service_error() {
                        Some(e) if e.is_conditional_check_failed_exception() => Ok(()),
                        _ => Err(table.error("removing a delivered event", e)),
                    })?;
            }
        }
        Ok(())
    }
}
