//! Builds the WebAssembly policies in `plugins/` (for wasm32-wasip2) so the
//! agent can bundle them, and leaves the test fixtures beside them.
//!
//! The nested cargo uses its own target directory next to the agent's, so
//! it never waits on the outer build's lock, and is shared by the debug and
//! release builds of the agent.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
/// Folders of `plugins/` that hold no bundled policy.
const NOT_POLICIES: &[&str] = &["sdk", "fixtures", "target"];

pub fn build(root: &Path, out_dir: &Path) {
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // OUT_DIR is <target>/<profile>/build/<pkg>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(out_dir)
        .join("wasm-plugins");
    ensure_target();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the outer (host) build must not leak into this one.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build plugins/: {e}"));
    if !status.success() {
        panic!("building the policies in plugins/ for {TARGET} failed (see above)");
    }
    let built = target_dir.join(TARGET).join("release");
    let dest = out_dir.join("plugins");
    std::fs::create_dir_all(&dest).expect("OUT_DIR is writable");
    // Every folder of plugins/ with a crate is a bundled policy, named
    // after its folder; the fixtures are built for the tests only.
    let policies = crates_in(&plugins, NOT_POLICIES);
    let fixtures: Vec<String> = crates_in(&plugins.join("fixtures"), &[])
        .into_iter()
        .map(|f| format!("fixture-{f}"))
        .collect();
    for name in policies.iter().chain(&fixtures) {
        let file = format!("{}.wasm", name.replace('-', "_"));
        copy(&built.join(&file), &dest.join(&file));
    }
    write_lists(out_dir, &policies);
    write_wit_package(&root.join("wit"), out_dir);
}

/// `wit_package.rs`: the WIT packages this agent implements, read from the
/// `package` lines of `wit/<version>/reconcile.wit` (the one place each
/// version is written). The newest is the current one: what new plugins
/// build against (`plugin new` ships its text).
fn write_wit_package(wit_dir: &Path, out_dir: &Path) {
    let mut versions: Vec<(Vec<u64>, String, PathBuf)> = std::fs::read_dir(wit_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", wit_dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path().join("reconcile.wit"))
        .filter(|p| p.is_file())
        .map(|p| {
            let package = package_of(&p);
            let version = package
                .split_once('@')
                .and_then(|(_, v)| v.split('.').map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| panic!("{}: package {package} has no version", p.display()));
            (version, package, p)
        })
        .collect();
    versions.sort();
    versions.reverse();
    let (_, current, current_path) = versions
        .first()
        .unwrap_or_else(|| panic!("{}: no <version>/reconcile.wit", wit_dir.display()));
    let (name, _) = current.split_once('@').expect("checked above");
    let all: Vec<String> = versions.iter().map(|(_, p, _)| format!("{p:?}")).collect();
    let code = format!(
        "/// The current WIT package (the newest in wit/): what new plugins build against.\n\
         pub const SUPPORTED_PACKAGE: &str = {current:?};\n\
         /// Its text, which `plugin new` ships with the SDK.\n\
         pub const SUPPORTED_WIT: &str = include_str!({path:?});\n\
         /// Every WIT package this agent loads plugins of, newest first.\n\
         pub const SUPPORTED_PACKAGES: &[&str] = &[{}];\n\
         const POLICY_EXPORT_PREFIX: &str = \"{name}/policy@\";\n",
        all.join(", "),
        path = current_path.display().to_string(),
    );
    std::fs::write(out_dir.join("wit_package.rs"), code).expect("OUT_DIR is writable");
}

/// The `package` line of a WIT file: `vault:reconcile@0.2.0`.
fn package_of(wit: &Path) -> String {
    let text = std::fs::read_to_string(wit).unwrap_or_else(|e| panic!("{}: {e}", wit.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim().to_owned())
        .unwrap_or_else(|| panic!("{}: no `package` line", wit.display()))
}

/// The folders under `dir` holding a Cargo.toml, sorted.
fn crates_in(dir: &Path, skip: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !skip.contains(&name.as_str()))
        .collect();
    names.sort();
    names
}

/// `bundled_names.rs` (the names, for the config) and
/// `bundled_components.rs` (names with the component bytes, for the host).
fn write_lists(out_dir: &Path, policies: &[String]) {
    let names: Vec<String> = policies.iter().map(|p| format!("{p:?}")).collect();
    let names = format!(
        "/// The bundled policies: one per crate folder of `plugins/`.\npub const BUNDLED: &[&str] = &[{}];\n",
        names.join(", ")
    );
    std::fs::write(out_dir.join("bundled_names.rs"), names).expect("OUT_DIR is writable");
    let components: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "({p:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/plugins/{}.wasm\")))",
                p.replace('-', "_")
            )
        })
        .collect();
    let components = format!("&[{}]", components.join(", "));
    std::fs::write(out_dir.join("bundled_components.rs"), components).expect("OUT_DIR is writable");
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

/// Installs the wasm32-wasip2 standard library if it is missing, so the
/// README's commands need no manual set-up.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if installed {
        return;
    }
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and build again"
        );
    }
}
