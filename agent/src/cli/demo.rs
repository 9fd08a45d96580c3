//! `vault-agent demo`: the whole flow on this machine, no AWS, no set-up.
//!
//! It starts a real agent (SQLite state, HTTP server, file sink) on a
//! temporary share, writes two sample datasets with their manifests, and
//! plays the File Gateway: upload notifications over HTTP in random order,
//! the manifest early, a repeat, directory keys ending in `/`, and keys
//! outside any dataset. One dataset is complete and reconciles; the other
//! misses a file that the "gateway" never uploads, and times out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::Agent;
use crate::config;

const SUFFIX: &str = "-vaultjob";
/// How long the simulated gateway takes to upload the complete dataset.
const UPLOAD_SPAN: Duration = Duration::from_secs(3);

/// A dataset written on the share: its set-id and every manifest line.
struct Sample {
    set_id: String,
    /// The manifest's own line (manifests are sorted: not always the last).
    manifest: String,
    lines: Vec<String>,
}

pub async fn run(files: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let share = tmp.path().join("share");
    let events_path = tmp.path().join("events.jsonl");
    std::fs::create_dir_all(&share)?;
    let deadline = deadline_for(files);
    let config_text = format!(
        "[agent]\nstate_dir = \"state\"\n[share]\npath = \"share\"\n\
        [reconcile]\nwait = \"1s\"\niterations = {}\n[http]\nlisten = \"127.0.0.1:0\"\n\
        [[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n[aws]\nregion = \"eu-west-1\"\naccount = \"123456789012\"\n",
        deadline.as_secs()
    );
    let config_path = tmp.path().join("vault-agent.toml");
    std::fs::write(&config_path, config_text)?;
    let config = config::load(&config_path)?;

    println!("vault-agent demo");
    println!("  share (the File Gateway mount)  {}", share.display());
    println!(
        "  agent state (SQLite)            {}",
        config.agent.state_dir.display()
    );
    println!(
        "  events out (file sink)          {}",
        events_path.display()
    );
    println!(
        "  reconcile: re-check every 1s, time out {}s after the manifest (the reference: 30s x 960)\n",
        deadline.as_secs()
    );

    let agent = Agent::start(&config)
        .await
        .context("cannot start the agent")?;
    let base = format!("http://{}", agent.local_addr());

    let (complete, partial) = {
        let (tmp_path, share_path) = (tmp.path().to_owned(), share.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Sample, Sample)> {
            Ok((
                write_dataset(&tmp_path, &share_path, files.max(1), "complete")?,
                write_dataset(&tmp_path, &share_path, 12, "incomplete")?,
            ))
        })
        .await??
    };
    let never_uploaded = partial
        .lines
        .iter()
        .rfind(|l| l.ends_with(".bin"))
        .cloned()
        .context("the sample has files")?;
    println!(
        "`vault` copied dataset {} ({} manifest entries) and dataset {} ({} entries; the gateway will never upload {never_uploaded})",
        complete.set_id,
        complete.lines.len(),
        partial.set_id,
        partial.lines.len()
    );
    let pending = wait_for_watcher(&base, &[&complete, &partial]).await?;
    println!(
        "the share watcher sees {pending} files and directories written here, all pending upload"
    );

    let plan = upload_plan(&share, &complete, &partial, &never_uploaded)?;
    let client = reqwest::Client::new();
    let progress = ProgressBar::new(plan.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} gateway uploads [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pause = UPLOAD_SPAN / plan.len().max(1) as u32;
    let complete_prefix = format!("{}{SUFFIX}/", complete.set_id);
    let mut last_commit = Instant::now();
    // Watch the sink while uploading, so the latency is measured, not the
    // demo's own pacing.
    let watch_success = {
        let (path, set_id) = (events_path.clone(), complete.set_id.clone());
        tokio::spawn(async move { wait_for_event(&path, &set_id, deadline + EVENT_SLACK).await })
    };
    for (i, chunk) in plan.chunks(1 + i_rand(3)).enumerate() {
        let body: Vec<&Value> = chunk.iter().map(|(_, event)| event).collect();
        let body = if body.len() == 1 {
            body[0].to_string()
        } else {
            json!(body).to_string()
        };
        let response = client
            .post(format!("{base}/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("posting a notification to the agent")?;
        if response.status().as_u16() != 202 {
            bail!(
                "the agent refused a notification: {} {}",
                response.status(),
                response.text().await?
            );
        }
        if chunk.iter().any(|(_, e)| {
            e["detail"]["object-key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&complete_prefix))
        }) {
            last_commit = Instant::now();
        }
        progress.inc(chunk.len() as u64);
        progress.set_message(
            chunk
                .last()
                .map(|(label, _)| label.clone())
                .unwrap_or_default(),
        );
        if i % 25 == 0 && progress.is_hidden() {
            println!("  uploads notified: {}/{}", progress.position(), plan.len());
        }
        tokio::time::sleep(pause * chunk.len() as u32).await;
    }
    progress.finish_with_message("all notified");

    let success = watch_success.await??;
    let success_latency = success.1.saturating_duration_since(last_commit);
    let outcome = success.0["detail-type"].as_str().unwrap_or("?").to_owned();
    println!("\n{outcome} for {}:", complete.set_id);
    println!("{}", serde_json::to_string_pretty(&success.0)?);
    if outcome != "File Upload Reconciliation Successful" {
        agent.shutdown().await;
        bail!(
            "the complete dataset {} was not reconciled before its {}s deadline: this machine \
             is too busy for the demo's pace; try again with fewer --files",
            complete.set_id,
            deadline.as_secs()
        );
    }

    println!("\nwaiting for {} to reach its deadline...", partial.set_id);
    let timeout = wait_for_event(&events_path, &partial.set_id, deadline + EVENT_SLACK).await?;
    let detail = crate::cli::status::fetch(&base, Some(&partial.set_id)).await?;
    let status = crate::cli::status::fetch(&base, None).await?;

    println!("\nsummary");
    println!(
        "  {}  {}  {} entries, event written {:.1} ms after its last upload notification was accepted",
        complete.set_id,
        success.0["detail-type"].as_str().unwrap_or("?"),
        complete.lines.len(),
        success_latency.as_secs_f64() * 1e3
    );
    println!(
        "  {}  {}  missing: {}; still pending upload here: {}",
        partial.set_id,
        timeout.0["detail-type"].as_str().unwrap_or("?"),
        detail["missing-paths"],
        detail["pending-paths"]
    );
    println!(
        "  ignored: {} keys outside any *{SUFFIX} directory; repeats absorbed, directory keys with '/' matched",
        status["counters"]["outside_keys"]
    );
    println!(
        "  the reference pipeline polls every 30 s: ~15 s on average from the last upload to its event"
    );
    println!(
        "\nnext: `vault-agent check-config --config config/vault-agent.toml --state-dir state`, then `vault-agent run` with the same options"
    );
    agent.shutdown().await;
    Ok(())
}

/// Waiting for an event beyond its deadline: a busy machine is slow.
const EVENT_SLACK: Duration = Duration::from_secs(60);

/// The demo's deadline grows with the files the gateway has to notify, so a
/// large or slowed-down run never times out its complete dataset.
fn deadline_for(files: usize) -> Duration {
    UPLOAD_SPAN + Duration::from_secs(5) + Duration::from_millis(20 * files as u64)
}

fn i_rand(n: usize) -> usize {
    rand::rng().random_range(0..n)
}

fn random_set_id() -> String {
    let mut rng = rand::rng();
    (0..16)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// Makes a source tree of `files` random files and copies it onto the share
/// with the real `vault` command (which writes the manifest last).
fn write_dataset(tmp: &Path, share: &Path, files: usize, label: &str) -> anyhow::Result<Sample> {
    let mut rng = rand::rng();
    let source = tmp.join(format!("source-{label}"));
    let dirs = (files / 25).clamp(1, 12);
    for f in 0..files {
        let dir = source.join(format!("run-{:02}", f % dirs));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut data = vec![0u8; rng.random_range(512..8192)];
        rng.fill(&mut data[..]);
        let path = dir.join(format!("sample-{f:04}.bin"));
        std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    }
    let classifier = crate::notification::Classifier::new(SUFFIX, ".manifest");
    let report =
        crate::share::vault::vault(&source, share, Some(&random_set_id()), 4, &classifier)?;
    let manifest = report.dest.join(format!("{}.manifest", report.set_id));
    let lines = std::fs::read_to_string(&manifest)?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(Sample {
        manifest: format!("{}{SUFFIX}/{}.manifest", report.set_id, report.set_id),
        set_id: report.set_id,
        lines,
    })
}

/// The notifications the "gateway" sends, labelled for the progress bar.
fn upload_plan(
    share: &Path,
    complete: &Sample,
    partial: &Sample,
    never: &str,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut rng = rand::rng();
    let mut plan = Vec::new();
    for sample in [complete, partial] {
        let manifest_line = &sample.manifest;
        let mut keys: Vec<&String> = sample
            .lines
            .iter()
            .filter(|l| l.as_str() != never && *l != manifest_line)
            .collect();
        keys.shuffle(&mut rng);
        // The small manifest tends to be uploaded early.
        let at = rng.random_range(0..=keys.len().min(5));
        keys.insert(at, manifest_line);
        plan.push(keys);
    }
    // Interleave the two datasets' uploads, then add a repeat and strays.
    let (a, b) = (plan[0].clone(), plan[1].clone());
    let mut merged: Vec<&String> = Vec::new();
    let ratio = (a.len() / b.len().max(1)).max(1);
    let (mut ia, mut ib) = (a.into_iter(), b.into_iter());
    loop {
        let mut progressed = false;
        for _ in 0..ratio {
            if let Some(k) = ia.next() {
                merged.push(k);
                progressed = true;
            }
        }
        if let Some(k) = ib.next() {
            merged.push(k);
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    let repeat = merged[merged.len() / 2].clone();
    let mut out = Vec::new();
    for (i, line) in merged.iter().enumerate() {
        out.push(notification(share, line)?);
        if i == merged.len() / 2 {
            out.push(notification(share, &repeat)?);
            out.push(stray("scratch/notes.txt"));
        }
    }
    out.push(stray("backup-2021/readme.md"));
    Ok(out)
}

fn notification(share: &Path, line: &str) -> anyhow::Result<(String, Value)> {
    let path: PathBuf = share.join(line);
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    let (key, size) = if meta.is_dir() {
        (format!("{line}/"), 0)
    } else {
        (line.to_owned(), meta.len())
    };
    let label = key
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(&key)
        .to_owned();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let mut event = gateway_event(&key, size);
    event["detail"]["modification-time"] =
        json!(crate::notification::time::format_event_time(mtime));
    Ok((label, event))
}

fn stray(key: &str) -> (String, Value) {
    (key.to_owned(), gateway_event(key, 42))
}

/// A gateway notification from the demo's bucket.
fn gateway_event(key: &str, size: u64) -> Value {
    crate::notification::sample::gateway_event("vault-demo-bucket", key, size)
}

/// Waits until the watcher has seen every file of the samples; returns how many.
async fn wait_for_watcher(base: &str, samples: &[&Sample]) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        let status = crate::cli::status::fetch(base, None).await?;
        let seen: Vec<u64> = samples
            .iter()
            .map(|s| {
                status["datasets"]
                    .as_array()
                    .and_then(|a| a.iter().find(|d| d["set-id"] == s.set_id.as_str()))
                    .and_then(|d| d["pending"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if samples
            .iter()
            .zip(&seen)
            .all(|(s, n)| *n == s.lines.len() as u64)
        {
            return Ok(seen.iter().sum());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the share watcher did not see the samples; see the logs (RUST_LOG=info)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the file sink until the event of `set_id` shows up.
async fn wait_for_event(
    path: &Path,
    set_id: &str,
    limit: Duration,
) -> anyhow::Result<(Value, Instant)> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line)
                    && v["detail"]["set-id"] == set_id
                {
                    return Ok((v, Instant::now()));
                }
            }
        }
        if start.elapsed() > limit {
            bail!(
                "no event for dataset {set_id} after {limit:?}; see the agent's logs (RUST_LOG=info)"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
