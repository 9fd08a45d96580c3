//! Notifications per second end to end through AWS services emulated by
//! moto on loopback (SQS -> agents -> DynamoDB -> outbox -> file sink), with
//! 1 and then 3 agents sharing one queue and one table, and the DynamoDB
//! requests each notification costs.
//!
//!     cargo bench -p vault-agent --bench shared_store -- [--agents 1,3]
//!         [--datasets D] [--files F]
//!
//! All notifications are queued before the agents start; the clock runs
//! from their start to the last dataset's Successful event. moto is far
//! slower than DynamoDB (it copies the table for every transaction), so the
//! rate measures the agent against moto; requests per notification carry
//! over to the real service.

#[path = "common/mod.rs"]
mod common;
#[path = "../../tests/moto.rs"]
mod moto;

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use common::notification_json;
use moto::Moto;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use vault_agent::Agent;
use vault_agent::config;

struct Round {
    agents: usize,
    notifications: usize,
    seconds: f64,
    requests: i64,
}

fn round(agents: usize, datasets: usize, files: usize) -> Round {
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sdk = rt.block_on(moto.sdk());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");

    // The datasets on the share, and their notifications in random order.
    let mut messages = Vec::new();
    for d in 0..datasets {
        let set_id = format!("Bench{d:06}");
        let root = format!("{set_id}-vaultjob");
        std::fs::create_dir_all(share.join(&root)).expect("share");
        let mut lines = vec![root.clone()];
        messages.push(notification_json(&format!("{root}/"), 0));
        for f in 0..files {
            let line = format!("{root}/file-{f:05}.dat");
            messages.push(notification_json(&line, 100));
            lines.push(line);
        }
        let manifest = format!("{root}/{set_id}.manifest");
        lines.push(manifest.clone());
        let text = lines.join("\n") + "\n";
        std::fs::write(share.join(&manifest), &text).expect("manifest");
        messages.push(notification_json(&manifest, text.len() as u64));
    }
    messages.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
    let notifications = messages.len();

    let queue_url = rt.block_on(async {
        moto::create_table(&ddb, "vault-agent").await;
        let url = sqs
            .create_queue()
            .queue_name("uploads")
            .send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url");
        for (n, chunk) in messages.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("{n}-{i}"))
                        .message_body(body)
                        .build()
                        .expect("entry")
                })
                .collect();
            sqs.send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send");
        }
        url
    });

    let events = tmp.path().join("events.jsonl");
    let start = Instant::now();
    let mut running = Vec::new();
    for a in 0..agents {
        let text = format!(
            "[agent]\nstate_dir = \"state-{a}\"\n[share]\npath = \"share\"\nwatch = \"off\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[reconcile]\nwait = \"30s\"\n\
             [source]\nkind = \"sqs\"\nqueue_url = \"{queue_url}\"\n\
             [store]\nbackend = \"dynamodb\"\ntable = \"vault-agent\"\n\
             [[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n\
             [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
            moto.endpoint
        );
        let config = config::parse(&text, Path::new("bench.toml"), tmp.path()).expect("config");
        running.push(rt.block_on(Agent::start(&config)).expect("agent starts"));
    }
    let count_events = || {
        std::fs::File::open(&events)
            .map(|f| std::io::BufReader::new(f).lines().count())
            .unwrap_or(0)
    };
    while count_events() < datasets {
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "only {} of {datasets} events after 30 minutes",
            count_events()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut requests = 0;
    for agent in &running {
        let url = format!("http://{}/status", agent.local_addr());
        let text = rt.block_on(async {
            reqwest::get(&url)
                .await
                .expect("status")
                .text()
                .await
                .expect("status body")
        });
        let body: serde_json::Value = serde_json::from_str(&text).expect("status json");
        requests += body["counters"]["dynamodb_requests"].as_i64().unwrap_or(0);
    }
    for agent in running {
        rt.block_on(agent.shutdown());
    }
    let events_written = count_events();
    assert_eq!(events_written, datasets, "exactly one event per dataset");
    Round {
        agents,
        notifications,
        seconds,
        requests,
    }
}

/// `cargo bench --bench shared_store -- [OPTIONS]`
#[derive(clap::Parser)]
struct Args {
    /// Agent counts to run, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    agents: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    datasets: usize,
    /// Files per dataset.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let Args {
        agents,
        datasets,
        files,
        ..
    } = clap::Parser::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // The agents' own logs, to see where a slow round spends its time.
        vault_agent::logging::init(vault_agent::logging::LogFormat::Human);
    }
    println!("{datasets} datasets x {files} files, all queued first; moto on loopback; file sink");
    for n in agents {
        let r = round(n, datasets, files);
        println!(
            "agents={} notifications={} time={:.1}s rate={:.0}/s dynamodb_requests={} per_notification={:.3}",
            r.agents,
            r.notifications,
            r.seconds,
            r.notifications as f64 / r.seconds,
            r.requests,
            r.requests as f64 / r.notifications as f64
        );
    }
}
