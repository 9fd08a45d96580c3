//! `ignore-patterns`: exact-match, except that paths matching any glob in
//! the `patterns` setting (comma-separated, e.g. `.nfs*,*.tmp,.DS_Store`)
//! are left out on both sides: their uploads are ignored and their manifest
//! lines are not expected. A pattern without `/` matches the file name; one
//! with `/` matches the path below the dataset directory.

use glob::Pattern;
use vault_policy_sdk::{Policy, Settings, Upload, UploadVerdict};

struct IgnorePatterns {
    names: Vec<Pattern>,
    paths: Vec<Pattern>,
}

impl IgnorePatterns {
    fn ignored(&self, entry: &str) -> bool {
        let below = entry.split_once('/').map_or("", |(_, rest)| rest);
        let name = entry.rsplit('/').next().unwrap_or(entry);
        self.names.iter().any(|p| p.matches(name)) || self.paths.iter().any(|p| p.matches(below))
    }
}

impl Policy for IgnorePatterns {
    fn init(settings: &Settings) -> Result<Self, String> {
        settings.allow_only(&["patterns"])?;
        let list = settings.list("patterns");
        if list.is_empty() {
            return Err("setting `patterns` is required, e.g. patterns = \".nfs*,*.tmp,.DS_Store\"".into());
        }
        let mut policy = IgnorePatterns { names: Vec::new(), paths: Vec::new() };
        for text in list {
            let pattern = Pattern::new(text).map_err(|e| format!("pattern {text:?}: {e}"))?;
            if text.contains('/') {
                policy.paths.push(pattern);
            } else {
                policy.names.push(pattern);
            }
        }
        Ok(policy)
    }

    fn expects(&self, entry: &str) -> bool {
        !self.ignored(entry)
    }

    fn on_upload(&self, upload: &Upload) -> UploadVerdict {
        if self.ignored(&upload.entry) { UploadVerdict::Ignore } else { UploadVerdict::Count }
    }
}

vault_policy_sdk::policy!(IgnorePatterns);
