//! The agent's build script: the bundled policies (`plugins.rs`), the git
//! commit for `--version` (`commit.rs`), and the man pages and completions
//! the package installs (`docs.rs`).

use std::path::PathBuf;

mod commit;
mod docs;
mod plugins;

// The command line's definition, shared with the binary (docs.rs).
#[allow(dead_code)]
#[path = "../src/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../src/logging/format.rs"]
mod log_format;
use log_format::LogFormat;
/// Man pages name the version only: the commit is the binary's to tell.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("agent/ sits in the workspace");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    commit::write(root);
    plugins::build(root, &out_dir);
    docs::write(&out_dir);
}
