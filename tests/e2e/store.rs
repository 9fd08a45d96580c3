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
