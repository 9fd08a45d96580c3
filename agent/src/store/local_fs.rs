//! Refuses to keep the state database on a network filesystem: SQLite's file
//! locks and its WAL's shared memory do not work over NFS or SMB, so a state
//! directory on the share itself would corrupt silently.

use std::path::Path;

use nix::sys::statfs::{self, FsType};

use super::StoreError;

/// Filesystem magic numbers (see statfs(2)) of network and cluster filesystems.
const NETWORK_FILESYSTEMS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x5346_414F, "AFS"),
    (0x00C3_6400, "CephFS"),
    (0x0102_1997, "9p"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
];

/// Checks, without creating anything, that `dir` (or, while it does not
/// exist yet, the folder it would be made in) is on a local filesystem,
/// writable, and not below the share.
pub fn check_state_dir(dir: &Path, share: Option<&Path>) -> Result<(), StoreError> {
    let fail = |message: String| StoreError::StateDir {
        path: dir.display().to_string(),
        message,
    };
    let (existing, rest) = nearest_existing(dir);
    if existing == dir && !dir.is_dir() {
        return Err(fail("it exists and is not a directory".into()));
    }
    let canonical = existing
        .canonicalize()
        .map_err(|e| fail(format!("cannot resolve it: {e}")))?
        .join(rest);
    if let Some(share) = share.and_then(|s| s.canonicalize().ok())
        && canonical.starts_with(&share)
    {
        return Err(fail(format!(
            "it is inside the share {}; keep agent state on a local disk",
            share.display()
        )));
    }
    let stat = statfs::statfs(existing).map_err(|e| fail(format!("cannot statfs it: {e}")))?;
    if let Some(name) = network_filesystem(stat.filesystem_type()) {
        return Err(fail(format!(
            "it is on a network filesystem ({name}); SQLite locking and WAL do not work there. \
             Point [agent] state_dir at a local disk"
        )));
    }
    check_writable(existing)
        .map_err(|e| fail(format!("{} is not writable: {e}", existing.display())))
}

/// Creates `dir` after [`check_state_dir`].
pub fn prepare_state_dir(dir: &Path, share: Option<&Path>) -> Result<(), StoreError> {
    check_state_dir(dir, share)?;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::StateDir {
        path: dir.display().to_string(),
        message: format!("cannot create it: {e}"),
    })
}

/// The longest existing prefix of `path`, and what follows it.
pub fn nearest_existing(path: &Path) -> (&Path, std::path::PathBuf) {
    let mut existing = path;
    while existing.symlink_metadata().is_err() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => return (Path::new("."), path.to_owned()),
        }
    }
    let rest = path
        .strip_prefix(existing)
        .unwrap_or(Path::new(""))
        .to_owned();
    (existing, rest)
}

/// Whether a file can be created in `dir`: tried for real (a temporary file,
/// removed at once), since permission bits say nothing to root or about
/// read-only mounts.
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".vault-agent-check")
        .tempfile_in(dir)
        .map(drop)
}

fn network_filesystem(fs: FsType) -> Option<&'static str> {
    // fs_type_t is i64 on x86_64 glibc but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.0 as i64 & 0xFFFF_FFFF;
    NETWORK_FILESYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_temp_dir_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        prepare_state_dir(&tmp.path().join("state"), None).unwrap();
        assert!(tmp.path().join("state").is_dir());
    }

    #[test]
    fn state_inside_the_share_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare_state_dir(&tmp.path().join("state"), Some(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("inside the share"), "{err}");
    }

    #[test]
    fn nfs_and_smb_magic_numbers_are_network() {
        assert_eq!(network_filesystem(FsType(0x6969)), Some("NFS"));
        assert_eq!(
            network_filesystem(FsType(0xFE53_4D42u32 as _)),
            Some("SMB2")
        );
        assert_eq!(network_filesystem(statfs::EXT4_SUPER_MAGIC), None);
        assert_eq!(network_filesystem(statfs::TMPFS_MAGIC), None);
    }
}
