//! Deciding when a dataset is complete. The [`engine`] applies each committed
//! batch of uploads to the touched datasets' incremental counters and asks the
//! [`policy`] for a decision; [`manifest`] reads the manifest from the share;
//! [`listing`] cross-checks a dataset against its S3 listing.

pub mod content;
pub mod engine;
pub mod listing;
pub mod manifest;
pub mod manifest_reader;
pub mod plugin;
pub mod policy;

pub use engine::{
    CommitNews, Engine, EngineError, EngineHandle, EngineSettings, IngestReceipt, LocalChange,
};
