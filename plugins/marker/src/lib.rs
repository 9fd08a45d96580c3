//! `marker`: exact-match, but a dataset is complete only once its marker
//! file (`_SUCCESS` at the dataset's top, by default) has been uploaded, as
//! Hadoop and Spark jobs write one when their output is whole. Junk that
//! desktops and NFS clients leave (`.DS_Store`, `Thumbs.db`, `._*`) is left
//! out on both sides, as is the marker itself.
//!
//! Settings: `marker` (the path below the dataset directory, default
//! `_SUCCESS`) and `ignore` (comma-separated file-name globs, default
//! `.DS_Store,Thumbs.db,._*`; empty to ignore nothing).
//!
//! The marker may arrive long before the last file, and the agent may
//! restart in between: its arrival is kept in the dataset's policy state,
//! which the agent stores durably, never in this instance's memory.

use glob::Pattern;
use vault_policy_sdk::{Decision, Policy, Settings, Summary, Upload, UploadVerdict, exact_decision, state};

/// What the state holds once the marker was uploaded.
const SEEN: &[u8] = b"marker uploaded";

struct Marker {
    marker: String,
    ignore: Vec<Pattern>,
}

impl Marker {
    fn is_marker(&self, entry: &str) -> bool {
        entry.split_once('/').is_some_and(|(_, below)| below == self.marker)
    }

    fn ignored(&self, entry: &str) -> bool {
        let name = entry.rsplit('/').next().unwrap_or(entry);
        self.ignore.iter().any(|p| p.matches(name))
    }
}

impl Policy for Marker {
    fn init(settings: &Settings) -> Result<Self, String> {
        settings.allow_only(&["marker", "ignore"])?;
        let marker = settings.get("marker").unwrap_or("_SUCCESS").trim_matches('/').to_owned();
        if marker.is_empty() {
            return Err("setting `marker` is empty; name the marker file, e.g. marker = \"_SUCCESS\"".into());
        }
        let ignore = match settings.get("ignore") {
            Some(_) => settings.list("ignore"),
            None => vec![".DS_Store", "Thumbs.db", "._*"],
        };
        let ignore = ignore
            .into_iter()
            .map(|p| Pattern::new(p).map_err(|e| format!("ignore pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Marker { marker, ignore })
    }

    fn expects(&self, entry: &str) -> bool {
        !self.is_marker(entry) && !self.ignored(entry)
    }

    fn on_upload(&self, upload: &Upload) -> UploadVerdict {
        if self.is_marker(&upload.entry) {
            // A failed write traps, so the upload stays unjudged and is
            // judged again: the marker is never silently forgotten.
            state::set(SEEN).expect("the marker's state fits");
            return UploadVerdict::Ignore;
        }
        if self.ignored(&upload.entry) { UploadVerdict::Ignore } else { UploadVerdict::Count }
    }

    fn decide(&self, summary: &Summary) -> Decision {
        if state::get().is_empty() {
            return Decision::Wait(format!("waiting for the marker {} to be uploaded", self.marker));
        }
        exact_decision(summary)
    }
}

vault_policy_sdk::policy!(Marker);
