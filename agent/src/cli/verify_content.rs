//! `vault-agent verify SET-ID --content`: every file's bytes, not only its
//! name. For each manifest entry S3 holds, S3's own checksum (`HeadObject`)
//! is compared with the file's on the share (the dataset's checksum file
//! where it is current, else read once). One line per entry:
//!
//! ```text
//! = path                      verified (or a directory S3 holds)
//! * path  CRC64NVME: S3 …, the share …   mismatch
//! - path                      missing in S3
//! + path                      in S3 but not in the manifest
//! ? path  (why)               unverifiable
//! ```
//!
//! Exit 0 only when every file is verified; 1 when any is missing,
//! mismatched (or unexpected); 3 when only unverifiable files remain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::verify::Comparison;
use crate::reconcile::content::{self, ChecksumCache};
use crate::sources::s3_listing::Listing;
use crate::sources::s3_objects::S3Heads;
use crate::store::ContentOutcome;

/// Checks in flight at once (requests are also paced).
const CONCURRENT: usize = 16;

/// One entry's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Verified { path: String, detail: String },
    Mismatch { path: String, detail: String },
    Missing { path: String },
    Unexpected { path: String },
    Unverifiable { path: String, detail: String },
}

impl Line {
    pub fn text(&self) -> String {
        match self {
            Line::Verified { path, .. } => format!("= {path}"),
            Line::Mismatch { path, detail } => format!("* {path}  {detail}"),
            Line::Missing { path } => format!("- {path}"),
            Line::Unexpected { path } => format!("+ {path}"),
            Line::Unverifiable { path, detail } => format!("? {path}  ({detail})"),
        }
    }

    fn json(&self) -> Value {
        let (outcome, path, detail) = match self {
            Line::Verified { path, detail } => ("verified", path, Some(detail)),
            Line::Mismatch { path, detail } => ("mismatch", path, Some(detail)),
            Line::Missing { path } => ("missing", path, None),
            Line::Unexpected { path } => ("unexpected", path, None),
            Line::Unverifiable { path, detail } => ("unverifiable", path, Some(detail)),
        };
        json!({"path": path, "outcome": outcome, "detail": detail})
    }
}

/// The exit code the lines call for.
pub fn exit_code(lines: &[Line]) -> u8 {
    let failed = lines.iter().any(|l| {
        matches!(
            l,
            Line::Mismatch { .. } | Line::Missing { .. } | Line::Unexpected { .. }
        )
    });
    let unverifiable = lines.iter().any(|l| matches!(l, Line::Unverifiable { .. }));
    match (failed, unverifiable) {
        (true, _) => 1,
        (false, true) => 3,
        (false, false) => 0,
    }
}

/// Checks every entry S3 holds; missing and unexpected ones come from the
/// listing's comparison.
pub async fn check(
    heads: S3Heads,
    share: PathBuf,
    set_id: &str,
    bucket: &str,
    listing: &Listing,
    compared: &Comparison,
    entries: &[String],
) -> Vec<Line> {
    let listed: BTreeMap<&str, &str> = listing
        .objects
        .iter()
        .map(|o| (o.key.trim_end_matches('/'), o.key.as_str()))
        .collect();
    let mut lines: Vec<Line> = compared
        .missing
        .iter()
        .map(|path| Line::Missing { path: path.clone() })
        .chain(
            compared
                .unexpected
                .iter()
                .map(|path| Line::Unexpected { path: path.clone() }),
        )
        .collect();
    let progress = indicatif::ProgressBar::new(entries.len() as u64)
        .with_message("checking content against S3's checksums");
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let heads = Arc::new(heads);
    let cache = Arc::new(ChecksumCache::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut running = JoinSet::new();
    for entry in entries {
        let Some(key) = listed.get(entry.as_str()) else {
            progress.inc(1);
            continue;
        };
        if key.ends_with('/') {
            // A directory counts by its presence.
            lines.push(Line::Verified {
                path: entry.clone(),
                detail: "directory".into(),
            });
            progress.inc(1);
            continue;
        }
        let (heads, cache, share, slots) =
            (heads.clone(), cache.clone(), share.clone(), slots.clone());
        let (set_id, bucket, key, path) = (
            set_id.to_owned(),
            bucket.to_owned(),
            (*key).to_owned(),
            entry.clone(),
        );
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let object = match heads.head(&bucket, &key).await {
                Ok(Some(object)) => object,
                Ok(None) => return Line::Missing { path },
                Err(e) => {
                    return Line::Unverifiable {
                        path,
                        detail: format!("S3 could not be asked: {e}"),
                    };
                }
            };
            let judged = tokio::task::spawn_blocking(move || {
                content::judge(&object, |algorithm| {
                    content::local_checksum(&share, &set_id, &key, algorithm, &cache)
                })
            })
            .await;
            match judged {
                Ok((ContentOutcome::Verified, detail)) => Line::Verified { path, detail },
                Ok((ContentOutcome::Mismatch, detail)) => Line::Mismatch { path, detail },
                Ok((ContentOutcome::Unverifiable | ContentOutcome::Checking, detail)) => {
                    Line::Unverifiable { path, detail }
                }
                Err(e) => Line::Unverifiable {
                    path,
                    detail: format!("the check failed: {e}"),
                },
            }
        });
    }
    while let Some(done) = running.join_next().await {
        progress.inc(1);
        if let Ok(line) = done {
            lines.push(line);
        }
    }
    progress.finish_and_clear();
    lines.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    lines
}

fn sort_key(line: &Line) -> &str {
    match line {
        Line::Verified { path, .. }
        | Line::Mismatch { path, .. }
        | Line::Missing { path }
        | Line::Unexpected { path }
        | Line::Unverifiable { path, .. } => path,
    }
}

pub fn print(lines: &[Line]) {
    for line in lines {
        println!("{}", line.text());
    }
    let count = |f: fn(&Line) -> bool| lines.iter().filter(|l| f(l)).count();
    println!(
        "\n{} verified, {} mismatched, {} missing in S3, {} not in the manifest, {} unverifiable: {}",
        count(|l| matches!(l, Line::Verified { .. })),
        count(|l| matches!(l, Line::Mismatch { .. })),
        count(|l| matches!(l, Line::Missing { .. })),
        count(|l| matches!(l, Line::Unexpected { .. })),
        count(|l| matches!(l, Line::Unverifiable { .. })),
        match exit_code(lines) {
            0 => "PROVEN: S3 holds every file's bytes",
            3 => "UNPROVEN: some files cannot be verified",
            _ => "NOT PROVEN",
        }
    );
}

pub fn json(lines: &[Line]) -> Value {
    json!({
        "proven": exit_code(lines) == 0,
        "files": lines.iter().map(Line::json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_says_proven_failed_or_unverifiable_only() {
        let v = Line::Verified {
            path: "a".into(),
            detail: String::new(),
        };
        let q = Line::Unverifiable {
            path: "b".into(),
            detail: "no checksum".into(),
        };
        let m = Line::Mismatch {
            path: "c".into(),
            detail: "CRC64NVME: S3 x, the share y".into(),
        };
        assert_eq!(exit_code(std::slice::from_ref(&v)), 0);
        assert_eq!(exit_code(&[v.clone(), q.clone()]), 3);
        assert_eq!(exit_code(&[v, q, m.clone()]), 1);
        assert_eq!(exit_code(&[Line::Missing { path: "d".into() }]), 1);
        assert_eq!(m.text(), "* c  CRC64NVME: S3 x, the share y");
    }
}
