//! `vault-agent verify SET-ID`: compares a dataset's manifest with the S3
//! listing of its prefix, read-only and without a running agent. Exit code
//! 0: complete; 1: incomplete; 2: could not tell (the error says why).
//! With `--content`, every file's bytes too ([`super::verify_content`]; 3:
//! only unverifiable files remain).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use crate::config::Config;
use crate::notification::Classifier;
use crate::reconcile::manifest;
use crate::sources::s3_listing::{Listing, S3Lister};

pub struct VerifyArgs {
    pub set_id: String,
    pub bucket: Option<String>,
    pub config: Config,
    /// The manifest to compare with (default: the dataset's on the share).
    pub manifest: Option<PathBuf>,
    pub json: bool,
    /// Also compare each file's checksum with S3's.
    pub content: bool,
}

/// What the listing says about the manifest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Manifest entries with no object in S3.
    pub missing: Vec<String>,
    /// Objects under the prefix the manifest does not list.
    pub unexpected: Vec<String>,
    /// (entry, size in S3, size on the share) where the two differ.
    pub size_differs: Vec<(String, u64, u64)>,
}

impl Comparison {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.size_differs.is_empty()
    }
}

/// Compares manifest entries (paths without a trailing `/`) with listed
/// objects (directories are keys ending in `/`, as the gateway writes
/// them); `local_size` gives a file's size on the share, if it holds it.
pub fn compare(
    entries: &[String],
    listing: &Listing,
    local_size: impl Fn(&str) -> Option<u64>,
) -> Comparison {
    let listed: BTreeMap<&str, u64> = listing
        .objects
        .iter()
        .map(|o| (o.key.trim_end_matches('/'), o.size))
        .collect();
    let expected: BTreeSet<&str> = entries.iter().map(String::as_str).collect();
    let mut out = Comparison::default();
    for entry in &expected {
        match listed.get(entry) {
            None => out.missing.push((*entry).to_owned()),
            Some(&size) => {
                if let Some(local) = local_size(entry).filter(|l| *l != size) {
                    out.size_differs.push(((*entry).to_owned(), size, local));
                }
            }
        }
    }
    out.unexpected = listed
        .keys()
        .filter(|k| !expected.contains(*k))
        .map(|k| (*k).to_owned())
        .collect();
    out
}

/// Runs the check; returns the exit code (0 complete or proven, 1 not, 3
/// only unverifiable files left).
pub async fn run(args: VerifyArgs) -> anyhow::Result<u8> {
    let share = &args.config.share;
    let classifier = Classifier::new(&*share.job_dir_suffix.0, &*share.manifest_suffix.0);
    let dataset_dir = classifier.dataset_dir(&args.set_id);
    let bucket = args
        .bucket
        .clone()
        .or_else(|| share.bucket.clone())
        .ok_or_else(|| {
            anyhow!("which bucket? Give --bucket, or set [share] bucket in the config")
        })?;
    let entries = read_manifest(&args, &dataset_dir, &classifier.manifest_key(&args.set_id))?;
    let lister = S3Lister::new(
        &args.config.aws,
        args.config.reconcile.verify_requests_per_second.get(),
    )
    .await;
    let prefix = format!("{dataset_dir}/");
    let progress = indicatif::ProgressBar::new_spinner()
        .with_message(format!("listing s3://{bucket}/{prefix}"));
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let listing = lister
        .list(&bucket, &prefix, |n| {
            progress.set_message(format!("listing s3://{bucket}/{prefix}: {n} objects"));
            progress.tick();
        })
        .await;
    progress.finish_and_clear();
    let listing = listing?;
    let local = |entry: &str| manifest::file_size(&share.path, entry);
    let result = compare(&entries, &listing, local);
    if args.content {
        let heads = crate::sources::s3_objects::S3Heads::from_sdk(
            &crate::aws::sdk_config(&args.config.aws).await,
            args.config
                .reconcile
                .verify_content_requests_per_second
                .get(),
        );
        let lines = super::verify_content::check(
            heads,
            share.path.clone(),
            &args.set_id,
            &bucket,
            &listing,
            &result,
            &entries,
        )
        .await;
        if args.json {
            let mut report =
                report_json(&args.set_id, &bucket, &prefix, &entries, &listing, &result);
            report["content"] = super::verify_content::json(&lines);
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            super::verify_content::print(&lines);
        }
        return Ok(super::verify_content::exit_code(&lines));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(
                &args.set_id,
                &bucket,
                &prefix,
                &entries,
                &listing,
                &result
            ))?
        );
    } else {
        print_report(&bucket, &prefix, &entries, &listing, &result);
    }
    Ok(if result.complete() { 0 } else { 1 })
}

fn read_manifest(
    args: &VerifyArgs,
    dataset_dir: &str,
    manifest_key: &str,
) -> anyhow::Result<Vec<String>> {
    let share = &args.config.share;
    let lines = match &args.manifest {
        Some(path) => {
            // As the agent opens one: a FIFO or a device must not hang or
            // flood `verify`.
            let bytes = manifest::read_regular_file(path, share.max_manifest_bytes.0)?;
            manifest::parse(&bytes, dataset_dir)?
        }
        None => manifest::read(
            &share.path,
            manifest_key,
            dataset_dir,
            false,
            share.max_manifest_bytes.0,
        )
        .context("reading the dataset's manifest on the share (or give --manifest FILE)")?,
    };
    Ok(lines.into_iter().map(|(entry, _)| entry).collect())
}

fn report_json(
    set_id: &str,
    bucket: &str,
    prefix: &str,
    entries: &[String],
    listing: &Listing,
    r: &Comparison,
) -> Value {
    json!({
        "set-id": set_id,
        "bucket": bucket,
        "prefix": prefix,
        "complete": r.complete(),
        "manifest-entries": entries.len(),
        "listed-objects": listing.objects.len(),
        "list-requests": listing.requests,
        "missing": r.missing,
        "unexpected": r.unexpected,
        "size-differs": r.size_differs.iter().map(|(path, s3, local)| json!({
            "path": path, "s3-size": s3, "local-size": local,
        })).collect::<Vec<_>>(),
    })
}

fn print_report(bucket: &str, prefix: &str, entries: &[String], listing: &Listing, r: &Comparison) {
    println!(
        "s3://{bucket}/{prefix}: {} objects listed ({} requests); the manifest lists {} entries",
        listing.objects.len(),
        listing.requests,
        entries.len()
    );
    let section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            println!("\n{title} ({}):", lines.len());
            for line in lines {
                println!("  {line}");
            }
        }
    };
    section("missing in S3", r.missing.clone());
    section("in S3 but not in the manifest", r.unexpected.clone());
    section(
        "size in S3 differs from the share",
        r.size_differs
            .iter()
            .map(|(p, s3, local)| format!("{p}: {s3} bytes in S3, {local} on the share"))
            .collect(),
    );
    println!(
        "\n{}",
        if r.complete() {
            "complete: S3 holds every manifest entry"
        } else {
            "INCOMPLETE"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::s3_listing::ListedObject;

    fn listing(keys: &[(&str, u64)]) -> Listing {
        Listing {
            objects: keys
                .iter()
                .map(|(k, s)| ListedObject {
                    key: (*k).into(),
                    size: *s,
                    last_modified_ms: 0,
                })
                .collect(),
            requests: 1,
        }
    }

    #[test]
    fn directories_match_their_slash_keys_and_every_difference_is_named() {
        let entries: Vec<String> = [
            "S-vaultjob",
            "S-vaultjob/d",
            "S-vaultjob/d/a",
            "S-vaultjob/b",
            "S-vaultjob/S.manifest",
        ]
        .map(String::from)
        .to_vec();
        let listed = listing(&[
            ("S-vaultjob/", 0),
            ("S-vaultjob/d/", 0),
            ("S-vaultjob/d/a", 5),
            ("S-vaultjob/S.manifest", 60),
            ("S-vaultjob/extra", 1),
        ]);
        let local = |e: &str| (e == "S-vaultjob/d/a").then_some(6);
        let r = compare(&entries, &listed, local);
        assert_eq!(r.missing, ["S-vaultjob/b"]);
        assert_eq!(r.unexpected, ["S-vaultjob/extra"]);
        assert_eq!(r.size_differs, [("S-vaultjob/d/a".to_owned(), 5, 6)]);
        assert!(!r.complete());
        let all = listing(&[
            ("S-vaultjob/", 0),
            ("S-vaultjob/d/", 0),
            ("S-vaultjob/d/a", 5),
            ("S-vaultjob/b", 1),
            ("S-vaultjob/S.manifest", 60),
        ]);
        assert!(compare(&entries, &all, |_| None).complete());
    }
}
