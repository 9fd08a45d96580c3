//! `vault-agent check-config`: every check `run` makes, with no side
//! effects, then what the config resolves to. `OK` is printed last, and only
//! when everything passed.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Config, SourceConfig, StoreBackend, VerifyMode};
use crate::reconcile::plugin::{self, PolicyHealth};

/// `state_dir` overrides the config's, as `run --state-dir` does.
pub async fn run(path: &Path, state_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let c = config::load(path)?.with_state_dir(state_dir.map(Path::to_owned));
    let mut problems = Vec::new();
    if let Err(e) = crate::preflight::check(&c) {
        problems.push(e.to_string());
    }
    describe(&c);
    // Load every configured policy with its settings, so a broken plugin
    // or a refused setting shows up now.
    let reconcile = c.reconcile.clone();
    let plugins = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let cache = tempfile::tempdir()?;
        let health = PolicyHealth::default();
        plugin::build(&reconcile, cache.path(), &health)?;
        let health = health
            .lock()
            .map_err(|_| anyhow::anyhow!("plugin health poisoned"))?;
        Ok(health.values().cloned().collect())
    })
    .await??;
    for p in plugins {
        match &p.last_error {
            Some(e) => {
                println!("  policy     {} ({}): DOES NOT LOAD", p.name, p.source);
                problems.push(format!("policy {} ({}): {e}", p.name, p.source));
            }
            None => println!("  policy     {} ({}): loads", p.name, p.source),
        }
    }
    if problems.is_empty() {
        println!("{}: OK", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    eprintln!("{}: {} problem(s)", path.display(), problems.len());
    Ok(ExitCode::FAILURE)
}

fn describe(c: &Config) {
    println!("  state_dir  {}", c.agent.state_dir.display());
    println!(
        "  share      {} (datasets *{}, manifests <SET-ID>{}, up to {})",
        c.share.path.display(),
        c.share.job_dir_suffix.0,
        c.share.manifest_suffix.0,
        c.share.max_manifest_bytes
    );
    println!(
        "  reconcile  policy {}, re-check every {} x {} (deadline {})",
        c.reconcile.policy.get_ref(),
        c.reconcile.wait,
        c.reconcile.iterations,
        humantime::format_duration(c.reconcile.deadline())
    );
    for route in &c.reconcile.routes {
        println!(
            "  route      set-ids {} -> policy {}",
            route.set_ids.get_ref(),
            route.policy.get_ref()
        );
    }
    let bucket = c
        .share
        .bucket
        .as_deref()
        .map_or("the manifest's bucket".to_owned(), |b| {
            format!("the manifest's bucket, else {b}")
        });
    match c.verify_mode() {
        VerifyMode::Off => println!("  verify     off (no S3 listing)"),
        VerifyMode::BeforeTimeout => {
            println!(
                "  verify     before-timeout: list a dataset's prefix in {bucket} before it times out"
            )
        }
        VerifyMode::Periodic => println!(
            "  verify     periodic: every {} after {} waiting, and before a timeout; in {bucket}",
            c.reconcile.verify_every, c.reconcile.verify_after
        ),
    }
    match (c.store.backend(), c.store.table()) {
        (StoreBackend::Dynamodb, Some(table)) => {
            println!("  store      dynamodb table {table} (shared with other agents)")
        }
        _ => println!(
            "  store      sqlite in {}, sync {}",
            c.agent.state_dir.display(),
            format!("{:?}", c.store.sync).to_lowercase()
        ),
    }
    println!(
        "  http       {} (source {}, api key {}, at most {} connections)",
        c.http.listen,
        match &c.source {
            SourceConfig::Http => "http: POST /events".to_owned(),
            SourceConfig::Sqs {
                queue_url,
                receivers,
                ..
            } => format!("sqs: {queue_url}, {receivers} receivers"),
        },
        if c.http.api_key.is_some() {
            "required"
        } else {
            "not required"
        },
        c.http.max_connections
    );
    for sink in &c.sinks {
        let sink = sink.get_ref();
        let what = sink.settings().describe();
        println!("  sink       {} ({what})", sink.name());
    }
}
