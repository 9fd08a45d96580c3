//! Writing a file so that a crash or power loss leaves the old file or the
//! new one, whole, never a part: a temporary file in the same filesystem,
//! fsync, rename over the target, fsync of the directory. The manifest
//! (`seal`) and the checksum files are written this way.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DurableFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; nothing is written through it")]
    Link { path: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DurableFileError + '_ {
    move |source| DurableFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The new content of `target`, written and synced under a temporary name
/// and not yet in place: `commit` renames it over `target`. Dropped
/// without a commit, the temporary file is removed.
pub struct Staged {
    temp: tempfile::TempPath,
    target: PathBuf,
}

/// Writes `bytes` to a new file in `temp_dir` (created if missing; it must
/// not be a link, nor be on another filesystem than `target`), synced.
pub fn stage(temp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<Staged, DurableFileError> {
    std::fs::create_dir_all(temp_dir).map_err(io(temp_dir))?;
    if std::fs::symlink_metadata(temp_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(DurableFileError::Link {
            path: temp_dir.display().to_string(),
        });
    }
    let mut file = tempfile::Builder::new()
        .suffix(".tmp")
        .tempfile_in(temp_dir)
        .map_err(io(temp_dir))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.as_file().sync_all());
    let (file, temp) = file.into_parts();
    drop(file);
    written.map_err(io(&temp))?;
    Ok(Staged {
        temp,
        target: target.to_owned(),
    })
}

impl Staged {
    /// The temporary file, complete and synced.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Renames the file into place and syncs the directory, so the rename
    /// itself survives power loss.
    pub fn commit(self) -> Result<PathBuf, DurableFileError> {
        let Staged { temp, target } = self;
        temp.persist(&target).map_err(|e| io(&target)(e.error))?;
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(target)
    }
}

/// `stage`, then `commit`, with nothing in between.
pub fn write(temp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<PathBuf, DurableFileError> {
    stage(temp_dir, target, bytes)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_appears_only_on_commit_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.txt");
        std::fs::write(&target, "old").unwrap();
        let staged = stage(&dir.path().join("tmp"), &target, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(staged.path()).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(staged.commit().unwrap(), target);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_staged_file_dropped_uncommitted_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.txt");
        let staged = stage(dir.path(), &target, b"new").unwrap();
        let temp = staged.path().to_owned();
        drop(staged);
        assert!(!temp.exists() && !target.exists());
    }

    #[test]
    fn a_temp_dir_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let link = dir.path().join("tmp");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let err = write(&link, &dir.path().join("out.txt"), b"x")
            .err()
            .unwrap();
        assert!(matches!(err, DurableFileError::Link { .. }), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
