//! What the benches share: a gateway-shaped notification, and a real agent
//! started from config text.

use std::path::Path;

use vault_agent::Agent;
use vault_agent::config;

/// A Storage Gateway Object Upload Event for `key`, as JSON text.
pub fn notification_json(key: &str, size: u64) -> String {
    let prefix = key.rsplit_once('/').map_or("", |(p, _)| p);
    format!(
        r#"{{"version":"0","id":"6a7e8feb-b491-4cf7-a9f1-bf3703467718","detail-type":"Storage Gateway Object Upload Event","source":"aws.storagegateway","account":"123456789012","time":"2021-05-01T10:00:00Z","region":"eu-west-1","resources":["arn:aws:storagegateway:eu-west-1:123456789012:share/share-1","arn:aws:storagegateway:eu-west-1:123456789012:gateway/sgw-1","arn:aws:s3:::vault-bucket"],"detail":{{"bucket-name":"vault-bucket","object-key":"{key}","object-size":{size},"modification-time":"2021-05-01T09:59:58Z","event-type":"object-upload-complete","prefix":"{prefix}/"}}}}"#
    )
}

/// A running agent configured by `config_text` (paths relative to `dir`),
/// with the runtime it runs on.
pub fn start_agent(config_text: &str, dir: &Path) -> (tokio::runtime::Runtime, Agent) {
    let config = config::parse(config_text, Path::new("bench.toml"), dir).expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let agent = runtime.block_on(Agent::start(&config)).expect("agent");
    (runtime, agent)
}
