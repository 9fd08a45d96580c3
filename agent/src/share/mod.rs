//! Operations on the share itself: writing a dataset's manifest ([`seal`]),
//! copying a tree in as a dataset ([`vault`]), the files' checksums in S3's
//! terms ([`checksum`]) and the file that keeps them ([`checksum_file`]),
//! generating test data ([`gen_data`]), and finding files still open for
//! writing ([`open_files`]).

pub mod checksum;
pub mod checksum_file;
pub mod gen_data;
pub mod open_files;
pub mod seal;
pub mod vault;
