//! Operations on the share itself: writing a dataset's manifest ([`seal`]),
//! copying a tree in as a dataset ([`vault`]; both keep the files'
//! checksums, [`crate::checksum`]), generating test data ([`gen_data`]),
//! and finding files still open for writing ([`open_files`]).

pub mod gen_data;
pub mod open_files;
pub mod seal;
pub mod vault;
