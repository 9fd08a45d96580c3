//! Commands besides `run`: `status` (asks a running agent) and `demo`.

pub mod demo;
pub mod status;
