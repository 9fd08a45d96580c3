//! How records map to DynamoDB items.
//!
//! The table has the reference's key schema: partition `setId`, sort
//! `objectKey`. A notified key is one item with the reference's attributes
//! (`bucketName`, `objectSize`, `eventTime`) plus ours. A dataset's own state
//! sits in its partition under [`DATASET_SK`], which ends with `/`: entry keys
//! never do (a directory's `/` is trimmed), so the two cannot collide. The
//! agents' shared bookkeeping lives in partitions whose names contain `/`,
//! which no set-id can (a set-id is one path component).

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::store::{
    ContentCheck, ContentOutcome, Counts, DatasetRecord, DatasetState, EntryRecord, LocalFile,
    ManifestRef, OutboxEvent, POLICY_STATE_BYTES, PolicyState, StoreError, StoreResult,
    UploadOrigin, UploadRecord, Verdict,
};

pub type Item = HashMap<String, AttributeValue>;

pub const PK: &str = "setId";
pub const SK: &str = "objectKey";
/// A dataset's policy state: the policy that wrote it, and the value.
pub const POLICY_NAME: &str = "policyName";
pub const POLICY_STATE: &str = "policyState";
/// When an agent claimed the listing of the dataset's S3 prefix.
pub const LISTING_MS: &str = "listingMs";

/// The sort key of a dataset's state item.
pub const DATASET_SK: &str = "#dataset/";
/// One item per dataset not yet decided (sort key: the set-id).
pub const OPEN_PARTITION: &str = "#vault-agent/open";
/// Events waiting for delivery (sort key: the event id).
pub const OUTBOX_PARTITION: &str = "#vault-agent/outbox";
/// Which agent delivers to a sink right now (sort key: the sink name).
pub const LEASE_PARTITION: &str = "#vault-agent/lease";

/// An entry item's version: every write checks and bumps it, so two agents
/// changing one entry at once cannot both succeed.
pub const VERSION: &str = "ver";
/// A dataset item's revision: every write to the item adds one, so a
/// decision can be claimed on the condition that the dataset is still the
/// one it was taken on (see `tx.rs`).
pub const REVISION: &str = "rev";
/// The event time of the manifest notification the dataset follows: a
/// change to its manifest fields is conditioned on it.
pub const MANIFEST_EVENT_TIME: &str = "manifestEventTime";

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn key(partition: &str, sort: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(partition)), (SK.to_owned(), s(sort))])
}

pub fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

pub fn get_n<T: FromStr>(item: &Item, name: &str) -> StoreResult<Option<T>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| {
            StoreError::Corrupt(format!("attribute {name} = {v:?} is not a valid number"))
        }),
        Some(other) => Err(StoreError::Corrupt(format!(
            "attribute {name} should be a number, found {other:?}"
        ))),
    }
}

pub fn get_bool(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

fn required<T>(value: Option<T>, item: &Item, name: &str) -> StoreResult<T> {
    value.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "item {:?}/{:?} has no attribute {name}",
            get_s(item, PK).unwrap_or("?"),
            get_s(item, SK).unwrap_or("?")
        ))
    })
}

/// The whole item of an entry at version `ver`.
pub fn entry_item(e: &EntryRecord, ver: i64) -> Item {
    let mut item = key(&e.set_id, &e.key);
    item.insert(VERSION.into(), n(ver));
    if let Some(u) = &e.upload {
        item.insert("uploadKey".into(), s(&u.object_key));
        item.insert("bucketName".into(), s(&u.bucket));
        item.insert("objectSize".into(), n(u.size));
        item.insert("eventTime".into(), n(u.event_time));
        item.insert("verdict".into(), n(u.verdict.code()));
        item.insert("matched".into(), AttributeValue::Bool(u.matched));
        if let Some(m) = u.modified {
            item.insert("modifiedTime".into(), n(m));
        }
        if u.origin.is_listed() {
            item.insert("listed".into(), AttributeValue::Bool(true));
        }
    }
    if let Some(expected) = e.expected {
        item.insert("inManifest".into(), AttributeValue::Bool(true));
        if let Some(size) = expected {
            item.insert("expectedSize".into(), n(size));
        }
    }
    if let Some(l) = &e.local {
        item.insert("localSize".into(), n(l.size));
        item.insert("localMtime".into(), n(l.mtime));
        item.insert("localDir".into(), AttributeValue::Bool(l.is_dir));
        item.insert("localSeenMs".into(), n(l.seen_ms));
    }
    if let Some(c) = &e.content {
        item.insert("contentOutcome".into(), n(c.outcome.code()));
        item.insert("contentTime".into(), n(c.upload_time));
        item.insert("contentDetail".into(), s(&c.detail));
        item.insert("contentMs".into(), n(c.at_ms));
    }
    item
}

/// An entry and its version.
pub fn entry_from_item(item: &Item) -> StoreResult<(EntryRecord, i64)> {
    let set_id = required(get_s(item, PK), item, PK)?;
    let key = required(get_s(item, SK), item, SK)?;
    let mut e = EntryRecord::new(key, set_id);
    if let Some(size) = get_n::<u64>(item, "objectSize")? {
        let code = required(get_n::<i64>(item, "verdict")?, item, "verdict")?;
        e.upload = Some(UploadRecord {
            object_key: get_s(item, "uploadKey").unwrap_or(key).to_owned(),
            bucket: get_s(item, "bucketName").unwrap_or_default().to_owned(),
            size,
            event_time: required(get_n(item, "eventTime")?, item, "eventTime")?,
            verdict: Verdict::from_code(code)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown verdict code {code}")))?,
            matched: get_bool(item, "matched"),
            modified: get_n(item, "modifiedTime")?,
            origin: UploadOrigin::from_listed(get_bool(item, "listed")),
        });
    }
    if get_bool(item, "inManifest") {
        e.expected = Some(get_n(item, "expectedSize")?);
    }
    if let Some(size) = get_n::<u64>(item, "localSize")? {
        e.local = Some(LocalFile {
            size,
            mtime: get_n(item, "localMtime")?.unwrap_or(0),
            is_dir: get_bool(item, "localDir"),
            seen_ms: get_n(item, "localSeenMs")?.unwrap_or(0),
        });
    }
    if let Some(code) = get_n::<i64>(item, "contentOutcome")? {
        let outcome = ContentOutcome::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown content outcome {code}")))?;
        let upload_time = required(get_n(item, "contentTime")?, item, "contentTime")?;
        let detail = get_s(item, "contentDetail").unwrap_or_default();
        let at_ms = get_n(item, "contentMs")?.unwrap_or(0);
        e.content = Some(ContentCheck::new(upload_time, outcome, detail, at_ms));
    }
    Ok((e, get_n(item, VERSION)?.unwrap_or(0)))
}

/// A dataset item's revision (0 before its first counted write).
pub fn revision(item: &Item) -> StoreResult<i64> {
    Ok(get_n(item, REVISION)?.unwrap_or(0))
}

pub fn dataset_from_item(item: &Item) -> StoreResult<DatasetRecord> {
    let set_id = required(get_s(item, PK), item, PK)?;
    let mut values = [0u64; Counts::LEN];
    for (v, name) in values.iter_mut().zip(Counts::NAMES) {
        // Counters only ever move by the difference of an entry's
        // contribution; a negative sum would be a bug, shown as 0.
        *v = get_n::<i64>(item, name)?.unwrap_or(0).max(0) as u64;
    }
    let manifest = match get_s(item, "manifestKey") {
        Some(k) => Some(ManifestRef {
            key: k.to_owned(),
            bucket: get_s(item, "manifestBucket").unwrap_or_default().to_owned(),
            size: get_n(item, "manifestSize")?.unwrap_or(0),
            event_time: get_n(item, MANIFEST_EVENT_TIME)?.unwrap_or(0),
        }),
        None => None,
    };
    let manifest_seen_ms = get_n(item, "manifestSeenMs")?;
    let state = match get_s(item, "outcome") {
        Some(text) => DatasetState::parse(text)
            .filter(|s| s.is_decided())
            .ok_or_else(|| StoreError::Corrupt(format!("unknown dataset outcome {text:?}")))?,
        None if manifest_seen_ms.is_some() => DatasetState::Reconciling,
        None => DatasetState::Collecting,
    };
    Ok(DatasetRecord {
        set_id: set_id.to_owned(),
        state,
        manifest,
        manifest_loaded: get_bool(item, "manifestLoaded"),
        manifest_entries: get_n(item, "manifestEntries")?.unwrap_or(0),
        counts: Counts::from_values(values),
        first_seen_ms: get_n(item, "firstSeenMs")?.unwrap_or(0),
        last_seen_ms: get_n(item, "lastSeenMs")?.unwrap_or(0),
        manifest_seen_ms,
        deadline_ms: get_n(item, "deadlineMs")?,
        decided_ms: get_n(item, "decidedMs")?,
        note: get_s(item, "note").map(str::to_owned),
        last_local_ms: get_n(item, "lastLocalMs")?,
        policy_state: policy_state_from_item(item, set_id)?,
        listing_ms: get_n(item, LISTING_MS)?,
        listed_entries: get_n(item, "listedEntries")?.unwrap_or(0),
    })
}

fn policy_state_from_item(item: &Item, set_id: &str) -> StoreResult<Option<PolicyState>> {
    let value = match item.get(POLICY_STATE) {
        Some(AttributeValue::B(blob)) => blob.as_ref(),
        Some(_) => {
            return Err(StoreError::Corrupt(format!(
                "dataset {set_id}: {POLICY_STATE} is not binary"
            )));
        }
        None => return Ok(None),
    };
    if value.len() > POLICY_STATE_BYTES {
        return Err(StoreError::Corrupt(format!(
            "dataset {set_id}: a policy state of {} bytes (at most {POLICY_STATE_BYTES})",
            value.len()
        )));
    }
    let policy = required(get_s(item, POLICY_NAME), item, POLICY_NAME)?;
    Ok((!value.is_empty()).then(|| PolicyState {
        policy: policy.to_owned(),
        value: value.to_vec(),
    }))
}

pub fn outbox_item(ev: &OutboxEvent, sinks: &[String]) -> Item {
    let mut item = key(OUTBOX_PARTITION, &ev.id);
    item.insert("eventSetId".into(), s(&ev.set_id));
    item.insert("detailType".into(), s(&ev.detail_type));
    item.insert("payload".into(), s(&ev.payload));
    item.insert("createdMs".into(), n(ev.created_ms));
    item.insert("pending".into(), AttributeValue::Ss(sinks.to_vec()));
    item
}

pub fn outbox_from_item(item: &Item) -> StoreResult<OutboxEvent> {
    Ok(OutboxEvent {
        seq: 0,
        id: required(get_s(item, SK), item, SK)?.to_owned(),
        set_id: get_s(item, "eventSetId").unwrap_or_default().to_owned(),
        detail_type: required(get_s(item, "detailType"), item, "detailType")?.to_owned(),
        payload: required(get_s(item, "payload"), item, "payload")?.to_owned(),
        created_ms: get_n(item, "createdMs")?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_datasets_round_trip() {
        let mut e = EntryRecord::new("S-vaultjob/dir", "S");
        e.upload = Some(UploadRecord {
            object_key: "S-vaultjob/dir/".into(),
            bucket: "b".into(),
            size: 0,
            event_time: 1_700_000_000,
            verdict: Verdict::Count,
            matched: true,
            modified: Some(1_699_999_999),
            origin: UploadOrigin::Listed,
        });
        e.expected = Some(Some(0));
        e.local = Some(LocalFile {
            size: 0,
            mtime: 5,
            is_dir: true,
            seen_ms: 9,
        });
        let item = entry_item(&e, 7);
        assert_eq!(get_n::<u64>(&item, "objectSize").unwrap(), Some(0));
        assert_eq!(get_s(&item, "bucketName"), Some("b"));
        assert_eq!(entry_from_item(&item).unwrap(), (e, 7));

        let mut ds = DatasetRecord::new("S", 11);
        let mut item = key("S", DATASET_SK);
        item.insert("firstSeenMs".into(), n(11));
        item.insert("lastSeenMs".into(), n(11));
        assert_eq!(dataset_from_item(&item).unwrap(), ds);
        item.insert("manifestSeenMs".into(), n(12));
        item.insert("received".into(), n(3));
        ds.manifest_seen_ms = Some(12);
        ds.state = DatasetState::Reconciling;
        ds.counts.received = 3;
        assert_eq!(dataset_from_item(&item).unwrap(), ds);
        item.insert("outcome".into(), s("bogus"));
        assert!(dataset_from_item(&item).is_err());
    }
}
