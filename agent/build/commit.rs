//! The git commit built, for `--version` and `vault_agent_build_info`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `VAULT_AGENT_COMMIT`: the git commit built, for `--version` and
/// `vault_agent_build_info` (`unknown` outside a git checkout, as from a
/// source tarball). Rebuilt when HEAD moves.
pub fn write(root: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VAULT_AGENT_COMMIT={commit}");
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watched = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git_dir.join(head));
        }
        // Only files that exist: a missing one would rerun this every build.
        for path in watched.into_iter().filter(|p| p.is_file()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
