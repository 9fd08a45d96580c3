//! Policy-host figures: per-hook call overhead of a bundled component, the
//! cost of reading and writing a dataset's policy state (the bundled
//! `marker` policy), plugin load time cold (compile) and warm (from the
//! compile cache), and
//! how long other datasets' notifications wait while a slow policy (about
//! 20 ms per call) has a large dataset to judge.
//!
//!     cargo bench -p vault-agent --bench plugin

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use vault_agent::notification::UploadKind;
use vault_agent::reconcile::plugin::{HealthSlot, Limits, PluginHost, PluginSource, WasmPolicy};
use vault_agent::reconcile::policy::{ExpectedEntry, Policy, PolicyState, Summary, UploadView};

const CALLS: usize = 200_000;

fn median_and_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn measure(name: &str, mut call: impl FnMut()) {
    for _ in 0..10_000 {
        call();
    }
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        call();
        samples.push(t.elapsed());
    }
    let (median, p99) = median_and_p99(samples);
    println!(
        "  {name:<20} median {:>6.3} us   p99 {:>6.3} us",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn main() {
    let cache = tempfile::tempdir().expect("temp dir");
    // Calls are timed back to back, outside engine batches: no batch budget.
    let limits = Limits {
        batch_budget: Duration::MAX,
        ..Limits::default()
    };
    let host = PluginHost::new(Some(cache.path().to_owned()), limits).expect("host");
    println!(
        "plugin load (bundled exact-match, {} KiB):",
        vault_agent::reconcile::plugin::bundled::bytes("exact-match").map_or(0, |b| b.len() / 1024)
    );
    for round in [
        "cold (compile + cache write)",
        "warm (compile cache)",
        "warm (compile cache)",
    ] {
        let t = Instant::now();
        let p = WasmPolicy::load(
            host.clone(),
            "exact-match",
            PluginSource::Bundled("exact-match"),
            Vec::new(),
            HealthSlot::default(),
        );
        let total = t.elapsed();
        let (load, from) = p.load_time().expect("loads");
        println!(
            "  {round:<30} {:>8.2} ms ({from:?}, instantiate + init included; {:.2} ms total)",
            load.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }

    let mut policy = WasmPolicy::load(
        host.clone(),
        "exact-match",
        PluginSource::Bundled("exact-match"),
        Vec::new(),
        HealthSlot::default(),
    );
    let upload = UploadView {
        set_id: "K9x2QpLm7Vb3Ra1Z",
        object_key: "K9x2QpLm7Vb3Ra1Z-vaultjob/dir-012/file-0004711.bin",
        entry: "K9x2QpLm7Vb3Ra1Z-vaultjob/dir-012/file-0004711.bin",
        size: 1_048_576,
        event_time: 1_619_863_200,
        kind: UploadKind::Data,
    };
    let expected = ExpectedEntry {
        entry: upload.entry,
        size: Some(1_048_576),
    };
    let summary = Summary {
        set_id: upload.set_id,
        manifest_entries: 100_000,
        received: 99_999,
        matched: 99_999,
        mismatched: 0,
        missing: 1,
        unexpected: 0,
        ignored: 0,
        rejected: 0,
    };
    println!("per-hook call overhead ({CALLS} calls each, deadline + memory cap armed):");
    let mut state = None;
    measure("on-upload", || {
        policy.on_upload(&upload, &mut state).expect("call");
    });
    measure("entry-matches", || {
        policy
            .entry_matches(&expected, &upload, &mut state)
            .expect("call");
    });
    measure("decide", || {
        policy.decide(&summary, &mut state).expect("call");
    });
    measure("expects", || {
        policy
            .expects(upload.set_id, upload.entry, &mut state)
            .expect("call");
    });

    policy_state_cost(host, &upload, &summary);
    slow_policy_isolation(&upload);
}

/// The bundled `marker` policy writes the state in `on-upload` of its
/// marker and reads it in every `decide`: those calls against the same
/// hooks of a call that touches no state.
fn policy_state_cost(
    host: std::sync::Arc<PluginHost>,
    upload: &UploadView<'_>,
    summary: &Summary<'_>,
) {
    let mut marker = WasmPolicy::load(
        host,
        "marker",
        PluginSource::Bundled("marker"),
        Vec::new(),
        HealthSlot::default(),
    );
    let marker_upload = UploadView {
        object_key: "K9x2QpLm7Vb3Ra1Z-vaultjob/_SUCCESS",
        entry: "K9x2QpLm7Vb3Ra1Z-vaultjob/_SUCCESS",
        size: 0,
        ..*upload
    };
    println!("policy state (bundled marker policy, {CALLS} calls each):");
    let mut state = None;
    measure("on-upload, no state", || {
        marker.on_upload(upload, &mut state).expect("call");
    });
    measure("on-upload, write", || {
        marker.on_upload(&marker_upload, &mut state).expect("call");
    });
    assert!(matches!(&state, Some(PolicyState { policy, .. }) if policy == "marker"));
    measure("decide, read", || {
        marker.decide(summary, &mut state).expect("call");
    });
}

/// The chaos test component, built by the agent's build script.
fn chaos_fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("OUT_DIR"), "/plugins/fixture_chaos.wasm"))
}

/// A `spin` count that makes the chaos component's `on-upload` take about
/// `target` on this machine.
fn calibrate_spin(
    host: &std::sync::Arc<PluginHost>,
    upload: &UploadView<'_>,
    target: Duration,
) -> u64 {
    let mut spin: u64 = 1_000_000;
    loop {
        let mut p = WasmPolicy::load(
            host.clone(),
            "slow",
            PluginSource::File(chaos_fixture()),
            vec![
                ("mode".into(), "slow".into()),
                ("hook".into(), "on-upload".into()),
                ("spin".into(), spin.to_string()),
            ],
            HealthSlot::default(),
        );
        let t = Instant::now();
        for _ in 0..5 {
            p.on_upload(upload, &mut None).expect("slow call");
        }
        let per_call = t.elapsed() / 5;
        if per_call >= target / 2 {
            return (spin as f64 * target.as_secs_f64() / per_call.as_secs_f64()) as u64;
        }
        spin *= 4;
    }
}

/// A real agent (SQLite, bundled exact-match by default) with `SLOW*`
/// routed to a policy taking ~20 ms per call: one 2000-file slow dataset is
/// submitted, then single notifications for other datasets are timed from
/// submit to durable commit (what a POST's 202 waits for).
fn slow_policy_isolation(upload: &UploadView<'_>) {
    use vault_agent::notification::parse_event;

    const SLOW_FILES: usize = 2000;
    const PROBES: usize = 400;
    let limits = Limits {
        call_timeout: Duration::from_secs(5),
        batch_budget: Duration::MAX,
        ..Limits::default()
    };
    let calib = tempfile::tempdir().expect("temp dir");
    let host = PluginHost::new(Some(calib.path().to_owned()), limits).expect("host");
    let spin = calibrate_spin(&host, upload, Duration::from_millis(20));

    let tmp = tempfile::tempdir().expect("temp dir");
    let share = tmp.path().join("share");
    let mut manifest = String::from("SLOW0000000001-vaultjob\n");
    for f in 0..SLOW_FILES {
        manifest.push_str(&format!("SLOW0000000001-vaultjob/f{f:05}.bin\n"));
    }
    let dir = share.join("SLOW0000000001-vaultjob");
    std::fs::create_dir_all(&dir).expect("dataset dir");
    std::fs::write(dir.join("SLOW0000000001.manifest"), manifest).expect("manifest");
    let config_text = format!(
        "[agent]\nstate_dir = \"state\"\n[share]\npath = \"share\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [reconcile]\nplugin_timeout = \"5s\"\n\
         [[reconcile.route]]\nset_ids = \"SLOW*\"\npolicy = \"{}\"\n\
         policy_config = {{ mode = \"slow\", hook = \"on-upload\", spin = \"{spin}\" }}\n\
         [[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n",
        chaos_fixture().display()
    );
    let (runtime, agent) = common::start_agent(&config_text, tmp.path());
    let engine = agent.engine().clone();
    let event = |key: &str| {
        parse_event(common::notification_json(key, 1).as_bytes()).expect("valid notification")
    };
    let mut slow: Vec<_> = (0..SLOW_FILES)
        .map(|f| event(&format!("SLOW0000000001-vaultjob/f{f:05}.bin")))
        .collect();
    slow.push(event("SLOW0000000001-vaultjob/SLOW0000000001.manifest"));
    let t = Instant::now();
    runtime
        .block_on(engine.ingest(slow))
        .expect("slow dataset committed");
    let slow_commit = t.elapsed();

    let mut waits = Vec::with_capacity(PROBES);
    for i in 0..PROBES {
        let probe = vec![event(&format!("FAST{:010}-vaultjob/file.bin", i % 20))];
        let t = Instant::now();
        runtime
            .block_on(engine.ingest(probe))
            .expect("probe committed");
        waits.push(t.elapsed());
    }
    let (median, p99) = median_and_p99(waits.clone());
    let max = waits.iter().max().copied().unwrap_or_default();
    println!(
        "slow-policy isolation (~20 ms per call, spin {spin}; {SLOW_FILES} uploads routed to it):"
    );
    println!(
        "  its own 2001-notification POST committed in {:.1} ms",
        slow_commit.as_secs_f64() * 1e3
    );
    println!(
        "  other datasets' notifications ({PROBES}): median {:.2} ms, p99 {:.2} ms, max {:.2} ms (submit to durable commit)",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    runtime.block_on(agent.shutdown());
}
