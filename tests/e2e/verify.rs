//! Lost notifications heal: datasets cross-checked against the S3 listing
//! of their prefix, on moto's S3. The agent records objects never notified
//! as listed uploads and decides as usual; `vault-agent verify` answers the
//! same question from the command line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::aws::runtime;
use crate::moto::Moto;
use crate::support::{BIN, Env, file_names};

const BUCKET: &str = "vault-bucket";

/// Puts each manifest line as the gateway writes it: a directory as an
/// empty `key/` object, a file with its bytes on the share.
async fn put_lines(s3: &aws_sdk_s3::Client, share: &Path, lines: &[&String]) {
    for line in lines {
        let path = share.join(line);
        let (key, body) = if path.is_dir() {
            (format!("{line}/"), Vec::new())
        } else {
            (line.to_string(), std::fs::read(&path).unwrap())
        };
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
}

/// The gateway's notification for a line, from `bucket`.
fn notification(env: &Env, line: &str, bucket: &str) -> Value {
    let mut event = env.upload_for(line);
    event["detail"]["bucket-name"] = json!(bucket);
    event
}

fn aws_config(moto: &Moto, reconcile: &str, store: &str) -> String {
    format!(
        "[reconcile]\n{reconcile}\n{store}\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    )
}

/// `vault-agent verify` with the env's config: (exit code, stdout).
fn verify(env: &Env, moto: &Moto, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("verify")
        .args(args)
        .arg("--config")
        .arg(env.config_path())
        .envs(moto.envs())
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "verify failed ({code}): {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

#[test]
fn lost_notifications_heal_through_the_listing_and_what_s3_lacks_times_out_by_name() {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    // Periodic listings after 1 s (at the 5 s re-checks); deadlines 20 s
    // away. A listing may hold a Timeout back by one re-check: generous, so
    // a slow listing on a busy machine still lands in it.
    let mut env = Env::new(&aws_config(
        &moto,
        "wait = \"5s\"\niterations = 4\nverify = \"periodic\"\nverify_after = \"1s\"\nverify_every = \"1s\"",
        "",
    ))
    .with_share(&format!("bucket = \"{BUCKET}\""));
    env.envs = moto.envs();
    let agent = env.start();

    // HEALS: every object in S3, 30% of its notifications never sent (the
    // manifest's among those sent).
    let heals = "HealsByListing01";
    let lines = env.write_dataset(heals, &file_names(20));
    rt.block_on(put_lines(
        &s3,
        &env.share(),
        &lines.iter().collect::<Vec<_>>(),
    ));
    let lost: Vec<&String> = lines
        .iter()
        .filter(|l| !l.ends_with(".manifest"))
        .step_by(3)
        .collect();
    let sent: Vec<Value> = lines
        .iter()
        .filter(|l| !lost.contains(l))
        .map(|l| notification(&env, l, BUCKET))
        .collect();
    assert_eq!(agent.post(&json!(sent).to_string()).0, 202);

    // LACKS: one file never reached S3 (nor was notified).
    let lacks = "LacksOneObject01";
    let lines = env.write_dataset(lacks, &file_names(4));
    let absent = lines.iter().find(|l| l.ends_with(".dat")).unwrap().clone();
    let present: Vec<&String> = lines.iter().filter(|l| **l != absent).collect();
    rt.block_on(put_lines(&s3, &env.share(), &present));
    let sent: Vec<Value> = present
        .iter()
        .map(|l| notification(&env, l, BUCKET))
        .collect();
    assert_eq!(agent.post(&json!(sent).to_string()).0, 202);

    // DENIED: its bucket cannot be listed; it must not hold up the others.
    let denied = "ListingFails0001";
    let lines = env.write_dataset(denied, &file_names(2));
    let sent: Vec<Value> = lines
        .iter()
        .skip(1)
        .map(|l| notification(&env, l, "no-such-bucket"))
        .collect();
    assert_eq!(agent.post(&json!(sent).to_string()).0, 202);

    // The healed dataset succeeds long before its deadline.
    let events = env.wait_for_events(heals, 1, Duration::from_secs(60));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let status = agent.status(Some(heals));
    assert_eq!(status["listed-entries"], lost.len(), "{status}");
    let deadline = status["deadline"].as_str().unwrap().to_owned();
    assert!(
        status["decided"].as_str().unwrap() < deadline.as_str(),
        "{status}"
    );
    // Its records show which entries came from the listing.
    let db = rusqlite::Connection::open_with_flags(
        env.dir.path().join("state/vault-agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let listed: Vec<String> = db
        .prepare("SELECT key FROM entries WHERE listed = 1 AND key LIKE 'HealsByListing01%' ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut expected: Vec<String> = lost.iter().map(|l| l.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(agent.logs().contains("S3 listing applied"));

    // The incomplete one times out at its deadline, naming what S3 lacks.
    let events = env.wait_for_events(lacks, 1, Duration::from_secs(90));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Timeout"
    );
    let note = agent.status(Some(lacks))["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("S3 lacks 1 manifest entries") && note.contains(&absent),
        "{note}"
    );
    // The unlistable one times out too, saying why.
    let events = env.wait_for_events(denied, 1, Duration::from_secs(90));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Timeout"
    );
    let note = agent.status(Some(denied))["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("S3 listing failed") && note.contains("NoSuchBucket"),
        "{note}"
    );

    // `verify` says the same from the command line.
    assert_eq!(verify(&env, &moto, &[heals]).0, 0);
    let (code, out) = verify(&env, &moto, &[lacks, "--json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["complete"], false);
    assert_eq!(report["missing"], json!([absent]));
    assert_eq!(report["unexpected"], json!([]));
    assert_eq!(report["bucket"], BUCKET);
    assert_eq!(report["prefix"], format!("{lacks}-vaultjob/"));
    assert_eq!(report["list-requests"], 1);
}

#[test]
fn verify_follows_every_page_of_a_large_prefix() {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let mut env =
        Env::new(&aws_config(&moto, "", "")).with_share(&format!("bucket = \"{BUCKET}\""));
    env.envs = moto.envs();
    env.start_config();
    // 1,050 files: two pages of ListObjectsV2.
    let set_id = "ManyObjects00001";
    let names: Vec<String> = (0..1050).map(|i| format!("f{i:05}.bin")).collect();
    let lines = env.write_dataset(set_id, &names);
    rt.block_on(put_lines(
        &s3,
        &env.share(),
        &lines.iter().collect::<Vec<_>>(),
    ));
    let (code, out) = verify(&env, &moto, &[set_id, "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["listed-objects"], lines.len());
    assert_eq!(report["list-requests"], 2);
    // A local file whose size differs from its object is named.
    std::fs::write(
        env.share().join(&lines[5]),
        b"rewritten, longer than before",
    )
    .unwrap();
    let (code, out) = verify(&env, &moto, &[set_id]);
    assert_eq!(code, 1);
    assert!(
        out.contains("size in S3 differs from the share (1)") && out.contains(&lines[5]),
        "{out}"
    );
}

/// The sum of a counter over agents' `/metrics`.
fn counter(agents: &[&crate::support::AgentProcess], name: &str) -> f64 {
    agents.iter().map(|a| a.metric(name).unwrap_or(0.0)).sum()
}

#[test]
fn two_agents_on_the_shared_store_list_a_dataset_once_and_send_one_event() {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    let ddb = aws_sdk_dynamodb::Client::new(&rt.block_on(moto.sdk()));
    rt.block_on(async {
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        crate::moto::create_table(&ddb, "vault-agent").await;
    });
    // Deadline 10 s after the manifest; listing only before a timeout,
    // within one generous re-check (10 s) even on a busy machine.
    let mut env = Env::new(&aws_config(
        &moto,
        "wait = \"10s\"\niterations = 1\nverify = \"before-timeout\"",
        "[store]\nbackend = \"dynamodb\"\ntable = \"vault-agent\"",
    ));
    env.envs = moto.envs();
    let a = env.start_with_state("state-a");
    let b = env.start_with_state("state-b");
    let set_ids = ["SharedListing001", "SharedListing002", "SharedListing003"];
    for (i, set_id) in set_ids.iter().enumerate() {
        let lines = env.write_dataset(set_id, &file_names(6));
        rt.block_on(put_lines(
            &s3,
            &env.share(),
            &lines.iter().collect::<Vec<_>>(),
        ));
        // A third of the notifications lost; the rest reach either agent.
        let sent: Vec<Value> = lines
            .iter()
            .enumerate()
            .filter(|(j, l)| j % 3 != 1 || l.ends_with(".manifest"))
            .map(|(_, l)| notification(&env, l, BUCKET))
            .collect();
        let agent = if i % 2 == 0 { &a } else { &b };
        assert_eq!(agent.post(&json!(sent).to_string()).0, 202);
    }
    for set_id in set_ids {
        let events = env.wait_for_events(set_id, 1, Duration::from_secs(90));
        assert_eq!(
            events[0]["detail-type"],
            "File Upload Reconciliation Successful"
        );
    }
    // Both agents re-check every dataset; one listed each (one page each).
    let listed = counter(&[&a, &b], "vault_agent_s3_list_requests_total");
    assert_eq!(listed, set_ids.len() as f64);
    // Later re-checks send nothing more.
    crate::support::wait_rechecks(&a, 1);
    crate::support::wait_rechecks(&b, 1);
    for set_id in set_ids {
        assert_eq!(env.events_for(set_id).len(), 1, "{set_id}");
        assert!(a.status(Some(set_id))["listed-entries"].as_u64().unwrap() > 0);
    }
    // verify_content (report, as with AWS by default): every file's bytes
    // proven, each object fetched by exactly one agent, notified or listed
    // (6 files and the manifest per dataset; directories have no bytes).
    for set_id in set_ids {
        crate::support::wait_until("every file's content checked", crate::support::LONG, || {
            let d = a.status(Some(set_id));
            d["content"]["verified"] == d["manifest-entries"]
        });
    }
    crate::support::wait_rechecks(&a, 2);
    crate::support::wait_rechecks(&b, 2);
    let heads = counter(&[&a, &b], "vault_agent_s3_head_requests_total");
    assert_eq!(
        heads,
        (set_ids.len() * 7) as f64,
        "one HeadObject per object"
    );
}

/// A proxy in front of moto's S3 that answers the first `refuse` listing
/// requests with `status` and an S3 error `code`, and counts every listing.
struct RefusingS3 {
    server: crate::support::TestServer,
    listings: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RefusingS3 {
    fn start(upstream: String, refuse: usize, status: u16, code: &'static str) -> RefusingS3 {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listings = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = listings.clone();
        let client = reqwest::Client::new();
        let handler = move |req: axum::extract::Request| {
            let (upstream, seen, client) = (upstream.clone(), seen.clone(), client.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let query = parts.uri.query().unwrap_or("");
                if query.contains("list-type=2") && seen.fetch_add(1, Ordering::SeqCst) < refuse {
                    let xml = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                         <Message>injected by the test</Message></Error>"
                    );
                    return axum::response::Response::builder()
                        .status(status)
                        .header("content-type", "application/xml")
                        .body(axum::body::Body::from(xml))
                        .unwrap();
                }
                let url = format!("{upstream}{}", parts.uri);
                let mut forward = client
                    .request(parts.method.clone(), url)
                    .body(body.to_vec());
                for (name, value) in &parts.headers {
                    if name != "host" {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.send().await.unwrap();
                let mut reply = axum::response::Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    reply = reply.header(name, value);
                }
                reply
                    .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                    .unwrap()
            }
        };
        let app = axum::Router::new().fallback(handler);
        RefusingS3 {
            server: crate::support::serve(app),
            listings,
        }
    }

    fn listings(&self) -> usize {
        self.listings.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn denied_and_throttled_listings_are_retried_without_holding_up_other_datasets() {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    // The first listing is denied; the agent's retry gets through.
    let proxy = RefusingS3::start(moto.endpoint.clone(), 1, 403, "AccessDenied");
    let mut env = Env::new(&format!(
        "[reconcile]\nwait = \"5s\"\niterations = 1\nverify = \"before-timeout\"\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        proxy.server.base
    ));
    env.envs = moto.envs();
    let agent = env.start();
    let healed = "DeniedThenListed";
    let lines = env.write_dataset(healed, &file_names(3));
    rt.block_on(put_lines(
        &s3,
        &env.share(),
        &lines.iter().collect::<Vec<_>>(),
    ));
    let lost = lines.iter().find(|l| l.ends_with(".dat")).unwrap().clone();
    let sent: Vec<Value> = lines
        .iter()
        .filter(|l| **l != lost)
        .map(|l| notification(&env, l, BUCKET))
        .collect();
    assert_eq!(agent.post(&json!(sent).to_string()).0, 202);
    // Another dataset, complete by its notifications, decides meanwhile.
    let other = "NotifiedInFull01";
    let sent: Vec<Value> = env
        .write_dataset(other, &file_names(3))
        .iter()
        .map(|l| notification(&env, l, BUCKET))
        .collect();
    assert_eq!(agent.post(&json!(sent).to_string()).0, 202);
    let events = env.wait_for_events(other, 1, Duration::from_secs(60));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );

    let events = env.wait_for_events(healed, 1, Duration::from_secs(90));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful",
        "{}",
        agent.logs()
    );
    assert!(
        agent.logs().contains("AccessDenied"),
        "the denial is logged"
    );
    assert_eq!(proxy.listings(), 2, "one denied, one retried");
    assert_eq!(agent.status(Some(healed))["listed-entries"], 1);

    // `verify` rides out throttling: the SDK retries SlowDown itself.
    let throttled = RefusingS3::start(moto.endpoint.clone(), 2, 503, "SlowDown");
    let config = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace(&proxy.server.base, &throttled.server.base);
    std::fs::write(env.config_path(), config).unwrap();
    let (code, out) = verify(&env, &moto, &[healed, "--bucket", BUCKET, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(throttled.listings(), 3, "two throttled, then listed");
}

/// Observed: `verify --manifest FIFO` hung, reading a FIFO nobody wrote.
/// It now opens a named manifest as the agent opens one: no link in the
/// last place, never blocking, regular files only.
#[test]
fn verify_refuses_a_manifest_that_is_not_a_regular_file() {
    let env = Env::new("");
    let fifo = env.dir.path().join("manifest.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    env.start_config();
    let mut child = Command::new(BIN)
        .args(["verify", "Fifo0000", "--bucket", BUCKET, "--manifest"])
        .arg(&fifo)
        .arg("--config")
        .arg(env.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.is_some(), "verify hung on a FIFO");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file (a FIFO)"), "{stderr}");
}
