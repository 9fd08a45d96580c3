//! Replays upload notifications through the whole pipeline of a real agent:
//! JSON text -> parse -> classify -> durable SQLite commit -> reconcile ->
//! file sink, and prints throughput, the delay from the commit of a dataset's
//! last notification to its Successful event being written, and peak RSS.
//!
//!     cargo bench -p vault-agent --bench replay -- [--notifications N] [--datasets D]
//!         [--sync full|normal] [--batch B] [--policy exact-match|exact-match-native|...]
//!         [--metrics on|off] [--verify off|before-timeout|periodic]
//!
//! Each dataset has 100 sub-directories; notifications arrive in a random
//! order (directory keys with their S3 `/`), each manifest at a random place
//! in the first 10% of the stream (the gateway uploads the small manifest
//! early as often as not).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use vault_agent::config::SyncMode;
use vault_agent::notification::parse_event;

/// `cargo bench --bench replay -- [OPTIONS]`
#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    notifications: usize,
    #[arg(long, default_value_t = 10)]
    datasets: usize,
    /// SQLite durability: full or normal.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sync: String,
    /// Notifications per engine submission.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// A bundled policy, exact-match-native, or a .wasm path.
    #[arg(long, default_value = "exact-match")]
    policy: String,
    /// Prometheus metrics ([http] metrics), on as shipped; off to measure
    /// what they cost.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    metrics: String,
    /// `[reconcile] verify`: the S3 cross-check. Nothing times out here,
    /// so it should cost nothing (its S3 endpoint is never called).
    #[arg(long, default_value = "off", value_parser = ["off", "before-timeout", "periodic"])]
    verify: String,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn sync(&self) -> SyncMode {
        if self.sync == "normal" {
            SyncMode::Normal
        } else {
            SyncMode::Full
        }
    }
}

/// Line `index` of a dataset's manifest (root, 100 dirs, files, the manifest
/// last), computed rather than stored so the bench's own memory stays small.
fn dataset_line(set_id: &str, entries: usize, index: usize) -> String {
    let root = format!("{set_id}-vaultjob");
    let dirs = 100.min(entries.saturating_sub(2));
    match index {
        0 => root,
        i if i <= dirs => format!("{root}/dir-{:03}", i - 1),
        i if i == entries - 1 => format!("{root}/{set_id}.manifest"),
        i => {
            let f = i - dirs - 1;
            format!("{root}/dir-{:03}/file-{f:07}.bin", f % dirs.max(1))
        }
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let args: Args = clap::Parser::parse();
    let per_dataset = args.notifications / args.datasets;
    let tmp = tempfile::tempdir().expect("temp dir");
    let share = tmp.path().join("share");
    let sink_path = tmp.path().join("events.jsonl");

    // The share: each dataset's manifest (data files are not needed: the
    // exact-match policy compares names).
    let set_ids: Vec<String> = (0..args.datasets)
        .map(|d| format!("BENCH{d:011}"))
        .collect();
    for set_id in &set_ids {
        let dir = share.join(format!("{set_id}-vaultjob"));
        std::fs::create_dir_all(&dir).expect("dataset dir");
        let mut text = String::new();
        for i in 0..per_dataset {
            text.push_str(&dataset_line(set_id, per_dataset, i));
            text.push('\n');
        }
        std::fs::write(dir.join(format!("{set_id}.manifest")), text).expect("manifest");
    }

    // The order of arrival.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut order: Vec<(u32, u32)> = Vec::with_capacity(args.notifications);
    let mut manifests = Vec::new();
    for d in 0..args.datasets {
        for l in 0..per_dataset - 1 {
            order.push((d as u32, l as u32));
        }
        manifests.push((d as u32, (per_dataset - 1) as u32));
    }
    order.shuffle(&mut rng);
    let early = (order.len() / 10).max(1);
    for m in manifests {
        let at = rng.random_range(0..early);
        order.insert(at, m);
    }
    let total = order.len();
    let mut last_position = vec![0usize; args.datasets];
    for (i, (d, _)) in order.iter().enumerate() {
        last_position[*d as usize] = i;
    }
    let last_batch: Vec<usize> = last_position.iter().map(|p| p / args.batch).collect();

    let config_text = format!(
        "[agent]\nstate_dir = \"state\"\n[share]\npath = \"share\"\n[http]\nlisten = \"127.0.0.1:0\"\nmetrics = {}\n\
         [store]\nsync = \"{}\"\n[reconcile]\npolicy = \"{}\"\nverify = \"{}\"\n[[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n\
         [aws]\nendpoint_url = \"http://127.0.0.1:9\"\n",
        args.metrics == "on",
        if args.sync() == SyncMode::Full {
            "full"
        } else {
            "normal"
        },
        args.policy,
        args.verify
    );
    let (runtime, agent) = common::start_agent(&config_text, tmp.path());
    let engine = agent.engine().clone();

    // Sink watcher: when did each dataset's event appear in the file?
    let (written_tx, written_rx) = std_mpsc::channel::<(String, Instant)>();
    let expected_events = args.datasets;
    let tail_path = sink_path.clone();
    let tail = std::thread::spawn(move || {
        let mut seen = 0;
        let mut offset = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while seen < expected_events && Instant::now() < deadline {
            if let Ok(file) = std::fs::File::open(&tail_path) {
                let mut reader = BufReader::new(file);
                std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset)).ok();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                    offset += line.len() as u64;
                    let now = Instant::now();
                    let v: serde_json::Value = serde_json::from_str(&line).expect("event JSON");
                    let set_id = v["detail"]["set-id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = written_tx.send((set_id, now));
                    seen += 1;
                    line.clear();
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });

    // Collector: when did each batch commit?
    let (commit_tx, commit_rx) = std_mpsc::channel::<(usize, Instant)>();
    let (receipt_tx, mut receipt_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, _)>();
    runtime.spawn(async move {
        while let Some((batch, rx)) = receipt_rx.recv().await {
            let rx: tokio::sync::oneshot::Receiver<_> = rx;
            match rx.await {
                Ok(Ok(_)) => {
                    let _ = commit_tx.send((batch, Instant::now()));
                }
                other => panic!(
                    "batch {batch} was not committed: {:?}",
                    other.map(|r| r.map(|_| ()))
                ),
            }
        }
    });

    // Producer: build each notification's JSON, parse, classify, submit.
    let start = Instant::now();
    let mut batch = Vec::with_capacity(args.batch);
    let mut batch_no = 0;
    for (i, (d, l)) in order.iter().enumerate() {
        let line = dataset_line(&set_ids[*d as usize], per_dataset, *l as usize);
        let is_dir = !line.ends_with(".bin") && !line.ends_with(".manifest");
        let key = if is_dir { format!("{line}/") } else { line };
        let json = common::notification_json(&key, if is_dir { 0 } else { 1_048_576 });
        batch.push(parse_event(json.as_bytes()).expect("valid notification"));
        if batch.len() == args.batch || i + 1 == total {
            let items = engine.classify(std::mem::take(&mut batch));
            let rx = runtime
                .block_on(engine.submit(items))
                .expect("engine running");
            receipt_tx.send((batch_no, rx)).expect("collector running");
            batch_no += 1;
        }
    }
    drop(receipt_tx);

    let mut commits: HashMap<usize, Instant> = HashMap::new();
    while commits.len() < batch_no {
        let (b, t) = commit_rx
            .recv_timeout(Duration::from_secs(600))
            .expect("commits");
        commits.insert(b, t);
    }
    let last_commit = commits.values().max().copied().expect("at least one batch");
    let elapsed = last_commit - start;

    let mut written: HashMap<String, Instant> = HashMap::new();
    while written.len() < args.datasets {
        let (set_id, t) = written_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("every dataset's event");
        written.insert(set_id, t);
    }
    tail.join().expect("tail thread");
    let mut delays: Vec<Duration> = set_ids
        .iter()
        .enumerate()
        .map(|(d, s)| written[s].saturating_duration_since(commits[&last_batch[d]]))
        .collect();
    delays.sort();

    let events = std::fs::read_to_string(&sink_path).expect("sink file");
    let successes = events
        .lines()
        .filter(|l| l.contains("File Upload Reconciliation Successful"))
        .count();
    assert_eq!(successes, args.datasets, "one Successful event per dataset");

    println!(
        "replay: {total} notifications, {} datasets x {per_dataset} entries, batch {}, sync {:?}, policy {}, metrics {}, verify {}",
        args.datasets, args.batch, args.sync, args.policy, args.metrics, args.verify
    );
    println!(
        "  throughput        {:>10.0} notifications/s ({:.2} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  commit -> event   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (last notification's commit to Successful event written)",
        percentile(&delays, 0.5).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    println!("  peak RSS          {:>10.1} MB", peak_rss_mb());
    runtime.block_on(agent.shutdown());
}
