//! `vault-agent plugin list | test | new`: the plugin author's tools.
//!
//! `plugin test` runs the real reconcile engine (a temporary SQLite store
//! and share) with the policy, so what it prints is what the agent would do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::watch;

use crate::notification::{Classifier, Notification, parse_body, parse_event};
use crate::outbound::Origin;
use crate::reconcile::engine::{Engine, EngineSettings};
use crate::reconcile::plugin::{
    self, Limits, PluginHost, PluginSource, SUPPORTED_PACKAGE, SUPPORTED_PACKAGES, SUPPORTED_WIT,
    WasmPolicy, bundled,
};
use crate::reconcile::policy::{
    Decision, ExpectedEntry, NATIVE_EXACT_MATCH, Policy, PolicyError, PolicyState, Summary,
    UploadVerdict, UploadView,
};
use crate::store::memory::MemoryStore;
use crate::store::{DatasetState, StoreReader};

pub fn list() {
    println!(
        "plugin interface: {SUPPORTED_PACKAGE} (the newest in wit/); new plugins build against it"
    );
    println!(
        "loads plugins built against: {}",
        SUPPORTED_PACKAGES.join(", ")
    );
    println!("bundled policies:");
    for (name, bytes) in bundled::BUNDLED {
        println!(
            "  {name:<18} {:>7} bytes  sha256 {}",
            bytes.len(),
            &plugin::host::hex(&sha(bytes))[..12]
        );
    }
    println!("  {NATIVE_EXACT_MATCH:<18} (compiled into the agent; exact-match without a sandbox)");
    println!("or set `policy = \"path/to/policy.wasm\"` to load your own component");
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

pub struct TestArgs {
    pub policy: String,
    pub manifest: PathBuf,
    pub events: PathBuf,
    pub settings: Vec<(String, String)>,
    pub json: bool,
}

/// Returns whether the dataset came out complete.
pub fn test(args: TestArgs) -> anyhow::Result<bool> {
    let classifier = Classifier::new("-vaultjob", ".manifest");
    let manifest_text = std::fs::read(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let first = String::from_utf8_lossy(&manifest_text)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .find(|l| !l.trim().is_empty())
        .context("the manifest is empty")?;
    let top = first
        .split(['/', '\t'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let set_id = top
        .strip_suffix(classifier.job_dir_suffix())
        .filter(|s| !s.is_empty())
        .with_context(|| {
            format!(
                "the manifest's first line {first:?} is not below a <SET-ID>-vaultjob directory"
            )
        })?
        .to_owned();
    let manifest_key = classifier.manifest_key(&set_id);

    let notifications = read_events(&args.events)?;
    // Without it the engine would wait for the manifest, and say nothing.
    let has_manifest = notifications
        .iter()
        .any(|n| matches!(n, Notification::Upload(u) if u.key == manifest_key));
    if !has_manifest {
        bail!(
            "{} holds no upload of the manifest {manifest_key}: the agent reconciles a dataset \
             only once its manifest is uploaded, so add that event",
            args.events.display()
        );
    }
    let uploads = notifications
        .iter()
        .filter(|n| matches!(n, Notification::Upload(_)))
        .count();

    // The policy, shared so its logs and figures can be read afterwards.
    let tmp = tempfile::tempdir()?;
    // The native rule has no logs or figures to read back: it needs no sharing.
    let policy: Box<dyn Policy>;
    let mut wasm: Option<Arc<Mutex<WasmPolicy>>> = None;
    if args.policy == NATIVE_EXACT_MATCH {
        policy = Box::new(crate::reconcile::policy::ExactMatch);
    } else {
        // Every call is made at once here: no time budget per batch.
        let limits = Limits {
            batch_budget: Duration::MAX,
            ..Limits::default()
        };
        let host = PluginHost::new(Some(tmp.path().join("cache")), limits)?;
        let source = PluginSource::for_name(&args.policy)?;
        let mut p = WasmPolicy::load_strict(
            host,
            &plugin::policy_name(&args.policy),
            source,
            args.settings.clone(),
        )?;
        p.capture_logs();
        let w = Arc::new(Mutex::new(p));
        wasm = Some(w.clone());
        policy = Box::new(SharedWasm(w));
    }

    // A share holding just the manifest, an empty store, the real engine.
    let share = tmp.path().join("share");
    let manifest_path = share.join(&manifest_key);
    std::fs::create_dir_all(
        manifest_path
            .parent()
            .context("manifest key has a folder")?,
    )?;
    std::fs::write(&manifest_path, &manifest_text)?;
    let store = MemoryStore::new();
    let reader = store.reader();
    let settings = EngineSettings {
        verify: None,
        content: None,
        share_path: share,
        classifier: classifier.clone(),
        deadline: Duration::from_secs(24 * 3600),
        origin: Origin {
            account: "000000000000".into(),
            region: "test".into(),
        },
        upload_events: false,
        max_manifest_bytes: u64::MAX,
        manifest_read_timeout: Duration::from_secs(60),
        health: Default::default(),
    };
    let (engine, handle) = Engine::new(Box::new(store), policy, settings, watch::channel(0).0);
    let thread = std::thread::spawn(move || engine.run());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        handle.ingest(notifications).await?;
        // The manifest is read on its own thread; wait for it, then re-check.
        for _ in 0..500 {
            let loaded = reader
                .datasets()?
                .iter()
                .any(|d| d.set_id == set_id && (d.manifest_loaded || d.note.is_some()));
            if loaded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle.recheck().await?;
        handle.recheck().await?;
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    let _ = thread.join();
    let elapsed = started.elapsed();

    let detail = reader.dataset_detail(&set_id, 1000)?;
    let Some(detail) = detail else {
        bail!(
            "no upload in {} belongs to dataset {set_id}",
            args.events.display()
        );
    };
    let d = &detail.record;
    let verdict = match d.state {
        DatasetState::Succeeded => "complete".to_owned(),
        DatasetState::Failed => format!("fail: {}", d.note.clone().unwrap_or_default()),
        DatasetState::Collecting => "wait: the events hold no upload of the manifest".to_owned(),
        _ => format!("wait: {}", d.note.clone().unwrap_or_default()),
    };
    let (logs, stats, load) = match &wasm {
        Some(w) => {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            (w.take_logs(), Some(w.stats()), w.load_time())
        }
        None => (Vec::new(), None, None),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "set-id": set_id, "verdict": verdict, "manifest-entries": d.manifest_entries,
                "uploads": uploads, "received": d.counts.received, "ignored": d.counts.ignored,
                "rejected": d.counts.rejected, "missing": detail.missing, "mismatched": detail.mismatched,
                "unexpected": detail.unexpected, "logs": logs,
                "calls": stats.map(|s| s.calls), "call-time-us": stats.map(|s| s.total.as_micros() as u64),
                "slowest-call-us": stats.map(|s| s.slowest.as_micros() as u64),
                "peak-memory-bytes": stats.map(|s| s.peak_memory),
                "policy-state": d.policy_state,
            }))?
        );
    } else {
        println!("dataset {set_id}: {verdict}");
        println!(
            "  manifest entries {}, uploads {uploads}, counted {}, ignored {}, rejected {}",
            d.manifest_entries, d.counts.received, d.counts.ignored, d.counts.rejected
        );
        for (label, paths) in [
            ("missing", &detail.missing),
            ("mismatched", &detail.mismatched),
            ("unexpected", &detail.unexpected),
        ] {
            if !paths.is_empty() {
                println!("  {label} ({}):", paths.len());
                for p in paths {
                    println!("    {p}");
                }
            }
        }
        if let Some(state) = &d.policy_state {
            println!("  policy state: {state}");
        }
        if !logs.is_empty() {
            println!("  plugin log:");
            for l in &logs {
                println!("    {l}");
            }
        }
        if let Some(s) = stats {
            println!(
                "  plugin: {} calls, {:.3} ms in calls (slowest {:.3} ms), peak memory {} KiB",
                s.calls,
                s.total.as_secs_f64() * 1e3,
                s.slowest.as_secs_f64() * 1e3,
                s.peak_memory / 1024
            );
        }
        if let Some((t, from)) = load {
            println!("  load: {:.1} ms ({from:?})", t.as_secs_f64() * 1e3);
        }
        println!("  engine run: {:.1} ms", elapsed.as_secs_f64() * 1e3);
    }
    Ok(d.state == DatasetState::Succeeded)
}

/// Reads an events file: a JSON array of events (what `POST /events`
/// takes), one event per line, or a single event.
fn read_events(path: &Path) -> anyhow::Result<Vec<Notification>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return parse_body(text.as_bytes())
            .with_context(|| format!("{}: a JSON array of events", path.display()));
    }
    let mut notifications = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match parse_event(line.as_bytes()) {
            Ok(n) => notifications.push(n),
            Err(e) => {
                // One event written over several lines.
                if let Ok(all) = parse_body(text.as_bytes()) {
                    return Ok(all);
                }
                return Err(e).with_context(|| {
                    format!(
                        "{}:{}: expected one event per line, or a JSON array of events",
                        path.display(),
                        i + 1
                    )
                });
            }
        }
    }
    Ok(notifications)
}

/// Lets the engine own a plugin the CLI still reads (logs, figures) afterwards.
struct SharedWasm(Arc<Mutex<WasmPolicy>>);

impl SharedWasm {
    fn lock(&self) -> std::sync::MutexGuard<'_, WasmPolicy> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Policy for SharedWasm {
    fn name(&self) -> &str {
        "shared-wasm"
    }
    fn wants_expected_sizes(&mut self, set_id: &str) -> bool {
        self.lock().wants_expected_sizes(set_id)
    }
    fn expects(
        &mut self,
        set_id: &str,
        entry: &str,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.lock().expects(set_id, entry, state)
    }
    fn begin_batch(&mut self) -> bool {
        self.lock().begin_batch()
    }
    fn on_upload(
        &mut self,
        u: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<UploadVerdict, PolicyError> {
        self.lock().on_upload(u, state)
    }
    fn entry_matches(
        &mut self,
        e: &ExpectedEntry<'_>,
        u: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.lock().entry_matches(e, u, state)
    }
    fn decide(
        &mut self,
        s: &Summary<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<Decision, PolicyError> {
        self.lock().decide(s, state)
    }
}

const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_EXACT_MATCH: &str = include_str!("../../../plugins/sdk/src/exact_match.rs");

/// Scaffolds a policy crate (with its own copy of the SDK and WIT) that
/// builds with `cargo build --release`.
pub fn new(name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    // What cargo accepts as a package name.
    if !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "plugin name {name:?}: start with a letter, then use letters, digits, '-' and '_' \
             (it names the crate)"
        );
    }
    let root = parent.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let crate_name = name.replace('-', "_");
    let files: Vec<(PathBuf, String)> = vec![
        (
            "Cargo.toml".into(),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
                 [dependencies]\nvault-policy-sdk = {{ path = \"vault-policy-sdk\" }}\n\n\
                 # A workspace of its own, so it builds wherever it is created.\n[workspace]\nmembers = [\".\", \"vault-policy-sdk\"]\n\n\
                 [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\npanic = \"abort\"\n"
            ),
        ),
        (".cargo/config.toml".into(), cargo_config()),
        (".gitignore".into(), "/target\n".into()),
        ("src/lib.rs".into(), template(name)),
        (
            "vault-policy-sdk/Cargo.toml".into(),
            "[package]\nname = \"vault-policy-sdk\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n\
             wit-bindgen = { version = \"0.61\", default-features = false, features = [\"macros\", \"realloc\", \"std\"] }\n"
                .into(),
        ),
        ("vault-policy-sdk/src/lib.rs".into(), SDK_LIB.into()),
        (
            "vault-policy-sdk/src/exact_match.rs".into(),
            SDK_EXACT_MATCH.into(),
        ),
        ("sample/SAMPLE0000000001.manifest".into(), SAMPLE_LINES.join("\n") + "\n"),
        ("sample/events.jsonl".into(), sample_events()),
        ("vault-policy-sdk/wit/reconcile.wit".into(), SUPPORTED_WIT.into()),
        (
            "README.md".into(),
            format!(
                "# {name}\n\nA vault-agent reconcile policy ({SUPPORTED_PACKAGE}).\n\n```sh\n\
                 rustup target add wasm32-wasip2      # once\n\
                 cargo build --release                # -> target/wasm32-wasip2/release/{crate_name}.wasm\n\
                 cargo test                           # unit tests, run in vault-agent's sandbox\n\
                 vault-agent plugin test --policy target/wasm32-wasip2/release/{crate_name}.wasm \\\n    --manifest sample/SAMPLE0000000001.manifest --events sample/events.jsonl\n```\n\n\
                 `sample/` holds a dataset's manifest and the gateway's upload notifications for it\n\
                 (one EventBridge event per line; a JSON array works too). Edit both to try cases.\n\n\
                 Deploy: copy the .wasm next to the agent's config and set `policy = \"{crate_name}.wasm\"`\n\
                 under `[reconcile]` (or in a `[[reconcile.route]]`). Replacing the file is picked up\n\
                 without a restart.\n"
            ),
        ),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().context("a file has a folder")?)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// Runs a test binary built for wasm32-wasip2 (see `plugin new`'s runner).
pub fn run_tests(test: &Path, args: &[String]) -> anyhow::Result<bool> {
    // A test run may use more memory than a policy call; its time limit is
    // `run_command`'s own.
    let limits = Limits {
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let host = PluginHost::new(None, limits)?;
    // The harness sees the test binary's name first, as on a native run.
    let mut argv = vec![test.display().to_string()];
    argv.extend(args.iter().cloned());
    Ok(host.run_command(test, &argv)?)
}

/// Builds for the component target; `cargo test` runs the tests in this
/// agent's sandbox (the binary that wrote the scaffold).
fn cargo_config() -> String {
    let agent = std::env::current_exe()
        .ok()
        .map_or_else(|| "vault-agent".to_owned(), |p| p.display().to_string());
    format!(
        "[build]\ntarget = \"wasm32-wasip2\"\n\n\
         # `cargo test` runs the unit tests as a component, in vault-agent's sandbox.\n\
         [target.wasm32-wasip2]\nrunner = [{agent:?}, \"plugin\", \"run-tests\"]\n"
    )
}

/// The scaffold's sample dataset: its manifest lines (the reference format).
const SAMPLE_LINES: &[&str] = &[
    "SAMPLE0000000001-vaultjob",
    "SAMPLE0000000001-vaultjob/run-01",
    "SAMPLE0000000001-vaultjob/run-01/reads.fastq",
    "SAMPLE0000000001-vaultjob/run-01/.DS_Store",
    "SAMPLE0000000001-vaultjob/SAMPLE0000000001.manifest",
];

/// One notification per manifest line, as the gateway sends them
/// (directories end with '/').
fn sample_events() -> String {
    let mut text = String::new();
    for line in SAMPLE_LINES {
        let is_dir = !line.rsplit('/').next().unwrap_or_default().contains('.');
        let key = if is_dir {
            format!("{line}/")
        } else {
            (*line).to_owned()
        };
        let size = if is_dir { 0 } else { 1024 };
        let event =
            crate::notification::sample::gateway_event("vault-bucket", &key, size).to_string();
        text.push_str(&event);
        text.push('\n');
    }
    text
}

fn template(name: &str) -> String {
    format!(
        r#"//! {name}: a vault-agent reconcile policy.
//!
//! Every hook of `Policy` defaults to exact-match; override what you change.

use vault_policy_sdk::{{Level, Policy, Settings, Upload, UploadVerdict, log}};

struct MyPolicy {{
    /// Uploads whose file name ends with one of these are ignored.
    ignore_suffixes: Vec<String>,
}}

impl Policy for MyPolicy {{
    fn init(settings: &Settings) -> Result<Self, String> {{
        settings.allow_only(&["ignore_suffixes"])?;
        let ignore_suffixes = settings.list("ignore_suffixes").into_iter().map(String::from).collect();
        Ok(MyPolicy {{ ignore_suffixes }})
    }}

    fn expects(&self, entry: &str) -> bool {{
        !self.ignore_suffixes.iter().any(|s| entry.ends_with(s.as_str()))
    }}

    fn on_upload(&self, upload: &Upload) -> UploadVerdict {{
        if self.ignore_suffixes.iter().any(|s| upload.entry.ends_with(s.as_str())) {{
            log(Level::Debug, &format!("ignoring {{}}", upload.entry));
            return UploadVerdict::Ignore;
        }}
        UploadVerdict::Count
    }}
}}

vault_policy_sdk::policy!(MyPolicy);

// `cargo test` runs these in vault-agent's sandbox (see .cargo/config.toml).
#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn listed_suffixes_are_not_expected() {{
        let settings = Settings::new(vec![("ignore_suffixes".into(), ".tmp, .DS_Store".into())]);
        let policy = MyPolicy::init(&settings).unwrap();
        assert!(!policy.expects("S-vaultjob/run-01/.DS_Store"));
        assert!(policy.expects("S-vaultjob/run-01/reads.fastq"));
    }}
}}
"#
    )
}
