//! Content proof on moto's S3: `Successful` means every byte, not every
//! name. Objects are put as the gateway does (the SDK computes the
//! checksum it sends; moto keeps it without checking it, so what a test
//! puts is exactly what "S3" says of the bytes). `vault` writes the
//! share's checksums while copying; the agent compares them with S3's.

use std::process::Command;

use aws_sdk_s3::types::ChecksumAlgorithm;
use serde_json::Value;

use crate::aws::runtime;
use crate::moto::Moto;
use crate::support::{AgentProcess, BIN, Env, LONG, run_ok, wait_rechecks, wait_until};

/// The bucket of `support::gateway_event`'s notifications.
const BUCKET: &str = "e2e-bucket";

fn config(moto: &Moto, reconcile: &str) -> String {
    format!(
        "[reconcile]\n{reconcile}\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    )
}

/// moto with the bucket, and an agent on it with `reconcile` settings.
fn start(
    reconcile: &str,
) -> (
    Moto,
    tokio::runtime::Runtime,
    aws_sdk_s3::Client,
    Env,
    AgentProcess,
) {
    let moto = Moto::start();
    let rt = runtime();
    let s3 = moto.s3(&rt);
    rt.block_on(s3.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let mut env = Env::new(&config(&moto, reconcile));
    env.envs = moto.envs();
    let agent = env.start();
    (moto, rt, s3, env, agent)
}

/// Puts an object as the gateway would: `checksum` None puts it with no
/// checksum at all (as objects uploaded before S3's default are).
fn put(
    rt: &tokio::runtime::Runtime,
    s3: &aws_sdk_s3::Client,
    key: &str,
    body: Vec<u8>,
    checksum: Option<ChecksumAlgorithm>,
) {
    rt.block_on(async {
        let request = s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into())
            .set_checksum_algorithm(checksum.clone());
        match checksum {
            Some(_) => request.send().await,
            None => {
                // The SDK adds a CRC32 unless told it is not required.
                request
                    .customize()
                    .config_override(
                        aws_sdk_s3::config::Config::builder().request_checksum_calculation(
                            aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                        ),
                    )
                    .send()
                    .await
            }
        }
        .unwrap();
    });
}

/// `vault-agent verify SET-ID --content` with the env's config.
fn verify_content(env: &Env, moto: &Moto, set_id: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args([
            "verify",
            set_id,
            "--content",
            "--bucket",
            BUCKET,
            "--config",
        ])
        .arg(env.config_path())
        .envs(moto.envs())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

/// A source tree of `n` files of different sizes (one over 1 MiB, so the
/// checksum spans reads), vaulted onto the share with the CLI: the
/// checksums are computed as the bytes are copied. Returns the lines.
fn vault(env: &Env, set_id: &str, n: usize) -> Vec<String> {
    let source = env.dir.path().join(format!("source-{set_id}"));
    for i in 0..n {
        let path = source.join(format!("d{}/file-{i}.bin", i % 2));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let size = if i == 0 { (1 << 20) + 17 } else { 1000 + i * 7 };
        let body: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(path, body).unwrap();
    }
    run_ok([
        "vault".as_ref(),
        "--source".as_ref(),
        source.as_os_str(),
        "--share".as_ref(),
        env.share().as_os_str(),
        "--set-id".as_ref(),
        set_id.as_ref(),
    ]);
    let manifest = env
        .share()
        .join(format!("{set_id}-vaultjob/{set_id}.manifest"));
    std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each line's notification at `time`.
fn notifications(env: &Env, lines: &[&String], time: &str) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let mut event = env.upload_for(line);
            event["time"] = Value::from(time);
            event
        })
        .collect()
}

#[test]
fn a_same_size_stale_copy_never_succeeds_and_the_reupload_is_proven() {
    let (moto, rt, s3, env, agent) =
        start("verify_content = \"required\"\nwait = \"1s\"\niterations = 3600");
    let set_id = "CONTENT00000001";
    let lines = vault(&env, set_id, 5);
    let checksums = env
        .share()
        .join(format!(".vault-agent/checksums/{set_id}.jsonl"));
    assert_eq!(
        std::fs::read_to_string(&checksums).unwrap().lines().count(),
        6,
        "every file and the manifest"
    );
    // Every object in S3 with S3's default checksum; one of them is a
    // stale copy: the same size, other bytes.
    let stale = lines.iter().find(|l| l.ends_with("file-3.bin")).unwrap();
    for line in &lines {
        let path = env.share().join(line);
        if path.is_dir() {
            put(&rt, &s3, &format!("{line}/"), Vec::new(), None);
            continue;
        }
        let mut body = std::fs::read(&path).unwrap();
        if line == stale {
            body[10] ^= 0xff;
        }
        put(&rt, &s3, line, body, Some(ChecksumAlgorithm::Crc64Nvme));
    }
    let all: Vec<&String> = lines.iter().collect();
    agent.post_events(&notifications(&env, &all, "2021-05-01T10:00:00Z"));
    let entries = lines.len() as u64;
    wait_until("every file's content checked", LONG, || {
        let c = &agent.status(Some(set_id))["content"];
        c["verified"].as_u64().unwrap_or(0) + c["mismatch"].as_u64().unwrap_or(0) == entries
    });
    wait_rechecks(&agent, 3);
    assert!(
        env.events_for(set_id).is_empty(),
        "every name was uploaded, one file's bytes were not: no Successful"
    );
    let status = agent.status(Some(set_id));
    assert_eq!(status["content"]["mismatch"], 1, "{status}");
    assert_eq!(
        status["content-mismatch-paths"][0],
        stale.as_str(),
        "{status}"
    );
    let note = status["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(stale.as_str()) && note.contains("CRC64NVME: S3 "),
        "the note names the file and both checksums: {note}"
    );
    let (code, out) = verify_content(&env, &moto, set_id);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("* {stale}  CRC64NVME: S3 ")), "{out}");

    // The gateway uploads the file again, whole: its newer notification is
    // checked again, and the dataset is proven.
    put(
        &rt,
        &s3,
        stale,
        std::fs::read(env.share().join(stale)).unwrap(),
        Some(ChecksumAlgorithm::Crc64Nvme),
    );
    agent.post_events(&notifications(&env, &[stale], "2021-05-01T11:00:00Z"));
    let events = env.wait_for_events(set_id, 1, LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let status = agent.status(Some(set_id));
    assert_eq!(status["content"]["verified"], entries, "{status}");
    assert_eq!(status["content"]["mismatch"], 0, "{status}");
    let (code, out) = verify_content(&env, &moto, set_id);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PROVEN"), "{out}");
    assert!(
        agent
            .metric("vault_agent_content_checks_total{outcome=\"mismatch\"}")
            .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn an_object_without_a_checksum_is_unverifiable_and_times_out_by_name() {
    // A deadline of 4 re-checks.
    let (moto, rt, s3, env, agent) =
        start("verify_content = \"required\"\nverify = \"off\"\nwait = \"1s\"\niterations = 4");
    let set_id = "UNVERIFIABLE001";
    // Written by another tool and sealed without checksums: the agent
    // reads each file itself.
    let lines = env.write_dataset(set_id, &["a.bin".to_owned(), "b.bin".to_owned()]);
    let old = lines.iter().find(|l| l.ends_with("b.bin")).unwrap();
    for line in &lines {
        let path = env.share().join(line);
        if path.is_dir() {
            put(&rt, &s3, &format!("{line}/"), Vec::new(), None);
        } else {
            // b.bin as uploaded before S3's default: no checksum. The rest
            // with a CRC32, which the agent computes from the file.
            let algorithm = (line != old).then_some(ChecksumAlgorithm::Crc32);
            put(&rt, &s3, line, std::fs::read(&path).unwrap(), algorithm);
        }
    }
    let all: Vec<&String> = lines.iter().collect();
    agent.post_events(&notifications(&env, &all, "2021-05-01T10:00:00Z"));
    let events = env.wait_for_events(set_id, 1, LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Timeout"
    );
    let status = agent.status(Some(set_id));
    assert_eq!(status["content"]["unverifiable"], 1, "{status}");
    assert_eq!(
        status["content"]["verified"],
        lines.len() as u64 - 1,
        "the CRC32 ones are verified: {status}"
    );
    assert_eq!(status["unverifiable-paths"][0], old.as_str(), "{status}");
    let note = status["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(old.as_str()) && note.contains("no checksum"),
        "the Timeout names the unverifiable file: {note}"
    );
    let (code, out) = verify_content(&env, &moto, set_id);
    assert_eq!(code, 3, "only unverifiable files remain: {out}");
    assert!(
        out.contains(&format!("? {old}  (S3 keeps no checksum")),
        "{out}"
    );
}
