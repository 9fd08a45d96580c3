//! The store contract on the shared backend: the same conformance suite the
//! in-memory and SQLite stores pass in unit tests, on DynamoDB (moto).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vault_agent::store::conformance::{self, Backend, Opened};
use vault_agent::store::dynamodb::DynamoStore;

use crate::aws::Moto;
use crate::shared::create_table;

#[test]
fn dynamodb_keeps_the_store_contract() {
    let moto = Moto::start();
    // Multi-threaded: the store blocks on this runtime's handle from the
    // test thread, which only works when worker threads drive the I/O.
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let client = aws_sdk_dynamodb::Client::new(&rt.block_on(moto.sdk()));
    let tables = Arc::new(AtomicUsize::new(0));
    conformance::run(&Backend {
        name: "dynamodb",
        shared: true,
        fresh: Box::new(move || {
            let name = format!("conformance-{}", tables.fetch_add(1, Ordering::Relaxed));
            rt.block_on(create_table(&client, &name));
            let (rt, client) = (rt.clone(), client.clone());
            Box::new(move || {
                let sinks = vec!["file".to_owned(), "stdout".to_owned()];
                let store = rt
                    .block_on(DynamoStore::open(client.clone(), &name, sinks))
                    .unwrap();
                let reader = Arc::new(store.reader());
                Opened {
                    store: Box::new(store),
                    reader: reader.clone(),
                    outbox: reader,
                }
            })
        }),
    });
}

/// Observed: with the DynamoDB store, every `/status/{set-id}` read the
/// dataset's whole partition, and the status page asks every 2 s. Now one
/// request reads one page: the counts stay exact (the dataset item), the
/// example paths come from the first entries and say so.
#[test]
fn a_dataset_detail_reads_one_page_of_a_large_partition() {
    use vault_agent::store::{
        DatasetRecord, DatasetState, EntryRecord, Store, StoreReader, UploadOrigin, UploadRecord,
        Verdict,
    };
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = aws_sdk_dynamodb::Client::new(&rt.block_on(moto.sdk()));
    rt.block_on(create_table(&client, "large"));
    let mut store = rt
        .block_on(DynamoStore::open(client, "large", vec!["file".into()]))
        .unwrap();
    let reader = store.reader();
    // 6,000 entries of some 300 bytes: well over one 1 MB Query page.
    const ENTRIES: usize = 6000;
    let mut ds = DatasetRecord::new("Large", 1);
    ds.state = DatasetState::Reconciling;
    ds.manifest_loaded = true;
    ds.manifest_entries = ENTRIES as u64;
    let mut tx = store.begin().unwrap();
    for i in 0..ENTRIES {
        let key = format!("Large-vaultjob/some/deeper/directory/file-{i:06}.dat");
        let mut e = EntryRecord::new(&key, "Large");
        e.expected = Some(Some(1 << 20));
        if i % 2 == 0 {
            e.upload = Some(UploadRecord {
                object_key: key.clone(),
                bucket: "a-bucket-with-a-long-name".into(),
                size: 1 << 20,
                event_time: 1_700_000_000,
                verdict: Verdict::Count,
                matched: true,
                modified: Some(1_700_000_000),
                origin: UploadOrigin::Notified,
            });
        }
        tx.entry("Large", &key).unwrap();
        tx.put_entry(&e).unwrap();
        ds.counts += EntryRecord::contribution(Some(&e));
    }
    tx.dataset("Large").unwrap();
    tx.put_dataset(&ds).unwrap();
    tx.commit().unwrap();

    let requests = || {
        reader
            .counters()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "dynamodb_requests")
            .map(|(_, v)| v)
            .unwrap_or(0)
    };
    let before = requests();
    let detail = reader.dataset_detail("Large", 10).unwrap().unwrap();
    assert_eq!(requests() - before, 2, "one GetItem and one Query page");
    assert_eq!(detail.record.missing(), Some(ENTRIES as u64 / 2));
    assert_eq!(detail.missing.len(), 10);
    assert!(
        detail.examined.is_some_and(|n| n < ENTRIES as u64),
        "{:?}",
        detail.examined
    );
}

/// The tests' DynamoDB emulation is exactly atomic (`moto_server.py`):
/// transactions from many clients at once, half of them failing a
/// condition after their first write, never lose nor roll back another's
/// committed write. (moto alone restores a copy of the whole table taken
/// when a failing transaction began, undoing whatever committed meanwhile.)
#[test]
fn moto_transactions_are_atomic_under_concurrency() {
    use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = aws_sdk_dynamodb::Client::new(&rt.block_on(moto.sdk()));
    rt.block_on(create_table(&client, "atomic"));
    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }
    let key = |sk: &str| {
        std::collections::HashMap::from([
            ("setId".to_owned(), s("A")),
            ("objectKey".to_owned(), s(sk)),
        ])
    };
    const EACH: usize = 40;
    let tasks: Vec<_> = (0..2 * EACH)
        .map(|i| {
            let client = client.clone();
            let (counter, item) = (key("counter"), key(&format!("item-{i}")));
            let mut item_values = item.clone();
            item_values.insert("n".into(), AttributeValue::N(i.to_string()));
            rt.spawn(async move {
                let add = Update::builder()
                    .table_name("atomic")
                    .set_key(Some(counter))
                    .update_expression("ADD #c :one")
                    .expression_attribute_names("#c", "count")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .build()
                    .unwrap();
                let put = Put::builder()
                    .table_name("atomic")
                    .set_item(Some(item_values))
                    .build()
                    .unwrap();
                let mut request = client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().update(add).build())
                    .transact_items(TransactWriteItem::builder().put(put).build());
                if i % 2 == 1 {
                    // Fails after the writes above were applied in moto.
                    let never = ConditionCheck::builder()
                        .table_name("atomic")
                        .set_key(Some(key("absent")))
                        .condition_expression("attribute_exists(objectKey)")
                        .build()
                        .unwrap();
                    request = request.transact_items(
                        TransactWriteItem::builder().condition_check(never).build(),
                    );
                }
                request.send().await.is_ok()
            })
        })
        .collect();
    let committed = rt.block_on(async {
        let mut n = 0;
        for t in tasks {
            n += usize::from(t.await.unwrap());
        }
        n
    });
    assert_eq!(
        committed, EACH,
        "exactly the transactions without a failing check commit"
    );
    let items = rt
        .block_on(
            client
                .scan()
                .table_name("atomic")
                .consistent_read(true)
                .send(),
        )
        .unwrap()
        .items
        .unwrap_or_default();
    let count = items
        .iter()
        .find(|i| i.get("objectKey") == Some(&s("counter")))
        .and_then(|i| i.get("count")?.as_n().ok()?.parse::<usize>().ok());
    assert_eq!(
        count,
        Some(EACH),
        "the counter is the number of committed transactions"
    );
    let puts = items.iter().filter(|i| i.contains_key("n")).count();
    assert_eq!(puts, EACH, "every committed put, and no other, is there");
}
