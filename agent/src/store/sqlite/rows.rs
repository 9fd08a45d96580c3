//! Rows to records: the only place that reads the columns back.

use super::*;

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

pub(super) fn dataset_from_row(r: &Row<'_>) -> StoreResult<DatasetRecord> {
    let read = || -> rusqlite::Result<(DatasetRecord, String)> {
        let state: String = r.get(1)?;
        let manifest = match r.get::<_, Option<String>>(2)? {
            Some(key) => Some(ManifestRef {
                key,
                bucket: r.get(3)?,
                size: r.get::<_, i64>(4)? as u64,
                event_time: r.get(5)?,
            }),
            None => None,
        };
        let record = DatasetRecord {
            set_id: r.get(0)?,
            state: DatasetState::Collecting,
            manifest,
            manifest_loaded: r.get(6)?,
            manifest_entries: r.get::<_, i64>(7)? as u64,
            counts: Counts {
                received: r.get::<_, i64>(8)? as u64,
                matched: r.get::<_, i64>(9)? as u64,
                mismatched: r.get::<_, i64>(10)? as u64,
                ignored: r.get::<_, i64>(11)? as u64,
                rejected: r.get::<_, i64>(12)? as u64,
                unjudged: r.get::<_, i64>(19)? as u64,
                local_files: r.get::<_, i64>(20)? as u64,
                local_bytes: r.get::<_, i64>(21)? as u64,
                pending: r.get::<_, i64>(22)? as u64,
                pending_bytes: r.get::<_, i64>(23)? as u64,
            },
            first_seen_ms: r.get(13)?,
            last_seen_ms: r.get(14)?,
            manifest_seen_ms: r.get(15)?,
            deadline_ms: r.get(16)?,
            decided_ms: r.get(17)?,
            note: r.get(18)?,
            last_local_ms: r.get(24)?,
            policy_state: match (
                r.get::<_, Option<String>>(25)?,
                r.get::<_, Option<Vec<u8>>>(26)?,
            ) {
                (Some(policy), Some(value)) if !value.is_empty() => {
                    Some(PolicyState { policy, value })
                }
                _ => None,
            },
            listing_ms: r.get(27)?,
            listed_entries: r.get::<_, i64>(28)? as u64,
        };
        Ok((record, state))
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

pub(super) fn entry_from_row(r: &Row<'_>) -> StoreResult<EntryRecord> {
    let read = || -> rusqlite::Result<(EntryRecord, Option<i64>)> {
        let verdict: Option<i64> = r.get(6)?;
        let key: String = r.get(0)?;
        let upload = match r.get::<_, Option<i64>>(4)? {
            Some(size) => Some(UploadRecord {
                object_key: r
                    .get::<_, Option<String>>(2)?
                    .unwrap_or_else(|| key.clone()),
                bucket: r.get(3)?,
                size: size as u64,
                event_time: r.get(5)?,
                verdict: Verdict::Count,
                matched: r.get(7)?,
                modified: r.get(10)?,
                origin: UploadOrigin::from_listed(r.get(15)?),
            }),
            None => None,
        };
        let local = match r.get::<_, Option<i64>>(11)? {
            Some(size) => Some(LocalFile {
                size: size as u64,
                mtime: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
                is_dir: r.get::<_, Option<bool>>(13)?.unwrap_or(false),
                seen_ms: r.get::<_, Option<i64>>(14)?.unwrap_or(0),
            }),
            None => None,
        };
        let in_manifest: bool = r.get(8)?;
        let expected_size: Option<i64> = r.get(9)?;
        let entry = EntryRecord {
            key,
            set_id: r.get(1)?,
            upload,
            expected: in_manifest.then_some(expected_size.map(|s| s as u64)),
            local,
        };
        Ok((entry, verdict))
    };
    let (mut entry, verdict) = read().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let (Some(upload), Some(code)) = (entry.upload.as_mut(), verdict) {
        upload.verdict = Verdict::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("verdict {code}")))?;
    }
    Ok(entry)
}
