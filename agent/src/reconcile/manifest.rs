//! Reading a dataset's manifest from the share.
//!
//! Reference format: plain text, one path per line, relative to the share
//! root: every directory (the dataset root included), then every file (the
//! manifest included). We also accept CRLF line ends, a leading `./` and
//! trailing `/`, and ignore blank lines and repeated lines.
//!
//! Richer manifests may give a file's expected size after a tab
//! (`path<TAB>bytes`); it takes precedence over the size on the share.
//!
//! A manifest is untrusted input: it is opened without following links and
//! without blocking (a FIFO is refused, not waited on), only as a regular
//! file below the share reached through real directories, and read up to a
//! size cap. Error messages quote nothing read from outside the dataset.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {message}")]
    Read { path: String, message: String },
    #[error("manifest line {line} is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("manifest line {line}: {entry:?} is outside the dataset directory {dataset_dir:?}")]
    Outside {
        line: usize,
        entry: String,
        dataset_dir: String,
    },
    #[error("manifest line {line}: `..` and `.` path components are not allowed")]
    DotComponent { line: usize },
    #[error("manifest {path} is larger than [share] max_manifest_bytes ({max} bytes)")]
    TooLarge { path: String, max: u64 },
}

/// Longest piece of a manifest line quoted in an error.
const QUOTE_CHARS: usize = 200;

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// A manifest line with the size of the file on the share, where asked for.
pub type ExpectedLine = (String, Option<u64>);

/// Parses manifest text into distinct entries (with any size given), in file order.
pub fn parse(bytes: &[u8], dataset_dir: &str) -> Result<Vec<ExpectedLine>, ManifestError> {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    // Editors on Windows start UTF-8 files with a byte order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        let text = std::str::from_utf8(raw).map_err(|_| ManifestError::NotUtf8 { line })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        let (text, size) = match text.rsplit_once('\t') {
            Some((path, digits))
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (path, digits.parse::<u64>().ok())
            }
            _ => (text, None),
        };
        let text = text
            .strip_prefix("./")
            .unwrap_or(text)
            .trim_end_matches('/');
        if text.is_empty() {
            continue;
        }
        if text.split('/').any(|c| c == ".." || c == ".") {
            return Err(ManifestError::DotComponent { line });
        }
        let inside = text == dataset_dir
            || (text.starts_with(dataset_dir)
                && text.as_bytes().get(dataset_dir.len()) == Some(&b'/'));
        if !inside {
            return Err(ManifestError::Outside {
                line,
                entry: quote(text),
                dataset_dir: dataset_dir.to_owned(),
            });
        }
        if seen.insert(text) {
            entries.push((text.to_owned(), size));
        }
    }
    Ok(entries)
}

/// Reads `<share>/<manifest key>` (at most `max_bytes`) and, if
/// `with_sizes`, the size of every regular file it lists (directories,
/// links and vanished files get `None`).
pub fn read(
    share: &Path,
    manifest_key: &str,
    dataset_dir: &str,
    with_sizes: bool,
    max_bytes: u64,
) -> Result<Vec<ExpectedLine>, ManifestError> {
    let bytes = read_untrusted(share, manifest_key, max_bytes)?;
    let entries = parse(&bytes, dataset_dir)?;
    drop(bytes);
    Ok(entries
        .into_iter()
        .map(|(entry, given)| {
            let size = given.or_else(|| with_sizes.then(|| file_size(share, &entry)).flatten());
            (entry, size)
        })
        .collect())
}

/// The size of a regular file on the share; None for directories, links
/// and vanished files (links are not followed).
pub fn file_size(share: &Path, entry: &str) -> Option<u64> {
    std::fs::symlink_metadata(share.join(entry))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The bytes of `<share>/<key>`, if it is a regular file reached without
/// any symbolic link and no larger than `max_bytes`.
fn read_untrusted(share: &Path, key: &str, max_bytes: u64) -> Result<Vec<u8>, ManifestError> {
    let path = share.join(key);
    let fail = |message: String| ManifestError::Read {
        path: path.display().to_string(),
        message,
    };
    let rel = Path::new(key);
    let mut dir = share.to_path_buf();
    let parts: Vec<Component> = rel.components().collect();
    let (_, parents) = parts
        .split_last()
        .ok_or_else(|| fail("empty manifest key".into()))?;
    for part in parents {
        let Component::Normal(name) = part else {
            return Err(fail("the key has a `..`, `.` or absolute component".into()));
        };
        dir.push(name);
        let meta = std::fs::symlink_metadata(&dir).map_err(|e| fail(e.to_string()))?;
        if meta.file_type().is_symlink() {
            return Err(fail(format!(
                "{} is a symbolic link; manifests are read only through real directories of the share",
                dir.display()
            )));
        }
    }
    read_regular_file(&path, max_bytes)
}

/// The bytes of the file at `path`, if it is a regular file (not a link,
/// a FIFO, a device...) no larger than `max_bytes`. Never blocks on
/// opening, never follows a link in the last place, never reads past the
/// cap: also for a manifest a user names (`verify --manifest`).
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ManifestError> {
    let fail = |message: String| ManifestError::Read {
        path: path.display().to_string(),
        message,
    };
    // O_NOFOLLOW: a link in the last place fails (ELOOP) instead of being
    // followed; O_NONBLOCK: opening a FIFO returns at once.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                fail("it is a symbolic link; a manifest must be a regular file".into())
            }
            _ => fail(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "it is not a regular file (a {}); a manifest must be a regular file",
            kind_of(&meta.file_type())
        )));
    }
    if meta.len() > max_bytes {
        return Err(ManifestError::TooLarge {
            path: path.display().to_string(),
            max: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the stat: never read past the cap.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(ManifestError::TooLarge {
            path: path.display().to_string(),
            max: max_bytes,
        });
    }
    Ok(bytes)
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_format() {
        let text = "S-vaultjob\nS-vaultjob/d\nS-vaultjob/d/f 1.bin\nS-vaultjob/S.manifest\n";
        assert_eq!(
            names(parse(text.as_bytes(), "S-vaultjob").unwrap()),
            [
                "S-vaultjob",
                "S-vaultjob/d",
                "S-vaultjob/d/f 1.bin",
                "S-vaultjob/S.manifest"
            ]
        );
    }

    #[test]
    fn tolerates_crlf_dot_slash_trailing_slash_blank_and_repeats() {
        let text = "./S-vaultjob/\r\n\r\nS-vaultjob/d/\nS-vaultjob/d\nS-vaultjob/ü";
        assert_eq!(
            names(parse(text.as_bytes(), "S-vaultjob").unwrap()),
            ["S-vaultjob", "S-vaultjob/d", "S-vaultjob/ü"]
        );
    }

    fn names(lines: Vec<ExpectedLine>) -> Vec<String> {
        lines.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn richer_manifest_carries_sizes_after_a_tab() {
        let text = "S-vaultjob\nS-vaultjob/a\t42\nS-vaultjob/b c\t\nS-vaultjob/tab\tname\n";
        assert_eq!(
            parse(text.as_bytes(), "S-vaultjob").unwrap(),
            [
                ("S-vaultjob".to_string(), None),
                ("S-vaultjob/a".to_string(), Some(42)),
                ("S-vaultjob/b c\t".to_string(), None),
                ("S-vaultjob/tab\tname".to_string(), None),
            ]
        );
    }

    #[test]
    fn refuses_lines_outside_the_dataset() {
        let err = parse(b"S-vaultjob\nS-vaultjobX/f\n", "S-vaultjob").unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest line 2: \"S-vaultjobX/f\" is outside the dataset directory \"S-vaultjob\""
        );
        assert_eq!(
            parse(b"S-vaultjob\n\xff\n", "S-vaultjob").unwrap_err(),
            ManifestError::NotUtf8 { line: 2 }
        );
    }

    #[test]
    fn reads_sizes_from_the_share() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("S-vaultjob");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/f"), b"12345").unwrap();
        std::fs::write(
            dir.join("S.manifest"),
            "S-vaultjob\nS-vaultjob/d\nS-vaultjob/d/f\n",
        )
        .unwrap();
        let lines = read(
            share.path(),
            "S-vaultjob/S.manifest",
            "S-vaultjob",
            true,
            MAX,
        )
        .unwrap();
        assert_eq!(lines[1], ("S-vaultjob/d".to_string(), None));
        assert_eq!(lines[2], ("S-vaultjob/d/f".to_string(), Some(5)));
        let err = read_t(share.path()).unwrap_err();
        assert!(err.to_string().starts_with("cannot read manifest"), "{err}");
    }

    const MAX: u64 = 1 << 20;

    /// Reads dataset T's manifest (names only) from `share`.
    fn read_t(share: &Path) -> Result<Vec<ExpectedLine>, ManifestError> {
        read(share, "T-vaultjob/T.manifest", "T-vaultjob", false, MAX)
    }

    #[test]
    fn tolerates_a_byte_order_mark_and_refuses_dot_components() {
        let text = "\u{FEFF}S-vaultjob\nS-vaultjob/a\n";
        assert_eq!(
            names(parse(text.as_bytes(), "S-vaultjob").unwrap()),
            ["S-vaultjob", "S-vaultjob/a"]
        );
        let err = parse(b"S-vaultjob\nS-vaultjob/../../outside/x\n", "S-vaultjob").unwrap_err();
        assert_eq!(err, ManifestError::DotComponent { line: 2 });
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn refuses_links_fifos_and_oversize_files_without_blocking() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = share.path().join("S-vaultjob");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(outside.path().join("secret"), "TOPSECRET\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.join("S.manifest")).unwrap();
        let err = read(
            share.path(),
            "S-vaultjob/S.manifest",
            "S-vaultjob",
            false,
            MAX,
        )
        .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        std::fs::remove_file(dir.join("S.manifest")).unwrap();
        nix::unistd::mkfifo(&dir.join("S.manifest"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read(
            share.path(),
            "S-vaultjob/S.manifest",
            "S-vaultjob",
            false,
            MAX,
        )
        .unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");

        std::fs::remove_file(dir.join("S.manifest")).unwrap();
        std::fs::write(dir.join("S.manifest"), "S-vaultjob\n".repeat(100)).unwrap();
        let err = read(
            share.path(),
            "S-vaultjob/S.manifest",
            "S-vaultjob",
            false,
            64,
        )
        .unwrap_err();
        assert!(
            matches!(err, ManifestError::TooLarge { max: 64, .. }),
            "{err}"
        );

        // A dataset directory that is a link to elsewhere is not read through.
        std::fs::write(outside.path().join("T.manifest"), "T-vaultjob\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), share.path().join("T-vaultjob")).unwrap();
        let err = read_t(share.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
