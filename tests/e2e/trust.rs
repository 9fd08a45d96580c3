//! Every `Successful` is true: each way the landed agent once broke that
//! promise (issue 19), replayed with the real binary. Each test failed on
//! the code before the fix.

use serde_json::{Value, json};

use crate::aws::runtime;
use crate::moto::Moto;
use crate::support::{AgentProcess, Env, LONG, wait_rechecks, wait_until};

const BUCKET: &str = "trust-bucket";

fn put(rt: &tokio::runtime::Runtime, s3: &aws_sdk_s3::Client, key: &str, body: Vec<u8>) {
    rt.block_on(
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into())
            .send(),
    )
    .unwrap();
}

fn aws(moto: &Moto) -> String {
    format!(
        "[aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    )
}

/// `/status/{set-id}`, or Null while the agent has not seen the dataset.
fn status_of(agent: &AgentProcess, set_id: &str) -> Value {
    crate::support::http_get(&format!("{}/status/{set_id}", agent.base))
        .filter(|(code, _)| *code == 200)
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or(Value::Null)
}

fn at(mut event: Value, time: &str) -> Value {
    event["time"] = json!(time);
    event
}

/// Observation 1: with the DynamoDB store, a re-sealed dataset went
/// `Successful` on its old manifest although the re-seal's new file was
/// never uploaded (`manifestLoaded` was only ever written true).
#[test]
fn a_resealed_dataset_on_dynamodb_is_decided_on_its_new_manifest() {
    let moto = Moto::start();
    let rt = runtime();
    rt.block_on(async {
        let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk().await);
        crate::moto::create_table(&ddb, "vault-agent").await;
    });
    let mut env = Env::new(&format!(
        "[reconcile]\nwait = \"250ms\"\niterations = 2400\n\
         [store]\nbackend = \"dynamodb\"\ntable = \"vault-agent\"\n{}",
        aws(&moto)
    ));
    env.envs = moto.envs();
    let agent = env.start();
    let set_id = "Resealed00000001";
    let lines = env.write_dataset(set_id, &["a.dat".into(), "b.dat".into()]);
    let first: Vec<Value> = lines
        .iter()
        .filter(|l| !l.ends_with("b.dat"))
        .map(|l| env.upload_for(l))
        .collect();
    agent.post_events(&first);
    wait_until("the first manifest loaded", LONG, || {
        agent.status(Some(set_id))["manifest-entries"] == 4
    });

    // Re-sealed with one more file: a newer manifest notification.
    let resealed = env.write_dataset(set_id, &["a.dat".into(), "b.dat".into(), "c.dat".into()]);
    let manifest = resealed.last().unwrap();
    agent.post_events(&[at(env.upload_for(manifest), "2021-05-01T11:00:00Z")]);
    wait_until("the new manifest loaded", LONG, || {
        agent.status(Some(set_id))["manifest-entries"] == 5
    });
    agent.post_events(&[env.upload_for(&format!("{set_id}-vaultjob/b.dat"))]);
    wait_rechecks(&agent, 8);
    let status = agent.status(Some(set_id));
    assert!(
        env.events_for(set_id).is_empty(),
        "decided on the old manifest: {status}"
    );
    assert_eq!(status["missing"], 1, "{status}");

    agent.post_events(&[env.upload_for(&format!("{set_id}-vaultjob/c.dat"))]);
    let events = env.wait_for_events(set_id, 1, LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    wait_rechecks(&agent, 4);
    assert_eq!(env.events_for(set_id).len(), 1);
}

/// A dataset whose `big.dat` (1 MiB on the share) was never notified, and
/// whose S3 object is at first a 100-byte partial copy: the listing must
/// not count it until S3 holds the whole file, then must.
fn partial_copy_is_counted_only_once_whole(policy: &str, set_id: &str) {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let mut env = Env::new(&format!(
        "[reconcile]\npolicy = \"{policy}\"\nwait = \"250ms\"\niterations = 2400\n\
         verify = \"periodic\"\nverify_after = \"1ms\"\nverify_every = \"100ms\"\n{}",
        aws(&moto)
    ))
    .with_share(&format!("bucket = \"{BUCKET}\""));
    env.envs = moto.envs();
    let agent = env.start();

    let lines = env.write_dataset(set_id, &["a.dat".into(), "big.dat".into()]);
    let big = format!("{set_id}-vaultjob/big.dat");
    let whole = vec![7u8; 1 << 20];
    std::fs::write(env.share().join(&big), &whole).unwrap();
    wait_until("the watcher sees big.dat", LONG, || {
        status_of(&agent, set_id)["local-bytes"]
            .as_u64()
            .is_some_and(|b| b >= 1 << 20)
    });
    put(&rt, &s3, &big, whole[..100].to_vec());
    let sent: Vec<Value> = lines
        .iter()
        .filter(|l| **l != big)
        .map(|l| {
            let mut e = env.upload_for(l);
            e["detail"]["bucket-name"] = json!(BUCKET);
            e
        })
        .collect();
    agent.post_events(&sent);

    // Listed with the partial copy in S3 (or, before the fix, counted).
    wait_until("a listing of the partial copy", LONG, || {
        let s = agent.status(Some(set_id));
        s["listed-entries"].as_u64().unwrap_or(0) > 0
            || s["note"]
                .as_str()
                .is_some_and(|n| n.contains("partial or stale in S3"))
            || !env.events_for(set_id).is_empty()
    });
    wait_rechecks(&agent, 8);
    let status = agent.status(Some(set_id));
    assert!(
        env.events_for(set_id).is_empty(),
        "a partial copy was counted: {status}"
    );
    let note = status["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("{big} (S3 holds 100 bytes, the share 1048576)")),
        "{status}"
    );

    // The gateway finishes the upload: the next listing counts it.
    put(&rt, &s3, &big, whole);
    let events = env.wait_for_events(set_id, 1, LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let status = agent.status(Some(set_id));
    assert_eq!(status["listed-entries"], 1, "{status}");
}

/// Observation 3: with `verify = "periodic"` and exact-match, a 100-byte
/// partial copy of a 1 MiB file was recorded from the listing and the
/// dataset went `Successful`.
#[test]
fn a_partial_copy_listed_in_s3_never_makes_a_dataset_successful() {
    partial_copy_is_counted_only_once_whole("exact-match", "PartialCopy00001");
}

/// Observation 4: with `size-verified`, a partial copy recorded by one
/// listing was never replaced by later ones, even once S3 held the whole
/// object; the dataset timed out.
#[test]
fn with_size_verified_the_whole_object_replaces_a_partial_copy() {
    partial_copy_is_counted_only_once_whole("size-verified", "PartialCopy00002");
}

/// Observation 5: beside idle datasets listed periodically, a dataset
/// that S3 held completely timed out, "the S3 listing of the dataset did
/// not finish within one re-check": every re-check claimed the idle ones
/// again while their listings were still queued, the queue grew, and each
/// result whose claim had been replaced was dropped.
#[test]
fn a_listing_backlog_never_times_out_a_dataset_s3_holds() {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    // Listings are paced at 2 requests/s while 31 datasets are due every
    // re-check: far more claims than listings.
    let mut env = Env::new(&format!(
        "[reconcile]\nwait = \"1s\"\niterations = 8\n\
         verify = \"periodic\"\nverify_after = \"1ms\"\nverify_every = \"100ms\"\n\
         verify_requests_per_second = 2\n{}",
        aws(&moto)
    ))
    .with_share(&format!("bucket = \"{BUCKET}\""));
    env.envs = moto.envs();
    let agent = env.start();
    for i in 0..30 {
        let idle = format!("IdleDataset{i:05}");
        let lines = env.write_dataset(&idle, &["x.dat".into()]);
        agent.post_events(&[env.upload_for(&lines[1])]);
    }
    // Sorts after the idle ones: the last listing of each round.
    let set_id = "ZzHeldByS3000001";
    let lines = env.write_dataset(set_id, &["a.dat".into(), "b.dat".into()]);
    for line in &lines {
        let path = env.share().join(line);
        if path.is_dir() {
            put(&rt, &s3, &format!("{line}/"), Vec::new());
        } else {
            put(&rt, &s3, line, std::fs::read(&path).unwrap());
        }
    }
    let lost = format!("{set_id}-vaultjob/b.dat");
    wait_until("the watcher sees b.dat", LONG, || {
        status_of(&agent, set_id)["local-files"]
            .as_u64()
            .is_some_and(|n| n >= 3)
    });
    let sent: Vec<Value> = lines
        .iter()
        .filter(|l| **l != lost)
        .map(|l| {
            let mut e = env.upload_for(l);
            e["detail"]["bucket-name"] = json!(BUCKET);
            e
        })
        .collect();
    agent.post_events(&sent);
    let events = env.wait_for_events(set_id, 1, LONG);
    let status = agent.status(Some(set_id));
    assert_eq!(
        events[0]["detail-type"], "File Upload Reconciliation Successful",
        "{status}"
    );
    assert_eq!(status["listed-entries"], 1, "{status}");
}
