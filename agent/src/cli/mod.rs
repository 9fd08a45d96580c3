//! Commands besides `run`: `status` (asks a running agent; `watch` is its
//! live view), `demo`, and the plugin author's `plugin list | test | new`.

pub mod check_config;
pub mod demo;
pub mod plugin;
pub mod status;
pub mod watch;
