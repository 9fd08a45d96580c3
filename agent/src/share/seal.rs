//! `vault-agent seal DIR`: writes `<SET-ID><manifest_suffix>` in the
//! reference format: every directory (the dataset root included), then every
//! file (the manifest included), each group sorted, paths relative to the
//! share root.
//!
//! Crash safety: the manifest is written to a temporary file outside any
//! dataset (`<share>/.vault-agent/`, so the gateway's upload of it is an
//! unrelated key), fsynced, renamed into place, and the dataset directory
//! fsynced: a crash leaves no manifest or the whole one, never a torn one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checksum::file::{ChecksumFileError, Checksums, FileChecksum};
use crate::checksum::{self, Algorithm, Stamp};
use crate::durable_file::{self, DurableFileError};
use crate::notification::Classifier;

/// Where temporary manifests are written, at the share root.
pub const TEMP_DIR: &str = crate::checksum::SHARE_DIR;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: not a dataset directory (expected <SET-ID>{suffix} directly in the share)")]
    NotADataset { path: String, suffix: String },
    #[error("{path} is a symbolic link; only real directories of the share are sealed")]
    Link { path: String },
    #[error("{path} already exists; the dataset is sealed (use --force to write it again)")]
    AlreadySealed { path: String },
    #[error("{path}: the name contains a newline, which a manifest line cannot carry; rename it")]
    Newline { path: String },
    #[error("{path}: the name is not UTF-8, so it cannot be an S3 key; rename it")]
    NotUtf8 { path: String },
    #[error("files are still open for writing: {}", list(.paths))]
    StillWriting { paths: Vec<String> },
    #[error("checksums: {0}")]
    Checksums(#[from] ChecksumFileError),
    #[error("manifest: {0}")]
    Write(#[from] DurableFileError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn list(paths: &[String]) -> String {
    let mut text = paths.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > 5 {
        text.push_str(&format!(" and {} more", paths.len() - 5));
    }
    text
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub struct SealOptions {
    /// How long to wait for writers to close their files (zero: fail at once).
    pub wait_for_writers: Duration,
    /// Write the manifest even if one exists.
    pub force: bool,
    /// Write the dataset's checksum file (`checksum_file`), the manifest's
    /// own included: the CRC64NVME of every file, reading each file once
    /// unless it is here already, of its current version (as `vault`
    /// hands over what it computed while copying). None: no checksums.
    pub checksums: Option<Checksums>,
}

#[derive(Debug)]
pub struct SealReport {
    pub manifest: PathBuf,
    pub set_id: String,
    pub lines: usize,
    pub directories: usize,
    pub files: usize,
    /// The checksum file written, and the bytes read to compute it.
    pub checksums: Option<(PathBuf, u64)>,
}

/// Seals the dataset directory `dir` (which sits directly in the share).
pub fn seal(
    dir: &Path,
    classifier: &Classifier,
    options: &SealOptions,
) -> Result<SealReport, SealError> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // Never through a link: it would write the manifest somewhere else.
    let meta = std::fs::symlink_metadata(dir).ok();
    if meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Err(SealError::Link {
            path: dir.display().to_string(),
        });
    }
    let set_id = name
        .strip_suffix(classifier.job_dir_suffix())
        .filter(|s| !s.is_empty() && meta.as_ref().is_some_and(|m| m.is_dir()))
        .ok_or_else(|| SealError::NotADataset {
            path: dir.display().to_string(),
            suffix: classifier.job_dir_suffix().to_owned(),
        })?
        .to_owned();
    let share = dir.parent().unwrap_or(Path::new("."));
    let manifest_name = format!("{set_id}{}", classifier.manifest_suffix());
    let manifest = dir.join(&manifest_name);
    if manifest.symlink_metadata().is_ok() && !options.force {
        return Err(SealError::AlreadySealed {
            path: manifest.display().to_string(),
        });
    }
    wait_for_writers(dir, options.wait_for_writers)?;

    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .follow_root_links(false)
    {
        let item = item.map_err(|e| SealError::Io {
            path: e
                .path()
                .map_or_else(|| dir.display().to_string(), |p| p.display().to_string()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        let path = item.path();
        if path == manifest {
            continue;
        }
        let rel = path.strip_prefix(share).unwrap_or(path);
        let text = rel.to_str().ok_or_else(|| SealError::NotUtf8 {
            path: path.display().to_string(),
        })?;
        if text.contains('\n') || text.contains('\r') {
            return Err(SealError::Newline {
                path: path.display().to_string(),
            });
        }
        if item.file_type().is_dir() {
            dirs.push(text.to_owned());
        } else {
            files.push(text.to_owned());
        }
    }
    let mut sums = match &options.checksums {
        Some(known) => Some(checksum_files(share, &files, known)?),
        None => None,
    };
    let manifest_line = format!("{name}/{manifest_name}");
    files.push(manifest_line.clone());
    dirs.sort();
    files.sort();
    let mut text = String::with_capacity((dirs.len() + files.len()) * 64);
    for line in dirs.iter().chain(&files) {
        text.push_str(line);
        text.push('\n');
    }
    let staged = durable_file::stage(&share.join(TEMP_DIR), &manifest, text.as_bytes())?;
    // The manifest's own checksum, of the file that is renamed into place,
    // and the checksum file before the manifest appears: an agent seeing
    // the manifest finds every checksum.
    let mut checksums = None;
    if let Some((sums, read)) = sums.as_mut() {
        let meta = std::fs::metadata(staged.path()).map_err(io(staged.path()))?;
        let crc = checksum::of_bytes(Algorithm::Crc64Nvme, text.as_bytes());
        sums.insert(FileChecksum::new(manifest_line, Stamp::of(&meta), crc));
        checksums = Some((sums.write(share, &set_id)?, *read));
    }
    staged.commit()?;
    Ok(SealReport {
        manifest,
        set_id,
        lines: dirs.len() + files.len(),
        directories: dirs.len(),
        files: files.len(),
        checksums,
    })
}

/// The CRC64NVME of every file (paths relative to the share): what `known`
/// has of a file's current version, else read from the file once, with
/// progress. Returns them and the bytes read.
fn checksum_files(
    share: &Path,
    files: &[String],
    known: &Checksums,
) -> Result<(Checksums, u64), SealError> {
    let mut sums = Checksums::default();
    let mut todo = Vec::new();
    for file in files {
        let path = share.join(file);
        let (_, meta) = checksum::open_regular(&path).map_err(io(&path))?;
        let stamp = Stamp::of(&meta);
        match known.fresh(file, stamp) {
            Some(crc) => sums.insert(FileChecksum::new(file.clone(), stamp, crc.to_owned())),
            None => todo.push((file, stamp.size)),
        }
    }
    let total: u64 = todo.iter().map(|(_, size)| size).sum();
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} checksums [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut last_line = Instant::now();
    let mut read = 0u64;
    for (file, _) in todo {
        let path = share.join(file);
        let (stamp, crc) = checksum::of_file(&path, Algorithm::Crc64Nvme, |n| {
            progress.inc(n);
            read += n;
            // Plain lines when stderr is not a terminal.
            if progress.is_hidden() && last_line.elapsed() >= Duration::from_secs(2) {
                last_line = Instant::now();
                eprintln!(
                    "checksums: {} of {}",
                    bytesize::ByteSize(read),
                    bytesize::ByteSize(total)
                );
            }
        })
        .map_err(io(&path))?;
        sums.insert(FileChecksum::new(file.clone(), stamp, crc));
    }
    progress.finish_and_clear();
    Ok((sums, read))
}

fn wait_for_writers(dir: &Path, wait: Duration) -> Result<(), SealError> {
    let start = Instant::now();
    let mut warned = false;
    loop {
        let writers = super::open_files::writers_below(dir);
        if writers.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(SealError::StillWriting {
                paths: writers
                    .iter()
                    .map(|(p, pid)| format!("{} (pid {pid})", p.display()))
                    .collect(),
            });
        }
        if !warned {
            tracing::warn!(
                files = writers.len(),
                "files still open for writing; waiting up to {wait:?}"
            );
            eprintln!(
                "waiting for {} file(s) still open for writing, e.g. {}",
                writers.len(),
                writers[0].0.display()
            );
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier::new("-vaultjob", ".manifest")
    }

    fn options() -> SealOptions {
        SealOptions {
            wait_for_writers: Duration::ZERO,
            force: false,
            checksums: None,
        }
    }

    #[test]
    fn writes_the_reference_format() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("S-vaultjob");
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        std::fs::create_dir_all(dir.join("a dir")).unwrap();
        std::fs::write(dir.join("b/c/x.bin"), "x").unwrap();
        std::fs::write(dir.join("a dir/ü.txt"), "u").unwrap();
        let report = seal(&dir, &classifier(), &options()).unwrap();
        assert_eq!(report.lines, 7);
        let text = std::fs::read_to_string(dir.join("S.manifest")).unwrap();
        assert_eq!(
            text,
            "S-vaultjob\nS-vaultjob/a dir\nS-vaultjob/b\nS-vaultjob/b/c\n\
             S-vaultjob/S.manifest\nS-vaultjob/a dir/ü.txt\nS-vaultjob/b/c/x.bin\n"
        );
        // The temporary file is gone; sealing again needs --force.
        assert_eq!(
            std::fs::read_dir(share.path().join(TEMP_DIR))
                .unwrap()
                .count(),
            0
        );
        assert!(matches!(
            seal(&dir, &classifier(), &options()),
            Err(SealError::AlreadySealed { .. })
        ));
        seal(
            &dir,
            &classifier(),
            &SealOptions {
                force: true,
                ..options()
            },
        )
        .unwrap();
    }

    #[test]
    fn checksums_cover_every_file_reuse_what_is_current_and_include_the_manifest() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("C-vaultjob");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/a.bin"), "aaaa").unwrap();
        std::fs::write(dir.join("b.bin"), "bb").unwrap();
        // What a copy computed for b.bin as it is now is taken as is (a
        // wrong value proves it was not read again); a.bin's is stale.
        let stamp = |p: &str| Stamp::of(&std::fs::metadata(dir.join(p)).unwrap());
        let mut known = Checksums::default();
        known.insert(FileChecksum::new(
            "C-vaultjob/b.bin".into(),
            stamp("b.bin"),
            "from-a-copy=".into(),
        ));
        let old = Stamp {
            size: 4,
            mtime_ns: 1,
        };
        known.insert(FileChecksum::new(
            "C-vaultjob/d/a.bin".into(),
            old,
            "stale-value=".into(),
        ));
        let report = seal(
            &dir,
            &classifier(),
            &SealOptions {
                checksums: Some(known),
                ..options()
            },
        )
        .unwrap();
        assert_eq!(
            report.checksums.as_ref().unwrap().1,
            4,
            "only a.bin was read"
        );
        let sums = Checksums::read(share.path(), "C").unwrap();
        assert_eq!(sums.by_path.len(), 3);
        assert_eq!(sums.by_path["C-vaultjob/b.bin"].crc64nvme, "from-a-copy=");
        assert_eq!(
            sums.by_path["C-vaultjob/d/a.bin"].crc64nvme,
            checksum::of_bytes(Algorithm::Crc64Nvme, b"aaaa")
        );
        let manifest = std::fs::read(dir.join("C.manifest")).unwrap();
        assert_eq!(
            sums.fresh("C-vaultjob/C.manifest", stamp("C.manifest")),
            Some(checksum::of_bytes(Algorithm::Crc64Nvme, &manifest).as_str())
        );
    }

    #[test]
    fn refuses_newlines_open_writers_and_non_datasets() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("N-vaultjob");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad\nname"), "x").unwrap();
        let e = seal(&dir, &classifier(), &options())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad\nname") && e.contains("newline"), "{e}");
        std::fs::remove_file(dir.join("bad\nname")).unwrap();

        let busy = std::fs::File::create(dir.join("busy.bin")).unwrap();
        let e = seal(&dir, &classifier(), &options())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("still open for writing") && e.contains("busy.bin"),
            "{e}"
        );
        drop(busy);
        seal(&dir, &classifier(), &options()).unwrap();

        let e = seal(share.path(), &classifier(), &options())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a dataset directory"), "{e}");
    }
}
