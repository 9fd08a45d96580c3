//! Why a plugin did not load.

use super::SUPPORTED_PACKAGES;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: cannot read {path}: {message}")]
    Read {
        plugin: String,
        path: String,
        message: String,
    },
    #[error("plugin {plugin}: {path} is larger than [reconcile] plugin_max_size ({limit} bytes)")]
    TooLarge {
        plugin: String,
        path: String,
        limit: u64,
    },
    #[error("plugin {plugin}: not a WebAssembly file")]
    NotWasm { plugin: String },
    #[error(
        "plugin {plugin}: a core WebAssembly module, not a component; build it with `cargo build --release --target wasm32-wasip2`"
    )]
    CoreModule { plugin: String },
    #[error("plugin {plugin}: does not compile: {message}")]
    Compile { plugin: String, message: String },
    #[error(
        "plugin {plugin}: built for {found}, but this agent supports {} only; rebuild it against this agent's wit/",
        SUPPORTED_PACKAGES.join(", ")
    )]
    WrongVersion { plugin: String, found: String },
    #[error("plugin {plugin}: missing export `vault:reconcile/policy` ({}); it exports {}", SUPPORTED_PACKAGES.join(", "), list(.exports))]
    MissingExport {
        plugin: String,
        exports: Vec<String>,
    },
    #[error("plugin {plugin}: cannot be linked (wrong world?): {message}")]
    Link { plugin: String, message: String },
    #[error("plugin {plugin}: {message}")]
    Init { plugin: String, message: String },
    #[error(
        "unknown policy {0:?}: the bundled ones are {bundled}; or give the path of a .wasm component",
        bundled = crate::config::policy_name::builtin().collect::<Vec<_>>().join(", ")
    )]
    Unknown(String),
    #[error("policy host: {0}")]
    Host(String),
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}
