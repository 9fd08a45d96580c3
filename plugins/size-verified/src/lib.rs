//! `size-verified`: names and sizes must match. Each file's upload must
//! have the size the file has on the share; a file whose size the agent could
//! not read counts as a mismatch (fail closed). Takes no settings.

use vault_policy_sdk::{ExpectedEntry, Level, Policy, Settings, Upload, log};

struct SizeVerified;

impl Policy for SizeVerified {
    fn init(settings: &Settings) -> Result<Self, String> {
        settings.allow_only(&[])?;
        Ok(SizeVerified)
    }

    fn wants_expected_sizes(&self) -> bool {
        true
    }

    fn entry_matches(&self, expected: &ExpectedEntry, upload: &Upload) -> bool {
        if upload.object_key.ends_with('/') {
            return true; // Directories have no size to compare.
        }
        match expected.size {
            Some(size) if size == upload.size => true,
            Some(size) => {
                log(Level::Warn, &format!("{}: uploaded {} bytes, the share has {size}", upload.entry, upload.size));
                false
            }
            None => {
                log(Level::Warn, &format!("{}: size on the share unknown; cannot verify", upload.entry));
                false
            }
        }
    }
}

vault_policy_sdk::policy!(SizeVerified);
