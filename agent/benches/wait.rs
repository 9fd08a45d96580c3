//! Waiters (`GET /status/{set-id}?wait=`, what `vault-agent wait` holds):
//! how long after the decision's commit each waiter has its answer, and
//! what the waiting costs the agent in memory.
//!
//!     cargo bench -p vault-agent --bench wait -- [--waiters N] [--rounds R]
//!
//! A real agent (the release binary) with the HTTP source; N clients hold
//! long polls on one dataset; the last upload is posted and its `202`
//! (returned once committed, the decision with it) starts the clock.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vault-agent");

#[derive(clap::Parser)]
struct Args {
    /// Concurrent waiters.
    #[arg(long, default_value_t = 1000)]
    waiters: usize,
    /// Datasets decided, one after the other, each with every waiter on it.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn upload(set_id: &str, key: &str, size: u64) -> Value {
    vault_agent::notification::sample::gateway_event_at(
        "bench",
        &format!("{set_id}-vaultjob/{key}"),
        size,
        "2021-05-01T10:00:00Z",
    )
}

#[tokio::main]
async fn main() {
    let args: Args = clap::Parser::parse();
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"state\"\n[share]\npath = \"share\"\nwatch = \"off\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\n\
             [[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n",
            args.waiters + 64
        ),
    )
    .unwrap();
    let mut agent = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.waiters + 8)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = rss_kib(agent.id());
    let mut latencies = Vec::new();
    let mut waiting_rss = 0;
    for round in 0..args.rounds {
        let set_id = format!("WAITBENCH{round:05}");
        let dir = share.join(format!("{set_id}-vaultjob"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), "a").unwrap();
        let manifest = format!(
            "{set_id}-vaultjob\n{set_id}-vaultjob/{set_id}.manifest\n{set_id}-vaultjob/a.bin\n"
        );
        std::fs::write(dir.join(format!("{set_id}.manifest")), &manifest).unwrap();
        let post = |events: Value| {
            let client = client.clone();
            let url = format!("{base}/events");
            async move {
                let r = client
                    .post(url)
                    .body(events.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        };
        post(json!([
            upload(&set_id, "", 0),
            upload(
                &set_id,
                &format!("{set_id}.manifest"),
                manifest.len() as u64
            ),
        ]))
        .await;
        // Until the manifest is loaded: the record stops changing.
        let url = format!("{base}/status/{set_id}");
        let version = loop {
            let d: Value =
                serde_json::from_str(&client.get(&url).send().await.unwrap().text().await.unwrap())
                    .unwrap();
            if d["manifest-entries"].as_u64() == Some(3) {
                break d["version"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let waiters: Vec<_> = (0..args.waiters)
            .map(|_| {
                let (client, url) = (client.clone(), format!("{url}?wait=60s&since={version}"));
                tokio::spawn(async move {
                    let text = client.get(url).send().await.unwrap().text().await.unwrap();
                    let d: Value = serde_json::from_str(&text).unwrap();
                    (
                        Instant::now(),
                        d["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
            })
            .collect();
        // Every waiter is held before the decision.
        loop {
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let held = text
                .lines()
                .find_map(|l| l.strip_prefix("vault_agent_http_waiters "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if held as usize >= args.waiters {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        waiting_rss = waiting_rss.max(rss_kib(agent.id()));
        post(json!([upload(&set_id, "a.bin", 1)])).await;
        let committed = Instant::now();
        for w in waiters {
            let (answered, state) = w.await.unwrap();
            assert_eq!(state, "succeeded");
            latencies.push(answered.saturating_duration_since(committed));
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!("wait: {} waiters x {} decisions", args.waiters, args.rounds);
    println!(
        "  commit -> waiter answered   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  agent RSS                   {:.1} MB idle, {:.1} MB with {} waiters ({:.1} KB each)",
        idle_rss as f64 / 1024.0,
        waiting_rss as f64 / 1024.0,
        args.waiters,
        waiting_rss.saturating_sub(idle_rss) as f64 / args.waiters as f64
    );
}
