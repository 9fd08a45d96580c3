//! vault-agent: tells you when a dataset written to an AWS Storage Gateway
//! (File Gateway) share is completely in S3.
//!
//! Data flows through the modules in this order (see ARCHITECTURE.md):
//! [`sources`] (notifications in) -> [`notification`] (parse, classify) ->
//! [`reconcile`] (engine + policy) -> [`store`] (durable records and the
//! outbox) -> [`sinks`] (the [`outbound`] events, in the reference's shape);
//! the [`watcher`] sees what is written on the share, and [`share`] writes
//! manifests and vaults datasets. [`agent`] wires them together,
//! [`server`] is the HTTP front, [`config`] the TOML file, [`cli`] the
//! commands beyond `run`. [`layering`] lists which module may use which.

pub mod agent;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod durable_file;
pub mod health;
pub mod layering;
pub mod logging;
pub mod notification;
pub mod outbound;
pub mod preflight;
pub mod reconcile;
pub mod server;
pub mod share;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod watcher;

pub use agent::Agent;

/// moto for the unit tests of the DynamoDB backend (the end-to-end tests
/// and the benchmarks include the same file).
#[cfg(all(test, feature = "aws"))]
#[path = "../../tests/moto.rs"]
pub(crate) mod test_moto;
