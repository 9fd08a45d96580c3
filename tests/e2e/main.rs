//! End-to-end tests: each one runs the real `vault-agent` binary with a real
//! config, SQLite file and HTTP server, and plays the File Gateway over HTTP.
//! One test binary with modules, so CI links the agent once.

mod aws;
mod cli;
mod content;
mod crash;
mod hardening;
mod history;
mod http;
mod manifests;
mod metrics;
#[path = "../moto.rs"]
mod moto;
mod plugins;
mod policy_state;
mod reconcile;
mod shared;

mod sinks;
mod status_page;
mod store;
mod support;
mod trust;
mod verify;
mod wait;
mod watcher;
