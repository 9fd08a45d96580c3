//! What each plugin reports of itself, for `/status` and `/healthz`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What `/status` shows of each plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginHealth {
    pub name: String,
    /// The set-ids it decides: a route's glob, or `default`.
    pub route: String,
    pub source: String,
    pub state: PluginState,
    pub calls: u64,
    pub last_error: Option<String>,
}

/// Whether a plugin takes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    /// Loaded; calls run.
    Ready,
    /// Failed too many calls in a row: calls fail closed for a while.
    Quarantined,
    /// Does not load: every call fails closed until a replacement loads.
    Broken,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Ready => "ready",
            PluginState::Quarantined => "quarantined",
            PluginState::Broken => "broken",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
