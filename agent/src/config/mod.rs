//! The agent's TOML configuration: the file's shape ([`file`]), loading with
//! line-precise errors and path resolution ([`load`]), and the small value
//! types that validate themselves while parsing ([`values`]).

mod file;
mod load;
pub mod policy_name;
mod values;

pub use file::{
    AgentSection, AwsSection, Config, ContentMode, HttpSection, ReconcileSection, RouteConfig,
    ShareSection, SinkConfig, SourceConfig, StoreBackend, StoreSection, SyncMode, VerifyMode,
    WatchKind,
};
pub use load::{ConfigError, load, parse};
pub use values::{ApiKey, ByteCount, HumanDuration, PolicySettings, Suffix};
