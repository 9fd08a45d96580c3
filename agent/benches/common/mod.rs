//! What the benches share: a gateway-shaped notification, and a real agent
//! started from config text.

use std::path::Path;

use vault_agent::Agent;
use vault_agent::config;
use vault_agent::notification::sample::gateway_event_text;

/// A Storage Gateway Object Upload Event for `key`, as JSON text.
pub fn notification_json(key: &str, size: u64) -> String {
    gateway_event_text("vault-bucket", key, size, "2021-05-01T10:00:00Z")
}

/// A running agent configured by `config_text` (paths relative to `dir`),
/// with the runtime it runs on.
#[allow(dead_code)] // Not every bench starts an agent this way.
pub fn start_agent(config_text: &str, dir: &Path) -> (tokio::runtime::Runtime, Agent) {
    let config = config::parse(config_text, Path::new("bench.toml"), dir).expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let agent = runtime.block_on(Agent::start(&config)).expect("agent");
    (runtime, agent)
}
