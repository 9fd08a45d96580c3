//! Reading a dataset's manifest from the share.
//!
//! Reference format: plain text, one path per line, relative to the share
//! root: every directory (the dataset root included), then every file (the
//! manifest included). We also accept CRLF line ends, a leading `./` and
//! trailing `/`, and ignore blank lines and repeated lines.
//!
//! Richer manifests may give a file's expected size after a tab
//! (`path<TAB>bytes`); it takes precedence over the size on the share.

use std::collections::HashSet;
use std::path::Path;

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
}

/// A manifest line with the size of the file on the share, where asked for.
pub type ExpectedLine = (String, Option<u64>);

/// Parses manifest text into distinct entries (with any size given), in file order.
pub fn parse(bytes: &[u8], dataset_dir: &str) -> Result<Vec<ExpectedLine>, ManifestError> {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
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
        let inside = text == dataset_dir
            || (text.starts_with(dataset_dir)
                && text.as_bytes().get(dataset_dir.len()) == Some(&b'/'));
        if !inside {
            return Err(ManifestError::Outside {
                line,
                entry: text.to_owned(),
                dataset_dir: dataset_dir.to_owned(),
            });
        }
        if seen.insert(text) {
            entries.push((text.to_owned(), size));
        }
    }
    Ok(entries)
}

/// Reads `<share>/<manifest key>` and, if `with_sizes`, the size of every
/// regular file it lists (directories and vanished files get `None`).
pub fn read(
    share: &Path,
    manifest_key: &str,
    dataset_dir: &str,
    with_sizes: bool,
) -> Result<Vec<ExpectedLine>, ManifestError> {
    let path = share.join(manifest_key);
    let bytes = std::fs::read(&path).map_err(|e| ManifestError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let entries = parse(&bytes, dataset_dir)?;
    Ok(entries
        .into_iter()
        .map(|(entry, given)| {
            let size = given.or_else(|| {
                with_sizes
                    .then(|| std::fs::symlink_metadata(share.join(&entry)).ok())
                    .flatten()
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
            });
            (entry, size)
        })
        .collect())
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
        let lines = read(share.path(), "S-vaultjob/S.manifest", "S-vaultjob", true).unwrap();
        assert_eq!(lines[1], ("S-vaultjob/d".to_string(), None));
        assert_eq!(lines[2], ("S-vaultjob/d/f".to_string(), Some(5)));
        let err = read(share.path(), "T-vaultjob/T.manifest", "T-vaultjob", false).unwrap_err();
        assert!(err.to_string().starts_with("cannot read manifest"), "{err}");
    }
}
