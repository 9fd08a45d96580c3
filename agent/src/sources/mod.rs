//! Where upload notifications come from. Each source parses and classifies
//! on its own threads and hands batches to the reconcile engine, answering
//! its sender only after the engine committed them.

pub mod http;
#[cfg(feature = "aws")]
pub mod s3_listing;
#[cfg(feature = "aws")]
pub mod s3_objects;
#[cfg(feature = "aws")]
pub mod sqs;
