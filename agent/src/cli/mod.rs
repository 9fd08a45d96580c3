//! Commands besides `run`: `status` (asks a running agent; `watch` is its
//! live view), `verify` (a dataset against its S3 listing), `demo`, and the plugin author's `plugin list | test | new`.

pub mod check_config;
pub mod demo;
pub mod plugin;
pub mod status;
#[cfg(feature = "aws")]
pub mod verify;
pub mod watch;
