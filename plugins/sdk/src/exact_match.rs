//! The exact-match rule, one source for both sides: the SDK compiles it into
//! every policy (its default `decide`), and the agent compiles the same file
//! into its native exact-match (`#[path]` in `agent/src/reconcile/policy.rs`).
//! Plain Rust with no dependencies, so it builds for the host and for
//! wasm32-wasip2 alike.

/// Why a dataset is not complete under exact-match, or `None` when it is:
/// every manifest entry matched, and nothing else was counted or rejected.
pub fn why_incomplete(
    manifest_entries: u64,
    missing: u64,
    mismatched: u64,
    unexpected: u64,
    rejected: u64,
) -> Option<String> {
    let mut why = Vec::new();
    if missing > 0 {
        why.push(format!(
            "{missing} of {manifest_entries} manifest entries not uploaded yet"
        ));
    }
    if mismatched > 0 {
        why.push(format!(
            "{mismatched} uploads do not match their manifest entry"
        ));
    }
    if unexpected > 0 {
        why.push(format!("{unexpected} uploads are not in the manifest"));
    }
    if rejected > 0 {
        why.push(format!("{rejected} uploads were rejected"));
    }
    (!why.is_empty()).then(|| why.join("; "))
}
