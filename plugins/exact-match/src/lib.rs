//! `exact-match`: the reference's rule with its directory fix. The set of
//! notified entries must equal the set of manifest lines (names only; a
//! directory key `dir/` equals its line `dir`). Takes no settings.

use vault_policy_sdk::{Policy, Settings};

struct ExactMatch;

impl Policy for ExactMatch {
    fn init(settings: &Settings) -> Result<Self, String> {
        settings.allow_only(&[])?;
        Ok(ExactMatch)
    }
}

vault_policy_sdk::policy!(ExactMatch);
