//! The log format a user picks (`--log-format`). Its own file because the
//! build includes it with the command line's definition (see `args.rs`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}
