//! Reconcile policies: what "this dataset is complete" means.
//!
//! The engine calls a policy at these points, each O(1) per call so a
//! million-file dataset never costs O(n) per notification:
//! - [`Policy::expects`]: once per manifest line, when the manifest is read;
//! - [`Policy::on_upload`]: count, ignore or reject each upload as it arrives;
//! - [`Policy::entry_matches`]: does an upload satisfy its manifest entry;
//! - [`Policy::decide`]: complete, wait or fail, given the dataset's counters.
//!
//! Each hook about a dataset gets the dataset's [`PolicyState`] slot: what
//! the policy keeps about it, stored with the dataset by the engine.
//!
//! The bundled policies are WebAssembly components (see `plugin`); the
//! native [`ExactMatch`] is the same rule compiled in, used as the
//! benchmark baseline. Both implement this trait, as does the per-set-id
//! router.

use std::sync::Arc;

use crate::notification::UploadKind;

pub use crate::config::policy_name::{NATIVE_EXACT_MATCH, is_plugin_path};
pub use crate::store::{POLICY_STATE_BYTES, PolicyState};

/// An upload as a policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct UploadView<'a> {
    pub set_id: &'a str,
    /// The key exactly as notified (directories end with `/`).
    pub object_key: &'a str,
    /// The key as a manifest line.
    pub entry: &'a str,
    pub size: u64,
    pub event_time: i64,
    pub kind: UploadKind,
}

/// A manifest line, with the size it should have where known.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedEntry<'a> {
    pub entry: &'a str,
    pub size: Option<u64>,
}

/// A dataset's counters, as the policy's final decision sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary<'a> {
    pub set_id: &'a str,
    pub manifest_entries: u64,
    pub received: u64,
    pub matched: u64,
    pub mismatched: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub ignored: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadVerdict {
    Count,
    Ignore,
    Reject(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Complete,
    /// Not yet; the reason is shown in `/status`.
    Wait(String),
    /// Give up now: the Timeout event is emitted at once, with this reason in
    /// `/status` and the logs.
    Fail(String),
}

/// A policy's hooks, as the WIT names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Expects,
    OnUpload,
    EntryMatches,
    Decide,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Expects => "expects",
            Hook::OnUpload => "on-upload",
            Hook::EntryMatches => "entry-matches",
            Hook::Decide => "decide",
        }
    }

    /// Whether a call may wait for a later batch once the policy's time in
    /// this one is used. Only the first hook of a unit of work waits: an
    /// upload's `entry-matches` follows its `on-upload` (or the judgment
    /// would start over forever), and `expects` runs while a manifest
    /// loads, which cannot resume part-way; the call deadline bounds those.
    pub fn may_defer(self) -> bool {
        matches!(self, Hook::OnUpload | Hook::Decide)
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a policy call gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyErrorKind {
    /// The call failed (trapped, timed out, ran out of memory, was refused,
    /// or the plugin is broken or quarantined).
    Failed,
    /// Not a fault: the policy used its time for this batch, and the call
    /// is made in a later one.
    Deferred,
}

/// A policy call that did not return a verdict. The engine fails closed: the
/// upload stays unjudged and the decision waits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy}: {hook} {}: {message}", match .kind { PolicyErrorKind::Deferred => "deferred", PolicyErrorKind::Failed => "failed" })]
pub struct PolicyError {
    pub policy: String,
    pub hook: Hook,
    pub kind: PolicyErrorKind,
    pub message: String,
}

impl PolicyError {
    pub fn failed(policy: String, hook: Hook, message: String) -> Self {
        PolicyError {
            policy,
            hook,
            kind: PolicyErrorKind::Failed,
            message,
        }
    }

    pub fn deferred(policy: String, hook: Hook, message: String) -> Self {
        PolicyError {
            policy,
            hook,
            kind: PolicyErrorKind::Deferred,
            message,
        }
    }

    pub fn is_deferred(&self) -> bool {
        self.kind == PolicyErrorKind::Deferred
    }
}

pub trait Policy: Send {
    fn name(&self) -> &str;
    /// Which policy decides `set_id`, for the log (a router names the
    /// routed one; a plugin its source and version).
    fn describe(&mut self, _set_id: &str) -> String {
        self.name().to_owned()
    }
    /// Whether the manifest entries of `set_id` should carry the sizes of
    /// the files on the share.
    fn wants_expected_sizes(&mut self, _set_id: &str) -> bool {
        false
    }
    /// Whether a manifest line takes part in the comparison.
    fn expects(
        &mut self,
        _set_id: &str,
        _entry: &str,
        _state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        Ok(true)
    }
    /// Called before each batch: the start of a new time budget, and the
    /// moment a replaced plugin takes effect (then true: what it left
    /// unjudged is worth judging again).
    fn begin_batch(&mut self) -> bool {
        false
    }
    /// Gives the policy a way to wake the engine (when a replaced plugin
    /// file is ready to take effect).
    fn set_waker(&mut self, _wake: Arc<dyn Fn() + Send + Sync>) {}
    fn on_upload(
        &mut self,
        upload: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<UploadVerdict, PolicyError>;
    fn entry_matches(
        &mut self,
        expected: &ExpectedEntry<'_>,
        upload: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError>;
    fn decide(
        &mut self,
        summary: &Summary<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<Decision, PolicyError>;
}

/// The reference's rule, with its directory fix: the set of notified entries
/// equals the set of manifest lines (names only; `dir/` equals `dir`).
#[derive(Debug, Default)]
pub struct ExactMatch;

impl Policy for ExactMatch {
    fn name(&self) -> &str {
        NATIVE_EXACT_MATCH
    }

    fn on_upload(
        &mut self,
        _: &UploadView<'_>,
        _: &mut Option<PolicyState>,
    ) -> Result<UploadVerdict, PolicyError> {
        Ok(UploadVerdict::Count)
    }

    fn entry_matches(
        &mut self,
        _: &ExpectedEntry<'_>,
        _: &UploadView<'_>,
        _: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        Ok(true)
    }

    fn decide(
        &mut self,
        s: &Summary<'_>,
        _: &mut Option<PolicyState>,
    ) -> Result<Decision, PolicyError> {
        Ok(exact_decision(s))
    }
}

/// The exact-match rule: the SDK's own source file, so the native policy
/// and every plugin's default decide alike.
#[path = "../../../plugins/sdk/src/exact_match.rs"]
mod exact_match;

/// Complete when every manifest entry matched and nothing else was counted.
pub fn exact_decision(s: &Summary<'_>) -> Decision {
    match exact_match::why_incomplete(
        s.manifest_entries,
        s.missing,
        s.mismatched,
        s.unexpected,
        s.rejected,
    ) {
        None => Decision::Complete,
        Some(why) => Decision::Wait(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary<'static> {
        Summary {
            set_id: "S",
            manifest_entries: 3,
            received: 3,
            matched: 3,
            mismatched: 0,
            missing: 0,
            unexpected: 0,
            ignored: 0,
            rejected: 0,
        }
    }

    #[test]
    fn exact_match_needs_equal_sets() {
        let mut p = ExactMatch;
        assert_eq!(p.decide(&summary(), &mut None).unwrap(), Decision::Complete);
        let missing = Summary {
            missing: 1,
            matched: 2,
            received: 2,
            ..summary()
        };
        assert_eq!(
            p.decide(&missing, &mut None).unwrap(),
            Decision::Wait("1 of 3 manifest entries not uploaded yet".into())
        );
        let extra = Summary {
            unexpected: 1,
            received: 4,
            ..summary()
        };
        assert_eq!(
            p.decide(&extra, &mut None).unwrap(),
            Decision::Wait("1 uploads are not in the manifest".into())
        );
    }
}
