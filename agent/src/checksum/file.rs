//! A dataset's local checksums, kept on the share beside (never inside)
//! the dataset: `<share>/.vault-agent/checksums/<SET-ID>.jsonl`, one JSON
//! line per file:
//!
//! ```text
//! {"path":"RUN42-vaultjob/d/a.bin","size":1048576,"mtime-ns":1764979200123456789,"crc64nvme":"rOu5F2ppeWA="}
//! ```
//!
//! `vault` writes it as it copies, `seal` as it reads each file once; every
//! agent, and `verify` without one, reads it. It lives on the share so the
//! gateway uploads it too and any host mounting the share sees it, while the
//! manifest keeps the reference format. A line is trusted only while the
//! file still has its size and mtime: otherwise the checksum is computed
//! again from the file. The file comes from the share, so it is read as
//! hostile input: bounded, no links, and a malformed line is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::io::Read;

use super::{SHARE_DIR, Stamp};

/// Largest checksum file read (about 2.5 million files).
pub const MAX_BYTES: u64 = 512 << 20;

/// One file's line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileChecksum {
    /// Relative to the share root, as in the manifest.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// Base64 of the big-endian CRC64NVME, as S3 reports it.
    pub crc64nvme: String,
}

impl FileChecksum {
    pub fn new(path: String, stamp: Stamp, crc64nvme: String) -> FileChecksum {
        FileChecksum {
            path,
            size: stamp.size,
            mtime_ns: stamp.mtime_ns,
            crc64nvme,
        }
    }

    /// Whether this line is of the file as it is now.
    pub fn is_of(&self, now: Stamp) -> bool {
        self.size == now.size && self.mtime_ns == now.mtime_ns
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChecksumFileError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: larger than {max} bytes; not read")]
    TooLarge { path: String, max: u64 },
}

/// Where a dataset's checksums are kept.
pub fn path(share: &Path, set_id: &str) -> PathBuf {
    share
        .join(SHARE_DIR)
        .join("checksums")
        .join(format!("{set_id}.jsonl"))
}

/// A dataset's checksums by path (empty when it has none); malformed lines
/// are counted, not trusted.
#[derive(Debug, Default)]
pub struct Checksums {
    pub by_path: HashMap<String, FileChecksum>,
    pub malformed: usize,
}

impl Checksums {
    pub fn read(share: &Path, set_id: &str) -> Result<Checksums, ChecksumFileError> {
        let file = path(share, set_id);
        if !valid_set_id(set_id) {
            return Ok(Checksums::default());
        }
        let io = |e: std::io::Error| ChecksumFileError::Io {
            path: file.display().to_string(),
            message: e.to_string(),
        };
        // A regular file only (no link, no FIFO), and never past the cap.
        let (handle, meta) = match super::open_regular(&file) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Checksums::default());
            }
            Err(e) => return Err(io(e)),
        };
        let too_large = || ChecksumFileError::TooLarge {
            path: file.display().to_string(),
            max: MAX_BYTES,
        };
        if meta.len() > MAX_BYTES {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        handle
            .take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(too_large());
        }
        let mut checksums = Checksums::default();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<FileChecksum>(line) {
                Ok(c) if c.crc64nvme.len() == 12 => {
                    checksums.by_path.insert(c.path.clone(), c);
                }
                _ => checksums.malformed += 1,
            }
        }
        Ok(checksums)
    }

    /// Writes the file whole, atomically (`durable_file`), sorted by path.
    pub fn write(&self, share: &Path, set_id: &str) -> Result<PathBuf, ChecksumFileError> {
        let target = path(share, set_id);
        let fail = |e: std::io::Error| ChecksumFileError::Io {
            path: target.display().to_string(),
            message: e.to_string(),
        };
        // Checked before any folder is made under it.
        if std::fs::symlink_metadata(share.join(SHARE_DIR))
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(fail(std::io::Error::other(
                "a symbolic link stands in the way; not written",
            )));
        }
        let mut lines: Vec<&FileChecksum> = self.by_path.values().collect();
        lines.sort_by(|a, b| a.path.cmp(&b.path));
        let mut text = Vec::with_capacity(lines.len() * 120);
        for line in lines {
            serde_json::to_writer(&mut text, line).map_err(|e| fail(e.into()))?;
            text.push(b'\n');
        }
        let dir = target.parent().unwrap_or(share);
        crate::durable_file::write(dir, &target, &text).map_err(|e| ChecksumFileError::Io {
            path: target.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(target)
    }

    pub fn insert(&mut self, line: FileChecksum) {
        self.by_path.insert(line.path.clone(), line);
    }

    /// The checksum of `path` if its line is of the file as it is now.
    pub fn fresh(&self, path: &str, now: Stamp) -> Option<&str> {
        self.by_path
            .get(path)
            .filter(|c| c.is_of(now))
            .map(|c| c.crc64nvme.as_str())
    }
}

/// A set-id that names a file in the checksums folder (no path parts).
fn valid_set_id(set_id: &str) -> bool {
    !set_id.is_empty()
        && set_id != "."
        && set_id != ".."
        && !set_id.contains('/')
        && !set_id.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_skips_junk_and_trusts_a_line_only_for_its_version() {
        let share = tempfile::tempdir().unwrap();
        let mut c = Checksums::default();
        let stamp = Stamp {
            size: 3,
            mtime_ns: 1_700_000_000_123_456_789,
        };
        c.insert(FileChecksum::new(
            "S-vaultjob/a \"odd\".bin".into(),
            stamp,
            "AAAAAAAAAAA=".into(),
        ));
        let written = c.write(share.path(), "S").unwrap();
        assert!(written.ends_with(".vault-agent/checksums/S.jsonl"));
        let mut text = std::fs::read_to_string(&written).unwrap();
        text.push_str(
            "not json\n{\"path\":\"x\",\"size\":1,\"mtime-ns\":1,\"crc64nvme\":\"short\"}\n",
        );
        std::fs::write(&written, text).unwrap();
        let back = Checksums::read(share.path(), "S").unwrap();
        assert_eq!(back.malformed, 2);
        assert_eq!(
            back.fresh("S-vaultjob/a \"odd\".bin", stamp),
            Some("AAAAAAAAAAA=")
        );
        let touched = Stamp {
            mtime_ns: stamp.mtime_ns + 1,
            ..stamp
        };
        assert_eq!(back.fresh("S-vaultjob/a \"odd\".bin", touched), None);
        // None yet, or a set-id that would escape the folder: nothing.
        assert!(
            Checksums::read(share.path(), "T")
                .unwrap()
                .by_path
                .is_empty()
        );
        assert!(
            Checksums::read(share.path(), "..")
                .unwrap()
                .by_path
                .is_empty()
        );
    }
}
