//! One agent per state directory. Two agents on one SQLite file would each
//! decide the same datasets (with different policies, opposite events), so
//! the agent holds an exclusive `flock` on `<state_dir>/vault-agent.lock`
//! for as long as it runs; the kernel releases it when the process ends,
//! however it ends. The holder's pid is written in the file for the error.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

pub const LOCK_FILE: &str = "vault-agent.lock";

/// Held while the agent runs; dropping it releases the directory.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

/// Takes the state directory (which must exist) for this process.
pub fn lock(state_dir: &Path) -> Result<StateLock, StoreError> {
    let path = state_dir.join(LOCK_FILE);
    let fail = |message: String| StoreError::StateDir {
        path: state_dir.display().to_string(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another vault-agent".to_owned()
            } else {
                format!("another vault-agent (pid {holder})")
            };
            return Err(fail(format!(
                "it is in use by {who}; each agent needs its own [agent] state_dir"
            )));
        }
        Err((_, e)) => return Err(fail(format!("cannot lock {}: {e}", path.display()))),
    };
    // Best effort: the pid only makes the error above more useful.
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = writeln!(lock, "{}", std::process::id());
    let _ = lock.flush();
    Ok(StateLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by another vault-agent (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        lock(dir.path()).unwrap();
    }
}
