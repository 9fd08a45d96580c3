//! The shared store: one DynamoDB table (the reference's key schema) that
//! several agents write at once, each from its own engine thread.
//!
//! - `item.rs`: records as items, and the sort keys that cannot collide.
//! - `table.rs`: the requests (consistent reads, paginated queries, batch
//!   reads and writes with retries, transactions), counted.
//! - `tx.rs`: one engine batch: conditional entry writes, counter deltas and
//!   decisions that exactly one agent wins.
//! - `outbox.rs`: the read side, and the shared outbox with its sink leases.

// Public (hidden) for the end-to-end history checker, which reads the
// table's items as the agent does.
#[doc(hidden)]
pub mod item;
mod outbox;
mod plan;
mod table;
mod tx;
mod update;

pub use outbox::DynamoReader;
pub use table::Table;

use crate::store::{DatasetRecord, Store, StoreResult, StoreTx};
use item::{DATASET_SK, OPEN_PARTITION, key};

pub struct DynamoStore {
    table: Table,
    /// Every configured sink: an event stays in the outbox until each has it.
    sinks: Vec<String>,
    next_seq: i64,
}

impl DynamoStore {
    /// Opens `table` after checking its key schema. Call on the runtime.
    pub async fn open(
        client: aws_sdk_dynamodb::Client,
        table: &str,
        sinks: Vec<String>,
    ) -> StoreResult<DynamoStore> {
        Ok(DynamoStore {
            table: Table::open(client, table).await?,
            sinks,
            next_seq: 0,
        })
    }

    pub fn reader(&self) -> DynamoReader {
        DynamoReader::new(self.table.clone())
    }
}

/// Datasets on the open list, read in batches. A decided dataset left on
/// the list (an agent re-listed it while another decided) is taken off.
pub(crate) async fn open_datasets(table: &Table) -> StoreResult<Vec<DatasetRecord>> {
    let listed = table.query(OPEN_PARTITION, None, usize::MAX).await?;
    let keys = listed
        .iter()
        .filter_map(|i| item::get_s(i, item::SK))
        .map(|set_id| key(set_id, DATASET_SK))
        .collect();
    let mut open = Vec::new();
    for found in table.batch_get(keys).await? {
        let ds = item::dataset_from_item(&found)?;
        if ds.state.is_decided() {
            table.count("DeleteItem");
            // Best effort: the next listing tries again.
            let _ = table
                .client()
                .delete_item()
                .table_name(&*table.name)
                .set_key(Some(key(OPEN_PARTITION, &ds.set_id)))
                .send()
                .await;
        } else {
            open.push(ds);
        }
    }
    open.sort_by(|a, b| (a.first_seen_ms, &a.set_id).cmp(&(b.first_seen_ms, &b.set_id)));
    Ok(open)
}

impl Store for DynamoStore {
    fn open_datasets(&mut self) -> StoreResult<Vec<DatasetRecord>> {
        self.table.block(open_datasets(&self.table))
    }

    fn begin(&mut self) -> StoreResult<Box<dyn StoreTx + '_>> {
        Ok(Box::new(tx::DynamoTx::new(
            &self.table,
            &self.sinks,
            &mut self.next_seq,
        )))
    }
}
