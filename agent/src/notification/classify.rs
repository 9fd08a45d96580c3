//! Which dataset an object key belongs to, and whether it is the manifest.
//!
//! A dataset is a top-level directory `<SET-ID><job_dir_suffix>`; the set-id is
//! the directory name minus the suffix (set-ids may contain `-`). Directory
//! keys end with `/` in S3 but not in the manifest, so entries are compared
//! with trailing slashes removed.

/// Whether an upload is the dataset's manifest or anything else in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadKind {
    Data,
    Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    Dataset {
        set_id: String,
        /// The key as a manifest line: no trailing `/`.
        entry: String,
        kind: UploadKind,
    },
    /// Not below a `*<job_dir_suffix>` directory: counted and ignored.
    Outside,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    job_dir_suffix: String,
    manifest_suffix: String,
}

impl Classifier {
    pub fn new(job_dir_suffix: impl Into<String>, manifest_suffix: impl Into<String>) -> Self {
        Classifier {
            job_dir_suffix: job_dir_suffix.into(),
            manifest_suffix: manifest_suffix.into(),
        }
    }

    pub fn job_dir_suffix(&self) -> &str {
        &self.job_dir_suffix
    }

    pub fn manifest_suffix(&self) -> &str {
        &self.manifest_suffix
    }

    /// The dataset directory name of a set-id.
    pub fn dataset_dir(&self, set_id: &str) -> String {
        format!("{set_id}{}", self.job_dir_suffix)
    }

    /// The manifest's key (and manifest line) of a set-id.
    pub fn manifest_key(&self, set_id: &str) -> String {
        format!(
            "{set_id}{}/{set_id}{}",
            self.job_dir_suffix, self.manifest_suffix
        )
    }

    pub fn classify(&self, key: &str) -> Classification {
        let entry = key.trim_end_matches('/');
        let (top, rest) = entry.split_once('/').unwrap_or((entry, ""));
        let Some(set_id) = top.strip_suffix(self.job_dir_suffix.as_str()) else {
            return Classification::Outside;
        };
        if set_id.is_empty() {
            return Classification::Outside;
        }
        let is_manifest = key == entry
            && rest.len() == set_id.len() + self.manifest_suffix.len()
            && rest.starts_with(set_id)
            && rest.ends_with(self.manifest_suffix.as_str());
        Classification::Dataset {
            set_id: set_id.to_owned(),
            entry: entry.to_owned(),
            kind: if is_manifest {
                UploadKind::Manifest
            } else {
                UploadKind::Data
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Classifier {
        Classifier::new("-vaultjob", ".manifest")
    }

    fn dataset(set_id: &str, entry: &str, kind: UploadKind) -> Classification {
        Classification::Dataset {
            set_id: set_id.into(),
            entry: entry.into(),
            kind,
        }
    }

    #[test]
    fn data_files_at_any_depth() {
        let c = reference();
        assert_eq!(
            c.classify("K9x2-vaultjob/a/b/c.bin"),
            dataset("K9x2", "K9x2-vaultjob/a/b/c.bin", UploadKind::Data)
        );
    }

    #[test]
    fn directory_keys_lose_their_slash() {
        let c = reference();
        assert_eq!(
            c.classify("S-vaultjob/"),
            dataset("S", "S-vaultjob", UploadKind::Data)
        );
        assert_eq!(
            c.classify("S-vaultjob/d/"),
            dataset("S", "S-vaultjob/d", UploadKind::Data)
        );
    }

    #[test]
    fn manifest_only_at_the_dataset_root() {
        let c = reference();
        assert_eq!(
            c.classify("S-vaultjob/S.manifest"),
            dataset("S", "S-vaultjob/S.manifest", UploadKind::Manifest)
        );
        assert_eq!(
            c.classify("S-vaultjob/d/S.manifest"),
            dataset("S", "S-vaultjob/d/S.manifest", UploadKind::Data)
        );
        assert_eq!(
            c.classify("S-vaultjob/T.manifest"),
            dataset("S", "S-vaultjob/T.manifest", UploadKind::Data)
        );
        // A directory that happens to carry the manifest's name is not the manifest.
        assert_eq!(
            c.classify("S-vaultjob/S.manifest/"),
            dataset("S", "S-vaultjob/S.manifest", UploadKind::Data)
        );
    }

    #[test]
    fn set_ids_may_contain_dashes() {
        let c = reference();
        assert_eq!(
            c.classify("genome-2024-vaultjob/genome-2024.manifest"),
            dataset(
                "genome-2024",
                "genome-2024-vaultjob/genome-2024.manifest",
                UploadKind::Manifest
            )
        );
    }

    #[test]
    fn everything_else_is_outside() {
        let c = reference();
        for key in [
            "readme.txt",
            "scratch/a",
            "-vaultjob/x",
            "x-vaultjobs/y",
            "",
            "/",
            "a/S-vaultjob/f",
        ] {
            assert_eq!(c.classify(key), Classification::Outside, "{key:?}");
        }
    }

    #[test]
    fn custom_suffixes() {
        let c = Classifier::new(".set", ".lst");
        assert_eq!(
            c.classify("x.set/x.lst"),
            dataset("x", "x.set/x.lst", UploadKind::Manifest)
        );
        assert_eq!(c.manifest_key("x"), "x.set/x.lst");
    }
}
