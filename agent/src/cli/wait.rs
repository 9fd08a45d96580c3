//! `vault-agent wait SET-ID...`: blocks until every named dataset is
//! decided, through the agent's long poll (`GET /status/{id}?wait=`), never
//! by polling. Exit 0: every one `Successful`; 1: any timed out (or
//! failed); 124: `--timeout` passed first (as `timeout(1)`); 2: the answer
//! cannot be known (the agent refuses the key, say). A set-id the agent has
//! not seen yet is waited for; an agent that restarts is reconnected to
//! with backoff, and a decision taken meanwhile is read on return.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;

/// How long one long poll asks the agent to hold.
const POLL: &str = "25s";
/// How long a request may take before it is given up on and made again
/// (the poll, plus the agent's answer under load).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

pub struct WaitArgs {
    pub set_ids: Vec<String>,
    pub base: String,
    pub api_key: Option<String>,
    pub timeout: Option<Duration>,
    pub json: bool,
    pub quiet: bool,
}

/// How one dataset ended.
#[derive(Debug, Clone)]
enum Outcome {
    Decided(Value),
    /// The agent said no for good (a refused key, a bad request).
    Refused(String),
}

/// Waits; returns the exit code.
pub async fn run(args: WaitArgs) -> u8 {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_LIMIT)
        .build()
        .unwrap_or_default();
    let progress = Progress::new(args.quiet || args.json);
    let mut tasks = JoinSet::new();
    for set_id in &args.set_ids {
        let (client, base, key, set_id, progress) = (
            client.clone(),
            args.base.clone(),
            args.api_key.clone(),
            set_id.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let outcome = wait_one(&client, &base, key.as_deref(), &set_id, &progress).await;
            (set_id, outcome)
        });
    }
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    while outcomes.len() < args.set_ids.len() {
        let next = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at, tasks.join_next()).await.ok(),
                None => Some(tasks.join_next().await),
            }
        };
        match next.await {
            None => {
                progress.clear();
                eprintln!(
                    "wait: --timeout passed; {} of {} datasets decided",
                    outcomes.len(),
                    args.set_ids.len()
                );
                return 124;
            }
            Some(Some(Ok((set_id, outcome)))) => {
                outcomes.insert(set_id, outcome);
            }
            Some(Some(Err(e))) => {
                progress.clear();
                eprintln!("wait: {e}");
                return 2;
            }
            Some(None) => break,
        }
    }
    progress.clear();
    report(&args, &outcomes)
}

fn report(args: &WaitArgs, outcomes: &HashMap<String, Outcome>) -> u8 {
    let mut code = 0;
    let mut records = Vec::new();
    for set_id in &args.set_ids {
        match outcomes.get(set_id) {
            Some(Outcome::Decided(status)) => {
                let state = status["state"].as_str().unwrap_or_default();
                if state != "succeeded" {
                    code = code.max(1);
                }
                if !args.json {
                    let what = match state {
                        "succeeded" => "File Upload Reconciliation Successful".to_owned(),
                        "timed-out" => format!(
                            "File Upload Reconciliation Timeout{}",
                            note(status).map(|n| format!(": {n}")).unwrap_or_default()
                        ),
                        other => format!(
                            "{other}{}",
                            note(status).map(|n| format!(": {n}")).unwrap_or_default()
                        ),
                    };
                    println!("{set_id}: {what}");
                }
                records.push(status.clone());
            }
            Some(Outcome::Refused(why)) => {
                eprintln!("wait: {set_id}: {why}");
                return 2;
            }
            None => return 2,
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&records) {
            Ok(text) => println!("{text}"),
            Err(_) => return 2,
        }
    }
    code
}

fn note(status: &Value) -> Option<&str> {
    status["note"].as_str().filter(|n| !n.is_empty())
}

/// Long-polls one dataset until it is decided.
async fn wait_one(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    set_id: &str,
    progress: &Progress,
) -> Outcome {
    let url = format!("{base}/status/{}", super::status::percent_encode(set_id));
    let mut since = String::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut unreachable_said = false;
    loop {
        let mut request = client
            .get(&url)
            .query(&[("wait", POLL), ("since", since.as_str())]);
        if let Some(key) = api_key {
            request = request.header("x-api-key", key);
        }
        let answer = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                // The agent restarts, or is not up yet: ask again.
                if !unreachable_said {
                    progress.line(&format!("{set_id}: cannot reach the agent ({e}); retrying"));
                    unreachable_said = true;
                }
                if let Some(delay) = backoff.next_delay() {
                    tokio::time::sleep(delay).await;
                }
                continue;
            }
        };
        let code = answer.status();
        let body: Value = match answer.text().await {
            Ok(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        match code.as_u16() {
            200 => {
                backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
                unreachable_said = false;
                since = body["version"].as_str().unwrap_or_default().to_owned();
                progress.show(set_id, &body);
                let state = body["state"].as_str().unwrap_or_default();
                if matches!(state, "succeeded" | "timed-out" | "failed") {
                    return Outcome::Decided(body);
                }
            }
            // Not seen yet: its notifications may still come.
            404 => progress.waiting(set_id),
            401 | 403 => {
                return Outcome::Refused(format!(
                    "the agent answered {code}: give its key with --api-key (or \
                     VAULT_AGENT_API_KEY), or --config with its config"
                ));
            }
            400 => {
                return Outcome::Refused(format!("the agent answered {code}: {body}"));
            }
            _ => {
                // A store the agent cannot read right now, a busy agent.
                if let Some(delay) = backoff.next_delay() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Each dataset's bar, by set-id.
type Bars = std::sync::Arc<std::sync::Mutex<HashMap<String, indicatif::ProgressBar>>>;

/// What a person at a terminal sees: a bar per dataset of uploaded over
/// manifest entries, with pending files, rate, ETA and deadline. Plain lines
/// when stderr is not a terminal; nothing with `--quiet` or `--json`.
#[derive(Clone)]
struct Progress {
    bars: Option<(indicatif::MultiProgress, Bars)>,
    plain: bool,
}

impl Progress {
    fn new(silent: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            bars: (!silent && terminal)
                .then(|| (indicatif::MultiProgress::new(), Default::default())),
            plain: !silent && !terminal,
        }
    }

    fn bar(&self, set_id: &str) -> Option<indicatif::ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            bars.entry(set_id.to_owned())
                .or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new(0));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:.bold} [{bar:30}] {pos}/{len} entries {msg}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(set_id.to_owned());
                    bar
                })
                .clone(),
        )
    }

    fn waiting(&self, set_id: &str) {
        if let Some(bar) = self.bar(set_id) {
            bar.set_message("not seen by the agent yet");
        }
    }

    fn show(&self, set_id: &str, status: &Value) {
        let entries = status["manifest-entries"].as_u64();
        let missing = status["missing"].as_u64().unwrap_or(0);
        let uploaded = entries.map(|e| e.saturating_sub(missing));
        let mut parts = Vec::new();
        if let Some(v) = status["content"]["verified-bytes"]
            .as_u64()
            .filter(|v| *v > 0)
        {
            parts.push(format!("{} verified", bytesize::ByteSize(v)));
        }
        if let Some(p) = status["pending"].as_u64().filter(|p| *p > 0) {
            parts.push(format!("{p} pending here"));
        }
        if let Some(r) = status["upload-rate-bytes-per-second"]
            .as_u64()
            .filter(|r| *r > 0)
        {
            parts.push(format!("{}/s", bytesize::ByteSize(r)));
        }
        if let Some(eta) = status["eta-seconds"].as_u64() {
            parts.push(format!(
                "ETA {}",
                humantime::format_duration(Duration::from_secs(eta))
            ));
        }
        if let Some(deadline) = status["deadline"].as_str() {
            parts.push(format!("deadline {deadline}"));
        }
        let message = parts.join(", ");
        if let Some(bar) = self.bar(set_id) {
            bar.set_length(entries.unwrap_or(0));
            bar.set_position(uploaded.unwrap_or(0));
            bar.set_message(message);
        } else if self.plain {
            let entries = match (uploaded, entries) {
                (Some(u), Some(e)) => format!("{u}/{e} entries"),
                _ => format!("{} received, no manifest yet", status["received"]),
            };
            let state = status["state"].as_str().unwrap_or_default();
            eprintln!(
                "{set_id}: {state}, {entries}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(", {message}")
                }
            );
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    fn clear(&self) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}

/// The agent's base URL and key from `--url` / `--config` / the defaults,
/// as `status` finds them.
pub fn agent_of(
    url: Option<String>,
    config: Option<&crate::config::Config>,
    api_key: Option<String>,
) -> anyhow::Result<(String, Option<String>)> {
    let mut api_key = api_key;
    let base = match (url, config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(config)) => {
            if *config.http.protect_reads.get_ref() {
                api_key = api_key.or(config.http.api_key.as_ref().map(|k| k.0.clone()));
            }
            super::status::url_for(config.http.listen)
        }
        (None, None) => super::status::url_for(crate::config::Config::default().http.listen),
    };
    if base.is_empty() {
        bail!("no agent URL");
    }
    Ok((base, api_key))
}
