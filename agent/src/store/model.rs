//! The records the store keeps. Plain data: the rules that change them live in
//! `reconcile`.

use std::ops::{AddAssign, SubAssign};

pub use crate::outbound::{ManifestRef, OutboxEvent};

/// A dataset's life: collecting uploads until its manifest is notified, then
/// reconciling until the policy says complete (or fail), or the deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetState {
    Collecting,
    Reconciling,
    Succeeded,
    TimedOut,
    Failed,
}

impl DatasetState {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetState::Collecting => "collecting",
            DatasetState::Reconciling => "reconciling",
            DatasetState::Succeeded => "succeeded",
            DatasetState::TimedOut => "timed-out",
            DatasetState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "collecting" => DatasetState::Collecting,
            "reconciling" => DatasetState::Reconciling,
            "succeeded" => DatasetState::Succeeded,
            "timed-out" => DatasetState::TimedOut,
            "failed" => DatasetState::Failed,
            _ => return None,
        })
    }

    /// A decided dataset has had its one event; nothing changes its state again.
    pub fn is_decided(self) -> bool {
        matches!(
            self,
            DatasetState::Succeeded | DatasetState::TimedOut | DatasetState::Failed
        )
    }
}

/// Counters kept incrementally so a decision never re-reads the dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct entries with a counted upload.
    pub received: u64,
    /// Counted uploads of manifest entries that the policy says match.
    pub matched: u64,
    /// Counted uploads of manifest entries that the policy says do not match.
    pub mismatched: u64,
    /// Uploads the policy chose to ignore.
    pub ignored: u64,
    /// Uploads the policy rejected.
    pub rejected: u64,
    /// Uploads whose policy call failed: they block success and are judged
    /// again at the next re-check.
    pub unjudged: u64,
    /// Files and directories the share watcher sees on this host.
    pub local_files: u64,
    pub local_bytes: u64,
    /// Local entries the cloud has not confirmed yet (no notification with
    /// the local size since the last local change).
    pub pending: u64,
    pub pending_bytes: u64,
    /// Manifest entries whose upload's bytes are proven: S3's checksum of
    /// the object equals the file's on the share (a directory counts by its
    /// upload).
    pub verified: u64,
    pub verified_bytes: u64,
    /// Manifest entries whose S3 checksum differs from the file's.
    pub content_mismatch: u64,
    /// Manifest entries whose object has no usable checksum.
    pub unverifiable: u64,
}

impl Counts {
    /// How many counters there are.
    pub const LEN: usize = 14;

    /// The counters' names, in the order of [`Counts::values`].
    pub const NAMES: [&'static str; Counts::LEN] = [
        "received",
        "matched",
        "mismatched",
        "ignored",
        "rejected",
        "unjudged",
        "localFiles",
        "localBytes",
        "pending",
        "pendingBytes",
        "verified",
        "verifiedBytes",
        "contentMismatch",
        "unverifiable",
    ];

    pub fn values(&self) -> [u64; Counts::LEN] {
        [
            self.received,
            self.matched,
            self.mismatched,
            self.ignored,
            self.rejected,
            self.unjudged,
            self.local_files,
            self.local_bytes,
            self.pending,
            self.pending_bytes,
            self.verified,
            self.verified_bytes,
            self.content_mismatch,
            self.unverifiable,
        ]
    }

    pub fn from_values(v: [u64; Counts::LEN]) -> Counts {
        Counts {
            received: v[0],
            matched: v[1],
            mismatched: v[2],
            ignored: v[3],
            rejected: v[4],
            unjudged: v[5],
            local_files: v[6],
            local_bytes: v[7],
            pending: v[8],
            pending_bytes: v[9],
            verified: v[10],
            verified_bytes: v[11],
            content_mismatch: v[12],
            unverifiable: v[13],
        }
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        let (a, b) = (self.values(), o.values());
        *self = Counts::from_values(std::array::from_fn(|i| a[i] + b[i]));
    }
}

/// Saturating: with a shared store a dataset and its entries are read as
/// separate items, so the dataset may not yet show an entry's contribution
/// (the store then applies exact deltas itself; see `store::dynamodb`).
impl SubAssign for Counts {
    fn sub_assign(&mut self, o: Counts) {
        let (a, b) = (self.values(), o.values());
        *self = Counts::from_values(std::array::from_fn(|i| a[i].saturating_sub(b[i])));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRecord {
    pub set_id: String,
    pub state: DatasetState,
    pub manifest: Option<ManifestRef>,
    pub manifest_loaded: bool,
    /// Distinct manifest lines, once loaded.
    pub manifest_entries: u64,
    pub counts: Counts,
    /// Agent clock (epoch ms) of the first and last notification received.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub manifest_seen_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub decided_ms: Option<i64>,
    /// Why the dataset is waiting or failed, or what went wrong last.
    pub note: Option<String>,
    /// Agent clock of the last local change the share watcher saw.
    pub last_local_ms: Option<i64>,
    /// What the dataset's policy keeps about it (plugin interface 0.2).
    pub policy_state: Option<PolicyState>,
    /// When an agent last claimed the listing of this dataset's S3 prefix
    /// (`[reconcile] verify`): one agent lists a dataset at a time.
    pub listing_ms: Option<i64>,
    /// Uploads recorded from S3 listings rather than notifications.
    pub listed_entries: u64,
}

/// Longest policy state a dataset keeps.
pub const POLICY_STATE_BYTES: usize = 4096;

/// A policy's durable memory of one dataset: written in the same
/// transaction as the call that changed it, so it survives restarts,
/// reloads and traps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy that wrote it (its configured name): another policy
    /// routed to the dataset later starts empty.
    pub policy: String,
    /// At most [`POLICY_STATE_BYTES`], never empty (an empty state is none).
    pub value: Vec<u8>,
}

impl PolicyState {
    /// The value as text, when it is UTF-8 (most policies keep text).
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    pub fn hex(&self) -> String {
        self.value.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `{"policy", "bytes", "text" (if UTF-8), "hex"}` in `/status` and
/// `plugin test --json`.
impl serde::Serialize for PolicyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("policy", &self.policy)?;
        map.serialize_entry("bytes", &self.value.len())?;
        if let Some(text) = self.text() {
            map.serialize_entry("text", text)?;
        }
        map.serialize_entry("hex", &self.hex())?;
        map.end()
    }
}

/// `marker: 3 bytes "yes"` (or the hex of a binary value).
impl std::fmt::Display for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} bytes ", self.policy, self.value.len())?;
        match self.text() {
            Some(text) => write!(f, "{text:?}"),
            None => write!(f, "0x{}", self.hex()),
        }
    }
}

impl DatasetRecord {
    pub fn new(set_id: &str, now_ms: i64) -> Self {
        DatasetRecord {
            set_id: set_id.to_owned(),
            state: DatasetState::Collecting,
            manifest: None,
            manifest_loaded: false,
            manifest_entries: 0,
            counts: Counts::default(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            manifest_seen_ms: None,
            deadline_ms: None,
            decided_ms: None,
            note: None,
            last_local_ms: None,
            policy_state: None,
            listing_ms: None,
            listed_entries: 0,
        }
    }

    /// Manifest entries with no counted upload yet (known once the manifest is loaded).
    pub fn missing(&self) -> Option<u64> {
        self.manifest_loaded.then(|| {
            self.manifest_entries
                .saturating_sub(self.counts.matched + self.counts.mismatched)
        })
    }

    /// Counted uploads that the manifest does not list.
    pub fn unexpected(&self) -> Option<u64> {
        self.manifest_loaded.then(|| {
            self.counts
                .received
                .saturating_sub(self.counts.matched + self.counts.mismatched)
        })
    }
}

/// What the policy made of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Count,
    Ignore,
    Reject,
    /// The policy call failed (fail closed, retried).
    Unjudged,
}

impl Verdict {
    pub fn code(self) -> i64 {
        match self {
            Verdict::Count => 0,
            Verdict::Ignore => 1,
            Verdict::Reject => 2,
            Verdict::Unjudged => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Verdict::Count,
            1 => Verdict::Ignore,
            2 => Verdict::Reject,
            3 => Verdict::Unjudged,
            _ => return None,
        })
    }
}

/// The latest upload notification of an entry (the reference's record fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The key exactly as notified (directories keep their `/`).
    pub object_key: String,
    pub bucket: String,
    pub size: u64,
    pub event_time: i64,
    pub verdict: Verdict,
    /// Whether the policy found it to match its manifest entry.
    pub matched: bool,
    /// The notification's `modification-time` (epoch seconds), if given.
    pub modified: Option<i64>,
    /// How the agent learnt of it.
    pub origin: UploadOrigin,
}

/// How the agent learnt of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadOrigin {
    /// The gateway's upload notification.
    #[default]
    Notified,
    /// An S3 listing found the object (then `event_time` is the object's
    /// LastModified and `size` its listed size). Any notification of the
    /// entry replaces it.
    Listed,
}

impl UploadOrigin {
    pub fn is_listed(self) -> bool {
        self == UploadOrigin::Listed
    }

    /// As stored: listed or not.
    pub fn from_listed(listed: bool) -> UploadOrigin {
        if listed {
            UploadOrigin::Listed
        } else {
            UploadOrigin::Notified
        }
    }
}

/// A file or directory as the share watcher last saw it on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    pub size: u64,
    /// Epoch seconds.
    pub mtime: i64,
    pub is_dir: bool,
    /// Agent clock (ms) of the scan or event that saw it.
    pub seen_ms: i64,
}

impl LocalFile {
    /// Whether `upload` confirms this local version: a notification with the
    /// same size whose modification time is not older than the local one
    /// (so a file rewritten after its notification is pending again).
    /// Directories are confirmed by any notification.
    pub fn confirmed_by(&self, upload: Option<&UploadRecord>) -> bool {
        upload.is_some_and(|u| {
            self.is_dir || (u.size == self.size && u.modified.unwrap_or(u.event_time) >= self.mtime)
        })
    }
}

/// One path of a dataset: notified, listed in the manifest, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// The key without trailing `/`, as a manifest line.
    pub key: String,
    pub set_id: String,
    pub upload: Option<UploadRecord>,
    /// `Some` when the manifest lists this entry; the inner value is the
    /// expected size where known.
    pub expected: Option<Option<u64>>,
    /// The local file, when the share watcher has seen it.
    pub local: Option<LocalFile>,
    /// The last check of an upload's bytes against the file on the share.
    pub content: Option<ContentCheck>,
}

/// What comparing S3's checksum of an upload with the file's found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentCheck {
    /// The upload (its event time) it checked: a newer upload of the entry
    /// is checked again, and until then this one says nothing of it.
    pub upload_time: i64,
    pub outcome: ContentOutcome,
    /// Both checksums, or why there was nothing to compare (at most
    /// [`CONTENT_DETAIL_BYTES`]).
    pub detail: String,
    /// Agent clock (ms) of the check, or of the claim to make it.
    pub at_ms: i64,
}

/// Longest [`ContentCheck::detail`] kept.
pub const CONTENT_DETAIL_BYTES: usize = 400;

impl ContentCheck {
    /// A check, its detail cut to [`CONTENT_DETAIL_BYTES`] (on a character).
    pub fn new(
        upload_time: i64,
        outcome: ContentOutcome,
        detail: &str,
        at_ms: i64,
    ) -> ContentCheck {
        let mut end = detail.len().min(CONTENT_DETAIL_BYTES);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        ContentCheck {
            upload_time,
            outcome,
            detail: detail[..end].to_owned(),
            at_ms,
        }
    }
}

/// A file's content outcome (without a check of its current upload it is
/// `pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentOutcome {
    /// S3's checksum of the object equals the file's on the share.
    Verified,
    /// They differ.
    Mismatch,
    /// The object has no usable checksum (uploaded before S3's default, a
    /// composite multipart checksum), or the file is not on the share to
    /// compare with. Never counts as verified.
    Unverifiable,
    /// Not checked yet: one agent claimed the check (at `at_ms`); others
    /// leave it to that agent until the claim is old.
    Checking,
}

impl ContentOutcome {
    pub fn code(self) -> i64 {
        match self {
            ContentOutcome::Verified => 0,
            ContentOutcome::Mismatch => 1,
            ContentOutcome::Unverifiable => 2,
            ContentOutcome::Checking => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<ContentOutcome> {
        Some(match code {
            0 => ContentOutcome::Verified,
            1 => ContentOutcome::Mismatch,
            2 => ContentOutcome::Unverifiable,
            3 => ContentOutcome::Checking,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContentOutcome::Verified => "verified",
            ContentOutcome::Mismatch => "mismatch",
            ContentOutcome::Unverifiable => "unverifiable",
            ContentOutcome::Checking => "checking",
        }
    }
}

impl EntryRecord {
    pub fn new(key: &str, set_id: &str) -> Self {
        EntryRecord {
            key: key.to_owned(),
            set_id: set_id.to_owned(),
            upload: None,
            expected: None,
            local: None,
            content: None,
        }
    }

    /// The check of the entry's current upload, if it was checked.
    pub fn content_of_upload(&self) -> Option<&ContentCheck> {
        let up = self.upload.as_ref()?;
        self.content
            .as_ref()
            .filter(|c| c.upload_time == up.event_time)
    }

    /// Whether the entry's upload is a directory (its key ends with `/`):
    /// it has no bytes, and counts by its presence.
    pub fn is_directory_upload(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|u| u.object_key.ends_with('/'))
    }

    /// What an entry (or its absence) adds to its dataset's counters. The
    /// store keeps these sums incrementally, so every backend must use this
    /// one definition.
    pub fn contribution(row: Option<&EntryRecord>) -> Counts {
        let mut c = Counts::default();
        let Some(row) = row else { return c };
        if let Some(local) = &row.local {
            let bytes = if local.is_dir { 0 } else { local.size };
            c.local_files = 1;
            c.local_bytes = bytes;
            if !local.confirmed_by(row.upload.as_ref()) {
                c.pending = 1;
                c.pending_bytes = bytes;
            }
        }
        let Some(up) = &row.upload else { return c };
        if row.expected.is_some() {
            if row.is_directory_upload() {
                c.verified = 1;
            } else {
                match row.content_of_upload().map(|check| check.outcome) {
                    Some(ContentOutcome::Verified) => {
                        c.verified = 1;
                        c.verified_bytes = up.size;
                    }
                    Some(ContentOutcome::Mismatch) => c.content_mismatch = 1,
                    Some(ContentOutcome::Unverifiable) => c.unverifiable = 1,
                    Some(ContentOutcome::Checking) | None => {}
                }
            }
        }
        match up.verdict {
            Verdict::Ignore => c.ignored = 1,
            Verdict::Reject => c.rejected = 1,
            Verdict::Unjudged => c.unjudged = 1,
            Verdict::Count => {
                c.received = 1;
                if row.expected.is_some() {
                    if up.matched {
                        c.matched = 1;
                    } else {
                        c.mismatched = 1;
                    }
                }
            }
        }
        c
    }
}

/// One dataset plus example paths explaining what it is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetDetail {
    pub record: DatasetRecord,
    pub missing: Vec<String>,
    pub mismatched: Vec<String>,
    pub unexpected: Vec<String>,
    pub pending: Vec<String>,
    /// Manifest entries whose upload's bytes differ from the file's.
    pub content_mismatch: Vec<String>,
    /// Manifest entries whose upload has no usable checksum.
    pub unverifiable: Vec<String>,
    /// When the example paths come from the first entries only (a remote
    /// store reads one page per request, however large the dataset): how
    /// many entries were looked at. None: every entry.
    pub examined: Option<u64>,
}

/// Which problem lists of a [`DatasetDetail`] an entry belongs to: the rule
/// behind `missing`, `mismatched`, `unexpected` and `pending`. (SQLite's
/// reader states the same rule in SQL, checked against this one in tests.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryProblems {
    pub missing: bool,
    pub mismatched: bool,
    pub unexpected: bool,
    pub pending: bool,
    pub content_mismatch: bool,
    pub unverifiable: bool,
}

impl EntryRecord {
    /// This entry's problems; the manifest ones only once it is loaded.
    pub fn problems(&self, manifest_loaded: bool) -> EntryProblems {
        let counted = self.upload.as_ref().filter(|u| u.verdict == Verdict::Count);
        let expected = self.expected.is_some();
        let content = self.content_of_upload().map(|c| c.outcome);
        EntryProblems {
            missing: manifest_loaded && expected && counted.is_none(),
            mismatched: manifest_loaded && expected && counted.is_some_and(|u| !u.matched),
            unexpected: manifest_loaded && !expected && counted.is_some(),
            pending: self
                .local
                .is_some_and(|l| !l.confirmed_by(self.upload.as_ref())),
            content_mismatch: expected && content == Some(ContentOutcome::Mismatch),
            unverifiable: expected && content == Some(ContentOutcome::Unverifiable),
        }
    }
}

impl DatasetDetail {
    /// The detail of `record` from its entries (in key order), keeping up to
    /// `limit` paths per list.
    pub fn from_entries(
        record: DatasetRecord,
        entries: impl IntoIterator<Item = EntryRecord>,
        limit: usize,
    ) -> DatasetDetail {
        let mut detail = DatasetDetail {
            record,
            missing: Vec::new(),
            mismatched: Vec::new(),
            unexpected: Vec::new(),
            pending: Vec::new(),
            content_mismatch: Vec::new(),
            unverifiable: Vec::new(),
            examined: None,
        };
        let loaded = detail.record.manifest_loaded;
        for e in entries {
            let p = e.problems(loaded);
            for (is, list) in [
                (p.missing, &mut detail.missing),
                (p.mismatched, &mut detail.mismatched),
                (p.unexpected, &mut detail.unexpected),
                (p.pending, &mut detail.pending),
                (p.content_mismatch, &mut detail.content_mismatch),
                (p.unverifiable, &mut detail.unverifiable),
            ] {
                if is && list.len() < limit {
                    list.push(e.key.clone());
                }
            }
        }
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_by_name_and_subtract_down_to_zero() {
        let mut c = Counts::from_values([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(c.values(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(Counts::NAMES.len(), c.values().len());
        c -= Counts::from_values([2, 1, 3, 0, 0, 0, 0, 0, 0, 11, 0, 12, 14, 1]);
        assert_eq!(c.values(), [0, 1, 0, 4, 5, 6, 7, 8, 9, 0, 11, 0, 0, 13]);
        c += Counts::from_values([1; Counts::LEN]);
        assert_eq!(c.values(), [1, 2, 1, 5, 6, 7, 8, 9, 10, 1, 12, 1, 1, 14]);
    }
}
