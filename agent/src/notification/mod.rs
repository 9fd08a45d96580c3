//! What the File Gateway tells us: the `Storage Gateway Object Upload Event`
//! envelope ([`parse`]) and which dataset an uploaded key belongs to
//! ([`classify`]).

pub mod classify;
pub mod parse;
pub mod sample;
pub mod time;

pub use classify::{Classification, Classifier, UploadKind};
pub use parse::{Notification, ObjectUpload, ParseError, parse_body, parse_event};
