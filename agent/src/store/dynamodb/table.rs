//! The table and the requests made to it: reads that always read the latest
//! write, queries followed to their last page, batch reads that retry what
//! DynamoDB left unprocessed, and transactions retried through contention.
//! Every request is counted, so the cost per notification can be measured.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeyType, KeysAndAttributes, PutRequest, TransactWriteItem, WriteRequest,
};
use tracing::{debug, warn};

use super::item::{Item, PK, SK, key};
use crate::backoff::Backoff;
use crate::store::{StoreError, StoreResult};

/// DynamoDB's limits per request.
const BATCH_GET_MAX: usize = 100;
const BATCH_WRITE_MAX: usize = 25;
pub const TRANSACTION_MAX: usize = 100;
const RETRIES: u32 = 8;

/// A client bound to one table, shared by the store, its readers and the
/// outbox. Calls block on the runtime they were opened on, so the engine's
/// own thread can use them.
#[derive(Clone)]
pub struct Table {
    client: Client,
    pub name: Arc<str>,
    rt: tokio::runtime::Handle,
    /// Who this agent is in sink leases: host, process and a random part.
    pub agent_id: Arc<str>,
    /// Requests sent, for `/status` and the benchmark.
    requests: Arc<AtomicU64>,
    /// This agent's counters (uploads, stray keys...): per process, not shared.
    pub counters: Arc<Mutex<BTreeMap<String, i64>>>,
}

/// Why a transaction did not apply.
#[derive(Debug)]
pub enum TransactFailure {
    /// The condition of these items (by index) did not hold.
    Condition(Vec<usize>),
    Other(StoreError),
}

impl Table {
    /// Checks that the table exists with the reference's key schema.
    pub async fn open(client: Client, name: &str) -> StoreResult<Table> {
        let table = Table {
            client,
            name: name.into(),
            rt: tokio::runtime::Handle::current(),
            agent_id: agent_id().into(),
            requests: Arc::default(),
            counters: Arc::default(),
        };
        // A transient failure (a 5xx, throttling, a dropped connection) at
        // start-up is retried with backoff, past the SDK's own attempts: an
        // agent must not refuse to start over one bad minute of DynamoDB.
        // A missing table or a denied request fails at once.
        let mut backoff = table.backoff();
        let described = loop {
            table.count("DescribeTable");
            match table.client.describe_table().table_name(name).send().await {
                Ok(described) => break described,
                Err(e) if Self::transient(&e) => {
                    warn!(table = name, error = %DisplayErrorContext(&e), "describing the table failed; retrying");
                    table
                        .retry_after(&mut backoff, "describing the table keeps failing")
                        .await?;
                }
                Err(e) => return Err(table.error("describing the table", e)),
            }
        };
        let schema = described
            .table
            .and_then(|t| t.key_schema)
            .unwrap_or_default();
        let key_of = |kind: KeyType| {
            schema
                .iter()
                .find(|k| k.key_type == kind)
                .map(|k| k.attribute_name.as_str())
        };
        if key_of(KeyType::Hash) != Some(PK) || key_of(KeyType::Range) != Some(SK) {
            return Err(StoreError::Backend {
                store: format!("DynamoDB table {name}"),
                message: format!(
                    "the table's key schema must be partition key {PK} (S) and sort key {SK} (S), as in the reference (config/cloudformation.yaml creates it); found partition {:?}, sort {:?}",
                    key_of(KeyType::Hash),
                    key_of(KeyType::Range)
                ),
            });
        }
        Ok(table)
    }

    pub fn error<E, R>(&self, what: &str, e: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug,
    {
        // The service's own code and message say it best; the full context
        // (with the raw response) only for transport errors.
        let detail = match e.as_service_error() {
            Some(service) => format!(
                "{}: {}",
                service.code().unwrap_or("error"),
                service.message().unwrap_or("(no message)")
            ),
            None => DisplayErrorContext(&e).to_string(),
        };
        let detail = crate::logging::clean_external(&detail);
        StoreError::Backend {
            store: format!("DynamoDB table {}", self.name),
            message: format!("{what}: {detail}"),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Counts one request of `operation` (for `/status` and `/metrics`).
    pub fn count(&self, operation: &'static str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::DYNAMODB_REQUESTS, "operation" => operation)
            .increment(1);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Runs a request from a thread that is not a runtime worker.
    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// One item, as of the latest write.
    pub async fn get(&self, partition: &str, sort: &str) -> StoreResult<Option<Item>> {
        self.count("GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&*self.name)
            .set_key(Some(key(partition, sort)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("reading an item", e))?;
        Ok(out.item)
    }

    /// Many items (absent ones are simply not returned), 100 per request;
    /// keys DynamoDB leaves unprocessed are asked again with backoff.
    pub async fn batch_get(&self, keys: Vec<Item>) -> StoreResult<Vec<Item>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_MAX) {
            let mut todo = chunk.to_vec();
            let mut backoff = self.backoff();
            while !todo.is_empty() {
                self.count("BatchGetItem");
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(todo))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| build_error(&self.name, e))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&*self.name, request)
                    .send()
                    .await
                    .map_err(|e| self.error("reading items", e))?;
                if let Some(mut responses) = out.responses {
                    found.extend(responses.remove(&*self.name).unwrap_or_default());
                }
                todo = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&*self.name))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !todo.is_empty() {
                    self.retry_after(&mut backoff, "BatchGetItem left keys unprocessed")
                        .await?;
                }
            }
        }
        Ok(found)
    }

    /// Puts `items`, 25 per request, retrying what DynamoDB leaves
    /// unprocessed.
    pub async fn batch_put(&self, items: Vec<Item>) -> StoreResult<()> {
        for chunk in items.chunks(BATCH_WRITE_MAX) {
            let mut requests = chunk
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| build_error(&self.name, e))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let mut backoff = self.backoff();
            while !requests.is_empty() {
                self.count("BatchWriteItem");
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&*self.name, requests)
                    .send()
                    .await
                    .map_err(|e| self.error("writing items", e))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&*self.name))
                    .unwrap_or_default();
                if !requests.is_empty() {
                    self.retry_after(&mut backoff, "BatchWriteItem left items unprocessed")
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Every item of a partition matching `filter` (if any), following
    /// `LastEvaluatedKey` to the last page, or until `limit` items.
    pub async fn query(
        &self,
        partition: &str,
        filter: Option<(&str, Item)>,
        limit: usize,
    ) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.count("Query");
            let mut values =
                HashMap::from([(":pk".to_owned(), AttributeValue::S(partition.into()))]);
            let mut request = self
                .client
                .query()
                .table_name(&*self.name)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some((expression, filter_values)) = &filter {
                request = request.filter_expression(*expression);
                values.extend(filter_values.clone());
            }
            let out = request
                .set_expression_attribute_values(Some(values))
                .send()
                .await
                .map_err(|e| self.error("querying a partition", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(last) if items.len() < limit => start = Some(last),
                _ => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    /// The first `limit` items of a partition, in one request; and whether
    /// the partition holds more.
    pub async fn query_page(
        &self,
        partition: &str,
        limit: usize,
    ) -> StoreResult<(Vec<Item>, bool)> {
        self.count("Query");
        let out = self
            .client
            .query()
            .table_name(&*self.name)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", AttributeValue::S(partition.into()))
            .consistent_read(true)
            .limit(limit.min(i32::MAX as usize) as i32)
            .send()
            .await
            .map_err(|e| self.error("querying a partition", e))?;
        Ok((
            out.items.unwrap_or_default(),
            out.last_evaluated_key.is_some(),
        ))
    }

    /// Applies all of `items` or none. Contention (another transaction on
    /// the same items) is retried with backoff; throttling and server
    /// errors the SDK's own retries already cover; a failed condition is
    /// the caller's to handle.
    pub async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), TransactFailure> {
        let mut backoff = self.backoff();
        loop {
            self.count("TransactWriteItems");
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let retryable = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    let reasons = c.cancellation_reasons();
                    let failed: Vec<usize> = reasons
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
                        .map(|(i, _)| i)
                        .collect();
                    if !failed.is_empty() {
                        return Err(TransactFailure::Condition(failed));
                    }
                    true
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
                _ => false,
            };
            if !retryable {
                return Err(TransactFailure::Other(
                    self.error("writing a transaction", e),
                ));
            }
            debug!(attempt = backoff.attempts() + 1, error = %DisplayErrorContext(&e), "transaction contended; retrying");
            self.retry_after(&mut backoff, "a transaction kept being cancelled")
                .await
                .map_err(TransactFailure::Other)?;
        }
    }

    /// Whether a failed request may succeed if sent again: no answer, a server
    /// error, or throttling.
    fn transient<E: ProvideErrorMetadata, R: std::fmt::Debug>(e: &SdkError<E, R>) -> bool {
        match e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => matches!(
                service.err().code(),
                Some(
                    "InternalServerError"
                        | "ServiceUnavailable"
                        | "ThrottlingException"
                        | "ProvisionedThroughputExceededException"
                        | "RequestLimitExceeded"
                )
            ),
            _ => false,
        }
    }

    /// The delays for retrying what DynamoDB left undone (jittered, so
    /// agents contending for one item spread out), up to [`RETRIES`].
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(20), Duration::from_secs(5)).limited(RETRIES)
    }

    /// Sleeps the next delay; an error once [`RETRIES`] are used.
    async fn retry_after(&self, backoff: &mut Backoff, what: &str) -> StoreResult<()> {
        let attempt = backoff.attempts() + 1;
        let Some(delay) = backoff.next_delay() else {
            return Err(StoreError::Backend {
                store: format!("DynamoDB table {}", self.name),
                message: format!("{what}; gave up after {RETRIES} retries"),
            });
        };
        if attempt > 3 {
            warn!(table = %self.name, attempt, "{what}; retrying");
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A request the SDK's builder refused (a required field missing).
pub fn build_error(table: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        store: format!("DynamoDB table {table}"),
        message: format!("cannot build a request: {e}"),
    }
}

fn agent_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}
