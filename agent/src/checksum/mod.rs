//! Checksums of files on the share, in S3's own terms ([`file`] keeps a
//! dataset's on the share): S3 keeps a
//! full-object CRC64NVME of every object uploaded since December 2024 (and
//! CRC32, CRC32C, SHA-1 or SHA-256 when the uploader asked for one), as the
//! base64 of the big-endian digest. Computing the same here and comparing
//! proves S3 holds the file's bytes, not only its name.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

pub mod file;

use base64::Engine as _;
use crc_fast::{CrcAlgorithm, Digest as Crc};
use sha1::Digest as _;

/// The agent's folder at the share root, outside every dataset: temporary
/// manifests, and the datasets' checksum files.
pub const SHARE_DIR: &str = ".vault-agent";

/// The checksum algorithms S3 reports, by the name it gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    Crc64Nvme,
    Crc32,
    Crc32C,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc64Nvme,
        Algorithm::Crc32,
        Algorithm::Crc32C,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// S3's name: `CRC64NVME`, `CRC32`, `CRC32C`, `SHA1`, `SHA256`.
    pub fn s3_name(self) -> &'static str {
        match self {
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32C => "CRC32C",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// Whether S3 can keep it as a full-object checksum of a multipart
    /// upload (the SHAs are only ever composite there).
    pub fn full_object_when_multipart(self) -> bool {
        matches!(
            self,
            Algorithm::Crc64Nvme | Algorithm::Crc32 | Algorithm::Crc32C
        )
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.s3_name())
    }
}

/// A running checksum of one algorithm.
pub enum Hasher {
    Crc(Box<Crc>, usize),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Crc64Nvme => Hasher::Crc(Box::new(Crc::new(CrcAlgorithm::Crc64Nvme)), 8),
            Algorithm::Crc32 => Hasher::Crc(Box::new(Crc::new(CrcAlgorithm::Crc32IsoHdlc)), 4),
            Algorithm::Crc32C => Hasher::Crc(Box::new(Crc::new(CrcAlgorithm::Crc32Iscsi)), 4),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Crc(crc, _) => crc.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    /// The checksum as S3 writes it: base64 of the big-endian digest.
    pub fn finish(self) -> String {
        let digest: Vec<u8> = match self {
            Hasher::Crc(crc, width) => crc.finalize().to_be_bytes()[8 - width..].to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(digest)
    }
}

/// The checksum of `bytes`, as S3 writes it.
pub fn of_bytes(algorithm: Algorithm, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

/// Read in pieces this large: big enough for the SIMD paths, small enough
/// to bound memory per file at once.
const CHUNK: usize = 1 << 20;

/// A regular file's size and mtime (ns) as it was checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        }
    }
}

/// Opens a file of the share to read it: never a link in the last place,
/// never blocking on a FIFO, only a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((file, meta))
}

/// The checksum of a regular file, read once, reporting each chunk's size
/// to `progress`. The stamp is the file's before the read; a file that
/// changed while it was read is an error (its checksum would be of no
/// version of it).
pub fn of_file(
    path: &Path,
    algorithm: Algorithm,
    mut progress: impl FnMut(u64),
) -> std::io::Result<(Stamp, String)> {
    let (mut file, meta) = open_regular(path)?;
    let before = Stamp::of(&meta);
    let (read, checksum) = hash_stream(&mut file, algorithm, |_| Ok(()), &mut progress)?;
    if read != before.size || Stamp::of(&file.metadata()?) != before {
        return Err(std::io::Error::other(
            "the file changed while it was read; read it again once it is still",
        ));
    }
    Ok((before, checksum))
}

/// Copies `from` to a new file `to`, computing the CRC64NVME of the bytes
/// as they pass: the copy and the checksum cost one read.
pub fn copy_with_crc64nvme(
    from: &Path,
    to: &Path,
    mut progress: impl FnMut(u64),
) -> std::io::Result<(u64, String)> {
    let mut input = std::fs::File::open(from)?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let write = |bytes: &[u8]| output.write_all(bytes);
    hash_stream(&mut input, Algorithm::Crc64Nvme, write, &mut progress)
}

/// Reads `input` to its end in [`CHUNK`]s, each hashed, handed to `each`
/// and its size to `progress`; returns the bytes read and the checksum.
fn hash_stream(
    input: &mut impl Read,
    algorithm: Algorithm,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    progress: &mut impl FnMut(u64),
) -> std::io::Result<(u64, String)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        each(&buf[..n])?;
        read += n as u64;
        progress(n as u64);
    }
    Ok((read, hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_s3s_published_values() {
        // "hello world" as S3 reports it for each algorithm.
        let hello = b"hello world";
        assert_eq!(of_bytes(Algorithm::Crc32, hello), "DUoRhQ==");
        assert_eq!(of_bytes(Algorithm::Crc32C, hello), "yZRlqg==");
        assert_eq!(
            of_bytes(Algorithm::Sha1, hello),
            "Kq5sNclPz7QV2+lfQIuc6R7oRu0="
        );
        assert_eq!(
            of_bytes(Algorithm::Sha256, hello),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        // CRC64NVME of "123456789" is the catalogue's check value.
        assert_eq!(
            of_bytes(Algorithm::Crc64Nvme, b"123456789"),
            base64::engine::general_purpose::STANDARD
                .encode(0xae8b_1486_0a79_9888u64.to_be_bytes())
        );
    }

    #[test]
    fn a_copy_and_a_read_agree_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&from, &data).unwrap();
        let mut seen = 0;
        let (n, crc) = copy_with_crc64nvme(&from, &dir.path().join("to"), |n| seen += n).unwrap();
        assert_eq!((n, seen), (data.len() as u64, data.len() as u64));
        let (stamp, again) = of_file(&dir.path().join("to"), Algorithm::Crc64Nvme, |_| {}).unwrap();
        assert_eq!((stamp.size, &again), (data.len() as u64, &crc));
        assert_eq!(crc, of_bytes(Algorithm::Crc64Nvme, &data));
        std::os::unix::fs::symlink(&from, dir.path().join("link")).unwrap();
        assert!(of_file(&dir.path().join("link"), Algorithm::Crc64Nvme, |_| {}).is_err());
    }
}
