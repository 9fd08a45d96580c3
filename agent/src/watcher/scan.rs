//! Turning paths on the share into what the engine records: the entry (a
//! manifest line) and the file's size, mtime and kind.

use std::path::{Path, PathBuf};

use crate::notification::{Classification, Classifier};
use crate::reconcile::LocalChange;
use crate::store::LocalFile;

/// Where a path sits: the dataset it belongs to and its manifest line.
pub fn entry_of(share: &Path, classifier: &Classifier, path: &Path) -> Option<(String, String)> {
    let rel = path.strip_prefix(share).ok()?;
    let text = rel.to_str()?;
    if text.is_empty() {
        return None;
    }
    match classifier.classify(text) {
        Classification::Dataset { set_id, entry, .. } => Some((set_id, entry)),
        Classification::Outside => None,
    }
}

/// What is at `path` now (None if it is gone).
pub fn observe(path: &Path, now_ms: i64) -> Option<LocalFile> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    Some(LocalFile {
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime,
        is_dir: meta.is_dir(),
        seen_ms: now_ms,
    })
}

pub fn change(
    share: &Path,
    classifier: &Classifier,
    path: &Path,
    now_ms: i64,
) -> Option<LocalChange> {
    let (set_id, entry) = entry_of(share, classifier, path)?;
    Some(LocalChange {
        set_id,
        entry,
        file: observe(path, now_ms),
    })
}

/// Walks a directory (included), calling `found` for every entry in it.
/// Paths that are not UTF-8 cannot be S3 keys or manifest lines: they are
/// reported and skipped.
pub fn walk(root: &Path, mut found: impl FnMut(PathBuf)) {
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
    {
        match item {
            Ok(e) if e.path().to_str().is_none() => {
                tracing::warn!(path = %e.path().display(), "skipping a path that is not UTF-8: it cannot be an S3 key");
            }
            Ok(e) => found(e.into_path()),
            Err(e) => tracing::debug!(error = %e, "entry vanished or unreadable during a scan"),
        }
    }
}
