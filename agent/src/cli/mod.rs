//! Commands besides `run`: `status` (asks a running agent; `watch` is its
//! live view), `verify` (a dataset against its S3 listing; `verify_content` its files' bytes against S3's checksums), `demo`, and the plugin author's `plugin list | test | new`.

pub mod check_config;
pub mod demo;
pub mod plugin;
pub mod status;
#[cfg(feature = "aws")]
pub mod verify;
#[cfg(feature = "aws")]
pub mod verify_content;
pub mod wait;
pub mod watch;
