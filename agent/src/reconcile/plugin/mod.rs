//! The policy host: reconcile policies as WebAssembly components.
//!
//! [`host`] owns wasmtime (engine, epoch deadlines, memory limits, compile
//! cache, no capabilities; [`frozen_time`] is the only clock a plugin
//! sees), [`component`] wraps one plugin as a [`Policy`],
//! [`router`] picks a policy per set-id, and [`bundled`] holds the policies
//! built from `plugins/` into the binary. This file assembles the
//! configured policies ([`build`]); [`error`], [`source`] and [`health`] say
//! why a plugin did not load, where it comes from, and how it is doing.

mod bindings;
pub mod bundled;
pub mod compile_job;
pub mod component;
mod dataset_state;
mod error;
mod frozen_time;
mod health;
pub mod host;
mod output;
mod reloader;
pub mod router;
mod source;

use std::path::Path;
use std::sync::Arc;

pub use component::{CallStats, WasmPolicy};
pub use error::PluginError;
pub use health::{HealthSlot, PluginHealth, PluginState, PolicyHealth};
pub use host::{Limits, PluginHost, SUPPORTED_PACKAGE, SUPPORTED_PACKAGES, SUPPORTED_WIT};
pub use source::PluginSource;

use crate::config::ReconcileSection;
use crate::reconcile::policy::{self, ExactMatch, Policy};

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
