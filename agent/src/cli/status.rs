//! `vault-agent status`: asks a running agent's `GET /status` and prints a
//! table (or the JSON with `--json`).

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

pub async fn fetch(base: &str, set_id: Option<&str>) -> anyhow::Result<Value> {
    let url = match set_id {
        Some(id) => format!("{base}/status/{id}"),
        None => format!("{base}/status"),
    };
    let response = reqwest::get(&url).await.with_context(|| {
        format!("cannot reach the agent at {url}; is `vault-agent run` running?")
    })?;
    let code = response.status();
    let body = response
        .text()
        .await
        .context("reading the agent's answer")?;
    if !code.is_success() {
        bail!("{url} answered {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

pub fn print_table(status: &Value) {
    let datasets = status["datasets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if datasets.is_empty() {
        println!("no datasets seen yet");
    } else {
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
    if let Some(counters) = status["counters"].as_object()
        && !counters.is_empty()
    {
        let line: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters: {}", line.join(" "));
    }
}
