//! Policy-host figures: per-hook call overhead of a bundled component,
//! and plugin load time cold (compile) and warm (from the compile cache).
//!
//!     cargo bench -p vault-agent --bench plugin

use std::time::{Duration, Instant};

use vault_agent::notification::UploadKind;
use vault_agent::reconcile::plugin::{Limits, PluginHost, PluginSource, PolicyHealth, WasmPolicy};
use vault_agent::reconcile::policy::{ExpectedEntry, Policy, Summary, UploadView};

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
        "  {name:<14} median {:>6.3} us   p99 {:>6.3} us",
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
            PolicyHealth::default(),
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
        host,
        "exact-match",
        PluginSource::Bundled("exact-match"),
        Vec::new(),
        PolicyHealth::default(),
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
    measure("on-upload", || {
        policy.on_upload(&upload).expect("call");
    });
    measure("entry-matches", || {
        policy.entry_matches(&expected, &upload).expect("call");
    });
    measure("decide", || {
        policy.decide(&summary).expect("call");
    });
    measure("expects", || {
        policy.expects(upload.set_id, upload.entry).expect("call");
    });
}
