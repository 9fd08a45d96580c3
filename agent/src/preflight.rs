//! The checks `run` makes before it creates anything, which `check-config`
//! makes too: a config that passes here does not fail at start-up for
//! these reasons.

use std::path::Path;

use crate::config::Config;
use crate::store::StoreError;
use crate::store::local_fs::{check_state_dir, check_writable, nearest_existing};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    StateDir(#[from] StoreError),
    #[error("sink {name}: {message}")]
    Sink { name: String, message: String },
    #[error(
        "this vault-agent was built without AWS support (the `aws` cargo feature), which {0} needs; install a build with it, or use the HTTP source, the SQLite store and local sinks"
    )]
    NoAws(String),
}

/// Every check that needs no network and changes nothing.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    if !cfg!(feature = "aws") && !config.aws_users().is_empty() {
        return Err(PreflightError::NoAws(config.aws_users().join(", ")));
    }
    check_state_dir(&config.agent.state_dir, Some(&config.share.path))?;
    for sink in &config.sinks {
        let sink = sink.get_ref();
        if let Some(path) = sink.settings().local_file() {
            check_file_sink(path).map_err(|message| PreflightError::Sink {
                name: sink.name(),
                message,
            })?;
        }
    }
    Ok(())
}

/// A file sink's file can be appended to, or created.
fn check_file_sink(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!("{} is a directory", path.display())),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot append to {}: {e}", path.display())),
        Err(_) => {
            let (existing, _) = nearest_existing(path);
            if !existing.is_dir() {
                return Err(format!(
                    "cannot create {}: {} is not a directory",
                    path.display(),
                    existing.display()
                ));
            }
            check_writable(existing).map_err(|e| {
                format!(
                    "cannot create {}: {} is not writable: {e}",
                    path.display(),
                    existing.display()
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_inside_the_share_is_refused_without_creating_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.share.path = tmp.path().to_owned();
        config.agent.state_dir = tmp.path().join("state");
        let err = check(&config).unwrap_err().to_string();
        assert!(err.contains("inside the share"), "{err}");
        assert!(!tmp.path().join("state").exists());
    }

    #[test]
    fn unwritable_sink_folders_are_refused() {
        let err = check_file_sink(Path::new("/proc/vault-agent-test/events.jsonl")).unwrap_err();
        assert!(err.contains("not writable"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        check_file_sink(&tmp.path().join("new/events.jsonl")).unwrap();
        assert!(!tmp.path().join("new").exists());
    }
}
