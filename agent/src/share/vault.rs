//! `vault-agent vault --source DIR --share DIR`: replaces the reference's
//! vaulting script. Copies the tree into `<share>/<SET-ID>-vaultjob` in
//! parallel, keeping mtimes and permissions, then writes the manifest last:
//! a copy that fails half-way has no manifest, so it never looks complete.

use std::fs::FileTimes;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use super::seal::{self, SealOptions};
use crate::checksum::file::{Checksums, FileChecksum};
use crate::checksum::{self, Stamp};
use crate::notification::Classifier;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("source {0}: does not exist or is not a directory")]
    Source(String),
    #[error("share {path}: {message}")]
    Share { path: String, message: String },
    #[error("set-id {set_id} is already used: {path} exists")]
    SetIdUsed { set_id: String, path: String },
    #[error("set-id {0:?}: use letters, digits, '-', '_' or '.'")]
    BadSetId(String),
    #[error(
        "{path}: the name contains a newline, which a manifest line cannot carry; nothing was copied"
    )]
    Newline { path: String },
    #[error("{path}: the name is not UTF-8, so it cannot be an S3 key; nothing was copied")]
    NotUtf8 { path: String },
    #[error(
        "the share is full (writing {path}); {dest} has no manifest, so it will never reconcile: free space and vault again"
    )]
    Full { path: String, dest: String },
    #[error(
        "copying {path}: {source}; {dest} has no manifest, so it will never reconcile: fix the cause and vault again"
    )]
    Copy {
        path: String,
        dest: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the source {source_dir} holds {name} at its root, which would stand in for the dataset's manifest; move or rename it, nothing was copied"
    )]
    HoldsManifest { source_dir: String, name: String },
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

pub struct VaultReport {
    pub set_id: String,
    pub dest: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub skipped_links: usize,
    pub elapsed: Duration,
}

pub fn random_set_id() -> String {
    let mut rng = rand::rng();
    (0..16)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

struct Plan {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, u64)>,
    links: usize,
    bytes: u64,
}

/// Lists the source and refuses names a manifest cannot carry, before
/// anything is written.
fn plan(source: &Path) -> Result<Plan, VaultError> {
    let mut plan = Plan {
        dirs: Vec::new(),
        files: Vec::new(),
        links: 0,
        bytes: 0,
    };
    for item in walkdir::WalkDir::new(source)
        .follow_links(false)
        .min_depth(1)
    {
        let item = item.map_err(|e| VaultError::Source(format!("{}: {e}", source.display())))?;
        let rel = item
            .path()
            .strip_prefix(source)
            .unwrap_or(item.path())
            .to_owned();
        let text = rel.to_str().ok_or_else(|| VaultError::NotUtf8 {
            path: item.path().display().to_string(),
        })?;
        if text.contains('\n') || text.contains('\r') {
            return Err(VaultError::Newline {
                path: item.path().display().to_string(),
            });
        }
        let kind = item.file_type();
        if kind.is_dir() {
            plan.dirs.push(rel);
        } else if kind.is_file() {
            let len = item.metadata().map(|m| m.len()).unwrap_or(0);
            plan.bytes += len;
            plan.files.push((rel, len));
        } else {
            plan.links += 1;
            tracing::warn!(path = %item.path().display(), "skipping a symlink or special file");
        }
    }
    // Big files first: the parallel copy finishes together.
    plan.files.sort_by_key(|f| std::cmp::Reverse(f.1));
    Ok(plan)
}

pub fn vault(
    source: &Path,
    share: &Path,
    set_id: Option<&str>,
    jobs: usize,
    classifier: &Classifier,
) -> Result<VaultReport, VaultError> {
    let started = Instant::now();
    if !source.is_dir() {
        return Err(VaultError::Source(source.display().to_string()));
    }
    let share_err = |message: String| VaultError::Share {
        path: share.display().to_string(),
        message,
    };
    if !share.is_dir() {
        return Err(share_err("does not exist or is not a directory".into()));
    }
    let set_id = set_id.map(str::to_owned).unwrap_or_else(random_set_id);
    if set_id.is_empty()
        || !set_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(VaultError::BadSetId(set_id));
    }
    let manifest_name = format!("{set_id}{}", classifier.manifest_suffix());
    if source.join(&manifest_name).symlink_metadata().is_ok() {
        return Err(VaultError::HoldsManifest {
            source_dir: source.display().to_string(),
            name: manifest_name,
        });
    }
    let dest = share.join(classifier.dataset_dir(&set_id));
    if dest.symlink_metadata().is_ok() {
        return Err(VaultError::SetIdUsed {
            set_id,
            path: dest.display().to_string(),
        });
    }
    let plan = plan(source)?;
    std::fs::create_dir(&dest)
        .map_err(|e| share_err(format!("cannot create {}: {e}", dest.display())))?;
    let dest_s = dest.display().to_string();
    for dir in &plan.dirs {
        let to = dest.join(dir);
        std::fs::create_dir_all(&to).map_err(|source| copy_error(&to, &dest_s, source))?;
    }

    let progress = ProgressBar::new(plan.bytes);
    progress.set_style(
        ProgressStyle::with_template("{spinner} vault [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let done_files = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<VaultError>> = Mutex::new(None);
    // The CRC64NVME of each file, computed from the bytes as they are copied.
    let checksums: Mutex<Checksums> = Mutex::default();
    let dataset_dir = classifier.dataset_dir(&set_id);
    let total_files = plan.files.len();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((rel, _)) = plan.files.get(i) else {
                        return;
                    };
                    let (from, to) = (source.join(rel), dest.join(rel));
                    match copy_file(&from, &to, |n| progress.inc(n)) {
                        Ok((n, stamp, crc)) => {
                            let path = format!("{dataset_dir}/{}", rel.display());
                            let line = FileChecksum::new(path, stamp, crc);
                            checksums
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(line);
                            done_bytes.fetch_add(n, Ordering::Relaxed);
                            let files = done_files.fetch_add(1, Ordering::Relaxed) + 1;
                            progress.set_message(format!("{files}/{total_files} files"));
                        }
                        Err(source) => {
                            failed.store(true, Ordering::Relaxed);
                            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(copy_error(&to, &dest_s, source));
                        }
                    }
                }
            });
        }
        // Plain progress lines when stderr is not a terminal.
        if progress.is_hidden() {
            scope.spawn(|| {
                let mut last = Instant::now();
                while done_files.load(Ordering::Relaxed) < total_files
                    && !failed.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= Duration::from_secs(2) {
                        last = Instant::now();
                        eprintln!(
                            "vault: {}/{total_files} files, {} of {}",
                            done_files.load(Ordering::Relaxed),
                            bytesize::ByteSize(done_bytes.load(Ordering::Relaxed)),
                            bytesize::ByteSize(plan.bytes)
                        );
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        progress.abandon_with_message("failed");
        return Err(e);
    }
    progress.finish_with_message(format!("{total_files} files"));
    // Directory times last: creating files inside changes them.
    for dir in plan.dirs.iter().rev() {
        let _ = copy_dir_meta(&source.join(dir), &dest.join(dir));
    }
    let _ = copy_dir_meta(source, &dest);
    seal::seal(
        &dest,
        classifier,
        &SealOptions {
            wait_for_writers: Duration::from_secs(30),
            force: false,
            checksums: Some(checksums.into_inner().unwrap_or_else(|p| p.into_inner())),
        },
    )?;
    Ok(VaultReport {
        set_id,
        dest,
        files: total_files,
        bytes: plan.bytes,
        skipped_links: plan.links,
        elapsed: started.elapsed(),
    })
}

fn copy_error(path: &Path, dest: &str, source: std::io::Error) -> VaultError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        VaultError::Full {
            path: path.display().to_string(),
            dest: dest.to_owned(),
        }
    } else {
        VaultError::Copy {
            path: path.display().to_string(),
            dest: dest.to_owned(),
            source,
        }
    }
}

/// Copies content (its CRC64NVME computed on the way: the bytes pass
/// through once), permissions, then the modification and access times.
/// Returns the bytes copied, the copy's size and mtime, and the checksum.
fn copy_file(
    from: &Path,
    to: &Path,
    progress: impl FnMut(u64),
) -> std::io::Result<(u64, Stamp, String)> {
    let (n, crc) = checksum::copy_with_crc64nvme(from, to, progress)?;
    let meta = std::fs::metadata(from)?;
    std::fs::set_permissions(to, meta.permissions())?;
    let file = std::fs::OpenOptions::new().write(true).open(to)?;
    file.set_times(
        FileTimes::new()
            .set_modified(meta.modified()?)
            .set_accessed(meta.accessed()?),
    )?;
    Ok((n, Stamp::of(&file.metadata()?), crc))
}

fn copy_dir_meta(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(from)?;
    std::fs::set_permissions(to, meta.permissions())?;
    let dir = std::fs::File::open(to)?;
    dir.set_times(
        FileTimes::new()
            .set_modified(meta.modified()?)
            .set_accessed(meta.accessed()?),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn copies_the_tree_keeps_metadata_and_seals_last() {
        let src = tempfile::tempdir().unwrap();
        let share = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f.bin"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.path().join("top file"), "t").unwrap();
        std::fs::set_permissions(
            src.path().join("top file"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        std::fs::File::options()
            .write(true)
            .open(src.path().join("a/b/f.bin"))
            .unwrap()
            .set_times(FileTimes::new().set_modified(old))
            .unwrap();
        let c = Classifier::new("-vaultjob", ".manifest");
        let report = vault(src.path(), share.path(), Some("SET1"), 4, &c).unwrap();
        assert_eq!((report.files, report.bytes), (2, 100_001));
        let dest = share.path().join("SET1-vaultjob");
        assert_eq!(
            std::fs::read(dest.join("a/b/f.bin")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(
            std::fs::metadata(dest.join("a/b/f.bin"))
                .unwrap()
                .modified()
                .unwrap(),
            old
        );
        assert_eq!(
            std::fs::metadata(dest.join("top file"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        let manifest = std::fs::read_to_string(dest.join("SET1.manifest")).unwrap();
        assert_eq!(
            manifest,
            "SET1-vaultjob\nSET1-vaultjob/a\nSET1-vaultjob/a/b\nSET1-vaultjob/SET1.manifest\nSET1-vaultjob/a/b/f.bin\nSET1-vaultjob/top file\n"
        );
        // Every file's CRC64NVME, computed while copying, the manifest's too.
        let sums = Checksums::read(share.path(), "SET1").unwrap();
        assert_eq!(sums.by_path.len(), 3);
        assert_eq!(
            sums.by_path["SET1-vaultjob/a/b/f.bin"].crc64nvme,
            checksum::of_bytes(checksum::Algorithm::Crc64Nvme, &[7u8; 100_000])
        );
        let stamp = Stamp::of(&std::fs::metadata(dest.join("SET1.manifest")).unwrap());
        assert_eq!(
            sums.fresh("SET1-vaultjob/SET1.manifest", stamp),
            Some(checksum::of_bytes(checksum::Algorithm::Crc64Nvme, manifest.as_bytes()).as_str())
        );
        // The same set-id again is refused; so are a missing source and share.
        let e = vault(src.path(), share.path(), Some("SET1"), 4, &c)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already used"), "{e}");
        let e = vault(&src.path().join("nope"), share.path(), None, 4, &c)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("source ") && e.contains("does not exist"),
            "{e}"
        );
        let e = vault(src.path(), &share.path().join("nope"), None, 4, &c)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("share "), "{e}");
    }

    #[test]
    fn refuses_newline_names_before_copying_anything() {
        let src = tempfile::tempdir().unwrap();
        let share = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("ok"), "x").unwrap();
        std::fs::write(src.path().join("bad\nname"), "x").unwrap();
        let c = Classifier::new("-vaultjob", ".manifest");
        let e = vault(src.path(), share.path(), Some("N"), 2, &c)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("newline") && e.contains("nothing was copied"),
            "{e}"
        );
        assert!(!share.path().join("N-vaultjob").exists());
    }
}
