//! Which files below a directory are open for writing by a process on this
//! host (from `/proc/*/fd` and `/proc/*/fdinfo`). Processes of other users
//! are visible only to root; writers on other NFS clients are not visible.

use std::path::{Path, PathBuf};

/// Paths below `dir` open for writing, with the pid that holds each.
pub fn writers_below(dir: &Path) -> Vec<(PathBuf, u32)> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for proc_entry in procs.filter_map(Result::ok) {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !target.starts_with(&dir) {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            if opened_for_writing(&info) {
                found.push((target, pid));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn opened_for_writing(fdinfo: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(fdinfo) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & (libc::O_ACCMODE as u32) != libc::O_RDONLY as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_our_own_open_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.bin");
        let file = std::fs::File::create(&path).unwrap();
        let found = writers_below(dir.path());
        assert!(
            found
                .iter()
                .any(|(p, pid)| p.ends_with("busy.bin") && *pid == std::process::id()),
            "{found:?}"
        );
        drop(file);
        let _reader = std::fs::File::open(&path).unwrap();
        assert!(
            writers_below(dir.path()).is_empty(),
            "a reader is not a writer"
        );
    }
}
