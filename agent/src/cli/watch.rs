//! `vault-agent status --watch`: a live view of a running agent, redrawn
//! every second like `vector top`: each dataset with a progress bar of
//! uploaded over manifest entries, pending files, the upload rate and ETA,
//! active datasets first. Exits on q, Esc or Ctrl-C, restoring the cursor.

use std::time::Duration;

use console::{Key, Term};
use serde_json::Value;
use tokio::sync::mpsc;

use super::status::fetch_all;

const REFRESH: Duration = Duration::from_secs(1);
const BAR: usize = 20;

pub async fn run(base: &str, api_key: Option<&str>) -> anyhow::Result<()> {
    let term = Term::stdout();
    let (keys_tx, mut keys) = mpsc::channel(4);
    // Reading a key blocks: a thread of its own, which ends with the
    // process. Without a terminal there are no keys; Ctrl-C still quits.
    if term.is_term() {
        let reader = term.clone();
        let keys_tx = keys_tx.clone();
        std::thread::spawn(move || {
            while let Ok(key) = reader.read_key() {
                if keys_tx.blocking_send(key).is_err() {
                    break;
                }
            }
        });
    }
    term.hide_cursor()?;
    let result = loop {
        let frame = match fetch_all(base, api_key).await {
            Ok(status) => render(&status, term.size().1 as usize),
            Err(e) => {
                format!("vault-agent status --watch: {e:#}\n(retrying every second; q quits)\n")
            }
        };
        term.clear_screen()?;
        term.write_str(&frame)?;
        tokio::select! {
            key = keys.recv() => match key {
                Some(Key::Char('q') | Key::Char('Q') | Key::Escape | Key::CtrlC) | None => break Ok(()),
                Some(_) => {}
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tokio::time::sleep(REFRESH) => {}
        }
    };
    term.show_cursor()?;
    term.write_line("")?;
    result
}

/// One screen: a line per dataset (active ones first), then the totals.
fn render(status: &Value, width: usize) -> String {
    let mut datasets: Vec<&Value> = status["datasets"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    datasets.sort_by_key(|d| {
        let active = matches!(d["state"].as_str(), Some("collecting" | "reconciling"));
        (!active, d["set-id"].as_str().unwrap_or_default().to_owned())
    });
    let mut out = format!(
        "vault-agent  {} datasets  (q to quit)\n\n{:<24} {:<12} {:<w$}  {:>9} {:>9} {:>10} {:>8}\n",
        datasets.len(),
        "SET-ID",
        "STATE",
        "UPLOADED",
        "ENTRIES",
        "PENDING",
        "RATE/s",
        "ETA",
        w = BAR + 2,
    );
    for d in datasets {
        let entries = d["manifest-entries"].as_u64().unwrap_or(0);
        let missing = d["missing"].as_u64().unwrap_or(0);
        let uploaded = entries.saturating_sub(missing);
        let done = match d["state"].as_str() {
            Some("succeeded") => 1.0,
            _ if entries == 0 => 0.0,
            _ => uploaded as f64 / entries as f64,
        };
        let filled = (done * BAR as f64).round() as usize;
        let line = format!(
            "{:<24} {:<12} [{}{}]  {:>9} {:>9} {:>10} {:>8}  {}",
            d["set-id"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            "#".repeat(filled.min(BAR)),
            ".".repeat(BAR - filled.min(BAR)),
            if entries > 0 {
                format!("{uploaded}/{entries}")
            } else {
                "-".into()
            },
            d["pending"].as_u64().unwrap_or(0),
            d["upload-rate-bytes-per-second"]
                .as_u64()
                .map_or("-".to_owned(), |n| bytesize::ByteSize(n).to_string()),
            d["eta-seconds"].as_u64().map_or("-".to_owned(), |s| {
                humantime::format_duration(Duration::from_secs(s)).to_string()
            }),
            d["note"].as_str().unwrap_or(""),
        );
        out.push_str(&cut(&line, width));
        out.push('\n');
    }
    if let Some(totals) = status["totals"].as_object() {
        let line: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("\ntotals: {}\n", line.join(" ")));
    }
    if status["share"]["mounted"] == Value::Bool(false) {
        out.push_str("share: NOT MOUNTED\n");
    }
    out
}

/// A line cut to the terminal's width (no wrapping garbles the redraw).
fn cut(line: &str, width: usize) -> String {
    if width == 0 {
        return line.to_owned();
    }
    line.chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn active_datasets_come_first_with_their_progress() {
        let status = json!({
            "datasets": [
                {"set-id": "A", "state": "succeeded", "manifest-entries": 4, "missing": 0},
                {"set-id": "B", "state": "reconciling", "manifest-entries": 4, "missing": 3,
                 "pending": 2, "note": "waiting"},
            ],
            "totals": {"reconciling": 1, "succeeded": 1},
        });
        let frame = super::render(&status, 200);
        let b = frame.find("\nB ").expect("B listed");
        let a = frame.find("\nA ").expect("A listed");
        assert!(b < a, "active first:\n{frame}");
        assert!(frame.contains("[#####...............]"), "{frame}");
        assert!(frame.contains("1/4"), "{frame}");
        assert!(frame.contains("[####################]"), "{frame}");
    }
}
