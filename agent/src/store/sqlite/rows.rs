//! Records to rows and back: the only file that knows the columns' order.
//! Each table's columns are declared once, by name; the SQL elsewhere binds
//! them as named parameters (`:name`).

use super::*;

/// Declares a table's columns once: `$list` (the select list, in this
/// order), `$params` (the same names as `:name` parameters) and `$at`,
/// their positions in `$list`.
macro_rules! columns {
    ($at:ident, $list:ident, $params:ident: $first:ident $(, $rest:ident)* $(,)?) => {
        #[allow(non_snake_case, non_upper_case_globals, dead_code)]
        pub(super) mod $at {
            #[allow(non_camel_case_types)]
            enum Position {
                $first,
                $($rest,)*
            }
            pub const $first: usize = Position::$first as usize;
            $(pub const $rest: usize = Position::$rest as usize;)*
        }
        pub(super) const $list: &str = concat!(stringify!($first) $(, ", ", stringify!($rest))*);
        #[allow(dead_code)]
        pub(super) const $params: &str =
            concat!(":", stringify!($first) $(, ", :", stringify!($rest))*);
    };
}

columns!(D, DATASET_COLUMNS, DATASET_PARAMS:
    set_id, state, manifest_key, manifest_bucket, manifest_size, manifest_event_time,
    manifest_loaded, manifest_entries, received, matched, mismatched, ignored, rejected,
    first_seen_ms, last_seen_ms, manifest_seen_ms, deadline_ms, decided_ms, note, unjudged,
    local_files, local_bytes, pending, pending_bytes, last_local_ms, policy_name, policy_state,
    listing_ms, listed_entries, verified, verified_bytes, content_mismatch, unverifiable);

// Rows do not store the set-id: the key's top directory determines it.
columns!(E, ENTRY_COLUMNS, ENTRY_PARAMS:
    key, object_key, bucket, size, event_time, verdict, matched, in_manifest, expected_size,
    modified, local_size, local_mtime, local_dir, local_seen, listed, content);

columns!(O, OUTBOX_COLUMNS, OUTBOX_PARAMS:
    seq, id, set_id, detail_type, payload, created_ms);

/// An outbox event from a row selecting `OUTBOX_COLUMNS`.
pub(super) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        seq: r.get(O::seq)?,
        id: r.get(O::id)?,
        set_id: r.get(O::set_id)?,
        detail_type: r.get(O::detail_type)?,
        payload: r.get(O::payload)?,
        created_ms: r.get(O::created_ms)?,
    })
}

/// Runs `f` with a dataset's values in `DATASET_COLUMNS` order: the
/// statements name their parameters (`DATASET_PARAMS`), which SQLite
/// numbers in that same order, so they are bound by position (binding by
/// name looks each name up, at every execution: 15% of the ingest rate).
/// The tests check each statement's parameter names against the columns.
pub(super) fn with_dataset_params<T>(d: &DatasetRecord, f: impl FnOnce(&[&dyn ToSql]) -> T) -> T {
    let m = d.manifest.as_ref();
    let c = &d.counts;
    let p = d.policy_state.as_ref();
    f(&[
        &d.set_id,                    // :set_id
        &d.state.as_str(),            // :state
        &m.map(|m| &m.key),           // :manifest_key
        &m.map(|m| &m.bucket),        // :manifest_bucket
        &m.map(|m| m.size as i64),    // :manifest_size
        &m.map(|m| m.event_time),     // :manifest_event_time
        &d.manifest_loaded,           // :manifest_loaded
        &(d.manifest_entries as i64), // :manifest_entries
        &(c.received as i64),         // :received
        &(c.matched as i64),          // :matched
        &(c.mismatched as i64),       // :mismatched
        &(c.ignored as i64),          // :ignored
        &(c.rejected as i64),         // :rejected
        &d.first_seen_ms,             // :first_seen_ms
        &d.last_seen_ms,              // :last_seen_ms
        &d.manifest_seen_ms,          // :manifest_seen_ms
        &d.deadline_ms,               // :deadline_ms
        &d.decided_ms,                // :decided_ms
        &d.note,                      // :note
        &(c.unjudged as i64),         // :unjudged
        &(c.local_files as i64),      // :local_files
        &(c.local_bytes as i64),      // :local_bytes
        &(c.pending as i64),          // :pending
        &(c.pending_bytes as i64),    // :pending_bytes
        &d.last_local_ms,             // :last_local_ms
        &p.map(|p| &p.policy),        // :policy_name
        &p.map(|p| &p.value),         // :policy_state
        &d.listing_ms,                // :listing_ms
        &(d.listed_entries as i64),   // :listed_entries
        &(c.verified as i64),         // :verified
        &(c.verified_bytes as i64),   // :verified_bytes
        &(c.content_mismatch as i64), // :content_mismatch
        &(c.unverifiable as i64),     // :unverifiable
    ])
}

/// Runs `f` with an entry's values in `ENTRY_COLUMNS` order (bound by
/// position, as [`with_dataset_params`]).
pub(super) fn with_entry_params<T>(e: &EntryRecord, f: impl FnOnce(&[&dyn ToSql]) -> T) -> T {
    let u = e.upload.as_ref();
    let l = e.local;
    // The notified key is stored only where it differs from the entry
    // (directory keys with their '/'): most rows get shorter.
    let object_key = u.map(|u| u.object_key.as_str()).filter(|k| *k != e.key);
    f(&[
        &e.key,                                   // :key
        &object_key,                              // :object_key
        &u.map(|u| &u.bucket),                    // :bucket
        &u.map(|u| u.size as i64),                // :size
        &u.map(|u| u.event_time),                 // :event_time
        &u.map(|u| u.verdict.code()),             // :verdict
        &u.is_some_and(|u| u.matched),            // :matched
        &e.expected.is_some(),                    // :in_manifest
        &e.expected.flatten().map(|s| s as i64),  // :expected_size
        &u.and_then(|u| u.modified),              // :modified
        &l.map(|l| l.size as i64),                // :local_size
        &l.map(|l| l.mtime),                      // :local_mtime
        &l.map(|l| l.is_dir),                     // :local_dir
        &l.map(|l| l.seen_ms),                    // :local_seen
        &u.is_some_and(|u| u.origin.is_listed()), // :listed
        &e.content.as_ref().map(encode_content),  // :content
    ])
}

pub(super) fn query_datasets(
    conn: &Connection,
    sql: &str,
    path: &Path,
) -> StoreResult<Vec<DatasetRecord>> {
    let mut stmt = conn.prepare(sql).map_err(sqlite_error(path))?;
    let rows = stmt
        .query_map([], |r| Ok(dataset_from_row(r)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sqlite_error(path))?;
    rows.into_iter().collect()
}

/// A dataset from a row selecting `DATASET_COLUMNS`.
pub(super) fn dataset_from_row(r: &Row<'_>) -> StoreResult<DatasetRecord> {
    let count = |at: usize| r.get::<_, i64>(at).map(|n| n as u64);
    let read = || -> rusqlite::Result<(DatasetRecord, String)> {
        let manifest = match r.get::<_, Option<String>>(D::manifest_key)? {
            Some(key) => Some(ManifestRef {
                key,
                bucket: r.get(D::manifest_bucket)?,
                size: count(D::manifest_size)?,
                event_time: r.get(D::manifest_event_time)?,
            }),
            None => None,
        };
        let policy_state = match (
            r.get::<_, Option<String>>(D::policy_name)?,
            r.get::<_, Option<Vec<u8>>>(D::policy_state)?,
        ) {
            (Some(policy), Some(value)) if !value.is_empty() => Some(PolicyState { policy, value }),
            _ => None,
        };
        let record = DatasetRecord {
            set_id: r.get(D::set_id)?,
            state: DatasetState::Collecting,
            manifest,
            manifest_loaded: r.get(D::manifest_loaded)?,
            manifest_entries: count(D::manifest_entries)?,
            counts: Counts {
                received: count(D::received)?,
                matched: count(D::matched)?,
                mismatched: count(D::mismatched)?,
                ignored: count(D::ignored)?,
                rejected: count(D::rejected)?,
                unjudged: count(D::unjudged)?,
                local_files: count(D::local_files)?,
                local_bytes: count(D::local_bytes)?,
                pending: count(D::pending)?,
                pending_bytes: count(D::pending_bytes)?,
                verified: count(D::verified)?,
                verified_bytes: count(D::verified_bytes)?,
                content_mismatch: count(D::content_mismatch)?,
                unverifiable: count(D::unverifiable)?,
            },
            first_seen_ms: r.get(D::first_seen_ms)?,
            last_seen_ms: r.get(D::last_seen_ms)?,
            manifest_seen_ms: r.get(D::manifest_seen_ms)?,
            deadline_ms: r.get(D::deadline_ms)?,
            decided_ms: r.get(D::decided_ms)?,
            note: r.get(D::note)?,
            last_local_ms: r.get(D::last_local_ms)?,
            policy_state,
            listing_ms: r.get(D::listing_ms)?,
            listed_entries: count(D::listed_entries)?,
        };
        Ok((record, r.get(D::state)?))
    };
    let (mut record, state) = read().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(p) = &record.policy_state
        && p.value.len() > POLICY_STATE_BYTES
    {
        return Err(StoreError::Corrupt(format!(
            "dataset {}: a policy state of {} bytes (at most {POLICY_STATE_BYTES})",
            record.set_id,
            p.value.len()
        )));
    }
    record.state = DatasetState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("dataset state {state:?}")))?;
    Ok(record)
}

/// An entry of `set_id` from a row selecting `ENTRY_COLUMNS`.
pub(super) fn entry_from_row(r: &Row<'_>, set_id: &str) -> StoreResult<EntryRecord> {
    let read = || -> rusqlite::Result<(EntryRecord, Option<i64>, Option<String>)> {
        let key: String = r.get(E::key)?;
        let upload = match r.get::<_, Option<i64>>(E::size)? {
            Some(size) => Some(UploadRecord {
                object_key: r
                    .get::<_, Option<String>>(E::object_key)?
                    .unwrap_or_else(|| key.clone()),
                bucket: r.get(E::bucket)?,
                size: size as u64,
                event_time: r.get(E::event_time)?,
                verdict: Verdict::Count,
                matched: r.get(E::matched)?,
                modified: r.get(E::modified)?,
                origin: UploadOrigin::from_listed(r.get(E::listed)?),
            }),
            None => None,
        };
        let local = match r.get::<_, Option<i64>>(E::local_size)? {
            Some(size) => Some(LocalFile {
                size: size as u64,
                mtime: r.get::<_, Option<i64>>(E::local_mtime)?.unwrap_or(0),
                is_dir: r.get::<_, Option<bool>>(E::local_dir)?.unwrap_or(false),
                seen_ms: r.get::<_, Option<i64>>(E::local_seen)?.unwrap_or(0),
            }),
            None => None,
        };
        let content: Option<String> = r.get(E::content)?;
        let in_manifest: bool = r.get(E::in_manifest)?;
        let expected_size: Option<i64> = r.get(E::expected_size)?;
        let entry = EntryRecord {
            key,
            set_id: set_id.to_owned(),
            upload,
            expected: in_manifest.then_some(expected_size.map(|s| s as u64)),
            local,
            content: None,
        };
        Ok((entry, r.get(E::verdict)?, content))
    };
    let (mut entry, verdict, content) = read().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(text) = content {
        let check = decode_content(&text)
            .ok_or_else(|| StoreError::Corrupt(format!("content check {text:?}")))?;
        entry.content = Some(check);
    }
    if let (Some(upload), Some(code)) = (entry.upload.as_mut(), verdict) {
        upload.verdict = Verdict::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("verdict {code}")))?;
    }
    Ok(entry)
}

/// A content check in one column (`outcome upload_time at_ms detail`): one
/// column costs an entry write less than four.
fn encode_content(c: &ContentCheck) -> String {
    format!(
        "{} {} {} {}",
        c.outcome.code(),
        c.upload_time,
        c.at_ms,
        c.detail
    )
}

fn decode_content(text: &str) -> Option<ContentCheck> {
    let mut parts = text.splitn(4, ' ');
    let outcome = ContentOutcome::from_code(parts.next()?.parse().ok()?)?;
    let upload_time = parts.next()?.parse().ok()?;
    let at_ms = parts.next()?.parse().ok()?;
    let detail = parts.next().unwrap_or_default();
    Some(ContentCheck::new(upload_time, outcome, detail, at_ms))
}
