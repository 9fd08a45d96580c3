//! The policy host: reconcile policies as WebAssembly components.
//!
//! [`host`] owns wasmtime (engine, epoch deadlines, memory limits, compile
//! cache, no capabilities; [`frozen_time`] is the only clock a plugin
//! sees), [`component`] wraps one plugin as a [`Policy`],
//! [`router`] picks a policy per set-id, and [`bundled`] holds the policies
//! built from `plugins/` into the binary.

mod bindings;
pub mod bundled;
pub mod compile_job;
pub mod component;
mod dataset_state;
mod frozen_time;
pub mod host;
mod output;
mod reloader;
pub mod router;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use component::{CallStats, WasmPolicy};
pub use host::{Limits, PluginHost, SUPPORTED_PACKAGE, SUPPORTED_PACKAGES};

use crate::config::ReconcileSection;
use crate::reconcile::policy::{self, ExactMatch, Policy};

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

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Bundled(&'static str),
    File(PathBuf),
}

impl PluginSource {
    /// The component's bytes; a file larger than `limit` is refused
    /// before it is read whole (compiling is costly in time and memory).
    pub fn bytes(&self, plugin: &str, limit: u64) -> Result<Cow<'static, [u8]>, PluginError> {
        match self {
            PluginSource::Bundled(name) => bundled::bytes(name)
                .map(Cow::Borrowed)
                .ok_or_else(|| PluginError::Unknown((*name).to_owned())),
            PluginSource::File(path) => {
                use std::io::Read;
                let read_error = |e: std::io::Error| PluginError::Read {
                    plugin: plugin.to_owned(),
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let mut bytes = Vec::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes))
                    .map_err(read_error)?;
                if bytes.len() as u64 > limit {
                    return Err(PluginError::TooLarge {
                        plugin: plugin.to_owned(),
                        path: path.display().to_string(),
                        limit,
                    });
                }
                Ok(Cow::Owned(bytes))
            }
        }
    }

    /// The source a configured policy name refers to.
    pub fn for_name(name: &str) -> Result<PluginSource, PluginError> {
        if policy::is_plugin_path(name) {
            return Ok(PluginSource::File(PathBuf::from(name)));
        }
        bundled::BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, _)| PluginSource::Bundled(n))
            .ok_or_else(|| PluginError::Unknown(name.to_owned()))
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Bundled(_) => write!(f, "bundled"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What `/status` shows of each plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginHealth {
    pub name: String,
    /// The set-ids it decides: a route's glob, or `default`.
    pub route: String,
    pub source: String,
    /// `ready`, `quarantined` or `broken`.
    pub state: String,
    pub calls: u64,
    pub last_error: Option<String>,
}

/// Plugins are compiled in a bounded child process of this binary, when
/// it is the agent (not a test or a benchmark harness linking the library).
fn compile_job(config: &ReconcileSection) -> Option<compile_job::CompileJob> {
    let exe = std::env::current_exe().ok()?;
    let is_agent = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("vault-agent"));
    is_agent.then(|| compile_job::CompileJob {
        exe,
        timeout: config.plugin_compile_timeout.0,
        memory_bytes: config.plugin_compile_memory_mb.get() as u64 * (1 << 20),
    })
}

/// Where one configured policy reports its health: the board shared with
/// the HTTP server, under the policy's route (two routes may load one
/// `.wasm` with different settings, and fail differently).
#[derive(Clone)]
pub struct HealthSlot {
    pub board: PolicyHealth,
    pub route: String,
}

impl Default for HealthSlot {
    fn default() -> Self {
        HealthSlot {
            board: PolicyHealth::default(),
            route: "default".into(),
        }
    }
}

/// Every plugin's health, by route; shared with the HTTP server.
pub type PolicyHealth = Arc<Mutex<BTreeMap<String, PluginHealth>>>;

/// The display name of a configured policy: a bundled name or a file stem.
pub fn policy_name(configured: &str) -> String {
    if policy::is_plugin_path(configured) {
        Path::new(configured).file_stem().map_or_else(
            || configured.to_owned(),
            |s| s.to_string_lossy().into_owned(),
        )
    } else {
        configured.to_owned()
    }
}

/// Builds the configured policy (with its routes). Plugins that fail to load
/// are kept broken (fail closed) and reported in `health`.
pub fn build(
    config: &ReconcileSection,
    cache_dir: &Path,
    health: &PolicyHealth,
) -> Result<Box<dyn Policy>, PluginError> {
    let limits = Limits {
        call_timeout: config.plugin_timeout.0,
        memory_bytes: (config.plugin_memory_mb.get() as usize) << 20,
        batch_budget: config.plugin_time_per_batch.0,
        component_bytes: config.plugin_max_size.0,
    };
    let mut host: Option<Arc<PluginHost>> = None;
    let mut make = |configured: &str,
                    settings: &[(String, String)],
                    route: String|
     -> Result<Box<dyn Policy>, PluginError> {
        if configured == policy::NATIVE_EXACT_MATCH {
            return Ok(Box::new(ExactMatch));
        }
        let host = match &host {
            Some(h) => h.clone(),
            None => {
                let h = PluginHost::with_compile_job(
                    Some(cache_dir.to_owned()),
                    limits,
                    compile_job(config),
                )?;
                host = Some(h.clone());
                h
            }
        };
        let source = PluginSource::for_name(configured)?;
        Ok(Box::new(WasmPolicy::load(
            host,
            &policy_name(configured),
            source,
            settings.to_vec(),
            HealthSlot {
                board: health.clone(),
                route,
            },
        )))
    };
    let default = make(
        config.policy.get_ref(),
        &config.policy_config.0,
        "default".into(),
    )?;
    if config.routes.is_empty() {
        return Ok(default);
    }
    let mut routes = Vec::new();
    for route in &config.routes {
        let pattern = glob::Pattern::new(route.set_ids.get_ref())
            .map_err(|e| PluginError::Host(e.to_string()))?;
        routes.push((
            pattern,
            make(
                route.policy.get_ref(),
                &route.policy_config.0,
                route.set_ids.get_ref().clone(),
            )?,
        ));
    }
    Ok(Box::new(router::PolicyRouter::new(routes, default)))
}
