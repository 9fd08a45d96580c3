//! `vault-agent status`: asks a running agent's `GET /status` (following
//! its pages) and prints a table, one dataset, or its pending paths; every
//! mode prints the agent's JSON instead with `--json`.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use serde_json::Value;

/// The status URL of an agent listening on `listen` (a wildcard address is
/// reached over loopback).
pub fn url_for(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// What `status` shows.
pub enum Mode {
    All,
    Dataset(String),
    Pending(String),
}

/// Datasets asked for per page.
const PAGE: usize = 1000;

/// `api_key`: sent when the agent protects its reads (`[http] protect_reads`).
pub async fn run(base: &str, api_key: Option<&str>, mode: Mode, json: bool) -> anyhow::Result<()> {
    match mode {
        Mode::All if json => {
            let whole = fetch_all(base, api_key).await?;
            println!("{}", serde_json::to_string_pretty(&whole)?);
            Ok(())
        }
        Mode::All => {
            let mut after: Option<String> = None;
            let mut first = true;
            loop {
                let page = fetch_page(base, api_key, after.as_deref()).await?;
                let datasets = page["datasets"].as_array().cloned().unwrap_or_default();
                print_rows(&datasets, first);
                first = false;
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => {
                        print_footer(&page);
                        return Ok(());
                    }
                }
            }
        }
        Mode::Dataset(id) => {
            let detail = fetch_with(base, api_key, Some(&id)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print_dataset(&detail);
            }
            Ok(())
        }
        Mode::Pending(id) => {
            let detail = fetch_with(base, api_key, Some(&id)).await?;
            if json {
                let pending = serde_json::json!({
                    "set-id": id,
                    "pending": detail["pending"],
                    "pending-bytes": detail["pending-bytes"],
                    "pending-paths": detail["pending-paths"],
                });
                println!("{}", serde_json::to_string_pretty(&pending)?);
                return Ok(());
            }
            let paths = detail["pending-paths"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let count = detail["pending"].as_u64().unwrap_or(0);
            println!(
                "{id}: {count} pending ({} bytes){}",
                detail["pending-bytes"],
                if paths.len() as u64 == count {
                    ""
                } else {
                    "; the first 100:"
                }
            );
            for p in paths {
                println!("  {}", p.as_str().unwrap_or_default());
            }
            Ok(())
        }
    }
}

/// Every page of `/status` as one answer (the last page's totals, every
/// page's datasets).
pub async fn fetch_all(base: &str, api_key: Option<&str>) -> anyhow::Result<Value> {
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut page = fetch_page(base, api_key, after.as_deref()).await?;
        if let Some(datasets) = page["datasets"].as_array_mut() {
            all.append(datasets);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => {
                page["datasets"] = Value::Array(all);
                page["next"] = Value::Null;
                return Ok(page);
            }
        }
    }
}

async fn fetch_page(
    base: &str,
    api_key: Option<&str>,
    after: Option<&str>,
) -> anyhow::Result<Value> {
    let mut url = format!("{base}/status?limit={PAGE}");
    if let Some(a) = after {
        url.push_str("&after=");
        url.push_str(&percent_encode(a));
    }
    get(&url, api_key).await
}

/// Set-ids are printable, but a query string still needs `&`, `#`, `%`,
/// `+` and spaces escaped.
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One dataset as text: its figures, then example paths per problem.
fn print_dataset(d: &Value) {
    let fields = [
        "set-id",
        "state",
        "manifest-key",
        "manifest-entries",
        "received",
        "missing",
        "unexpected",
        "mismatched",
        "pending",
        "first-notification",
        "last-notification",
        "deadline",
        "decided",
        "eta-seconds",
        "note",
    ];
    for f in fields {
        let v = &d[f];
        if !v.is_null() {
            println!(
                "{f:<20} {}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            );
        }
    }
    let c = &d["content"];
    let checked = ["verified", "mismatch", "unverifiable"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    if checked > 0 {
        println!(
            "{:<20} {} verified ({}), {} mismatched, {} unverifiable, {} pending",
            "content",
            c["verified"],
            bytesize::ByteSize(c["verified-bytes"].as_u64().unwrap_or(0)),
            c["mismatch"],
            c["unverifiable"],
            c["pending"].as_u64().map_or("?".into(), |n| n.to_string()),
        );
    }
    for list in [
        "missing-paths",
        "mismatched-paths",
        "unexpected-paths",
        "pending-paths",
        "content-mismatch-paths",
        "unverifiable-paths",
    ] {
        let paths = d[list].as_array().map(Vec::as_slice).unwrap_or_default();
        if !paths.is_empty() {
            println!("{list}:");
            for p in paths {
                println!("  {}", p.as_str().unwrap_or_default());
            }
        }
    }
}

pub async fn fetch(base: &str, set_id: Option<&str>) -> anyhow::Result<Value> {
    fetch_with(base, None, set_id).await
}

async fn fetch_with(
    base: &str,
    api_key: Option<&str>,
    set_id: Option<&str>,
) -> anyhow::Result<Value> {
    let url = match set_id {
        Some(id) => format!("{base}/status/{}", percent_encode(id)),
        None => format!("{base}/status"),
    };
    get(&url, api_key).await
}

async fn get(url: &str, api_key: Option<&str>) -> anyhow::Result<Value> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.with_context(|| {
        format!("cannot reach the agent at {url}; is `vault-agent run` running?")
    })?;
    let code = response.status();
    let body = response
        .text()
        .await
        .context("reading the agent's answer")?;
    if code == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{url} answered {code}: the agent protects its reads ([http] protect_reads); \
             give its key with --api-key (or VAULT_AGENT_API_KEY), or --config with its config"
        );
    }
    if !code.is_success() {
        bail!("{url} answered {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

/// The whole table from one answer (the demo's use).
pub fn print_table(status: &Value) {
    let datasets = status["datasets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    print_rows(datasets, true);
    print_footer(status);
}

fn print_rows(datasets: &[Value], header: bool) {
    if header && datasets.is_empty() {
        println!("no datasets seen yet");
    } else if header {
        println!(
            "{:<24} {:<12} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10} {:>9} {:>10} {:>7}  NOTE",
            "SET-ID",
            "STATE",
            "ENTRIES",
            "RECEIVED",
            "MISSING",
            "UNEXPECTED",
            "WRITTEN",
            "BYTES",
            "PENDING",
            "RATE/s",
            "ETA"
        );
    }
    let num = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    for d in datasets {
        let bytes = |v: &Value| {
            v.as_u64()
                .map_or("-".to_owned(), |n| bytesize::ByteSize(n).to_string())
        };
        println!(
            "{:<24} {:<12} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10} {:>9} {:>10} {:>7}  {}",
            d["set-id"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            num(&d["manifest-entries"]),
            num(&d["received"]),
            num(&d["missing"]),
            num(&d["unexpected"]),
            num(&d["local-files"]),
            bytes(&d["local-bytes"]),
            num(&d["pending"]),
            bytes(&d["upload-rate-bytes-per-second"]),
            d["eta-seconds"]
                .as_u64()
                .map_or("-".to_owned(), |s| humantime::format_duration(
                    std::time::Duration::from_secs(s)
                )
                .to_string()),
            d["note"].as_str().unwrap_or(""),
        );
    }
}

fn print_footer(status: &Value) {
    if let Some(totals) = status["totals"].as_object()
        && !totals.is_empty()
    {
        let line: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("datasets: {}", line.join(" "));
    }
    if status["share"]["mounted"] == Value::Bool(false) {
        println!(
            "share: {} is NOT MOUNTED; local files are not tracked",
            status["share"]["path"].as_str().unwrap_or("?")
        );
    }
    if let Some(reasons) = status["health"].as_array()
        && !reasons.is_empty()
    {
        for r in reasons {
            println!("unhealthy: {}", r.as_str().unwrap_or_default());
        }
    }
    if let Some(counters) = status["counters"].as_object()
        && !counters.is_empty()
    {
        let line: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters: {}", line.join(" "));
    }
}
