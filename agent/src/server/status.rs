//! `GET /status` (every dataset) and `GET /status/{set-id}` (one dataset with
//! example paths of what it is waiting for).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::notification::time::format_event_time;
use crate::store::{DatasetDetail, DatasetRecord};

/// Example paths listed per problem in `/status/{set-id}`.
const EXAMPLES: usize = 100;

type Reply = (StatusCode, Json<Value>);

/// Datasets per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most datasets one page may hold, whatever the client asks.
pub const MAX_LIMIT: usize = 1000;

/// Most recent decisions one reply may list.
pub const MAX_RECENT: usize = 100;

#[derive(Debug, serde::Deserialize)]
pub struct Page {
    limit: Option<usize>,
    after: Option<String>,
    /// `set-id` (the default) or `active`: datasets still uploading first.
    order: Option<String>,
    /// Also list this many of the latest decisions (`recent-decisions`).
    recent: Option<usize>,
}

/// One page of datasets with totals by state; `next` is the `after` of
/// the following page (absent on the last). In set-id order, or with
/// `order=active` the undecided datasets first (then `next` is a cursor
/// of its own: `a:<set-id>` or `d:<set-id>`).
pub async fn all(State(state): State<AppState>, Query(page): Query<Page>) -> Reply {
    let active_first = match page.order.as_deref() {
        None | Some("set-id") => false,
        Some("active") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": format!("unknown order {other:?}: use `set-id` or `active`")}),
                ),
            );
        }
    };
    let cursor = match (active_first, page.after.as_deref()) {
        (true, Some(after)) => match ActiveCursor::parse(after) {
            Some(c) => Some(c),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        json!({"error": "with order=active, `after` is the `next` of the previous page (a:<set-id> or d:<set-id>)"}),
                    ),
                );
            }
        },
        _ => None,
    };
    let recent = page.recent.unwrap_or(0).min(MAX_RECENT);
    let reader = state.reader.clone();
    let policies: Vec<Value> = {
        let health = state.policies.lock().unwrap_or_else(|p| p.into_inner());
        health.values().map(|h| json!(h)).collect()
    };
    let health = state.health.reasons();
    let share = state.share.clone();
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let result = tokio::task::spawn_blocking(move || -> crate::store::StoreResult<Value> {
        let (records, next) = if active_first {
            active_first_page(&*reader, cursor, limit)?
        } else {
            // One more than asked tells whether another page follows.
            let mut records = reader.datasets_page(page.after.as_deref(), limit + 1)?;
            let next = (records.len() > limit)
                .then(|| {
                    records.truncate(limit);
                    records.last().map(|d| d.set_id.clone())
                })
                .flatten();
            (records, next)
        };
        let datasets: Vec<Value> = records.iter().map(dataset_json).collect();
        let totals: serde_json::Map<String, Value> = reader
            .dataset_totals()?
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let counters: serde_json::Map<String, Value> = reader
            .counters()?
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let mut reply = json!({
            // The page counts down to deadlines from the agent's clock.
            "now": format_event_time(crate::notification::time::now_ms()),
            "datasets": datasets,
            "next": next,
            "totals": totals,
            "counters": counters,
            "policies": policies,
            "share": share.describe(),
            "health": health,
        });
        if recent > 0 {
            let decisions: Vec<Value> = reader
                .recent_decisions(recent)?
                .iter()
                .map(dataset_json)
                .collect();
            reply["recent-decisions"] = json!(decisions);
        }
        Ok(reply)
    })
    .await;
    reply(result)
}

/// Where an `order=active` page starts: among the undecided datasets, or
/// among the decided ones (which follow them), after a set-id.
struct ActiveCursor {
    active: bool,
    after: String,
}

impl ActiveCursor {
    fn parse(text: &str) -> Option<Self> {
        let (phase, after) = text.split_once(':')?;
        let active = match phase {
            "a" => true,
            "d" => false,
            _ => return None,
        };
        Some(ActiveCursor {
            active,
            after: after.to_owned(),
        })
    }
}

/// One page of the undecided datasets then the decided ones, each part in
/// set-id order, and the cursor of the next page.
fn active_first_page(
    reader: &dyn crate::store::StoreReader,
    cursor: Option<ActiveCursor>,
    limit: usize,
) -> crate::store::StoreResult<(Vec<DatasetRecord>, Option<String>)> {
    let cursor = cursor.unwrap_or(ActiveCursor {
        active: true,
        after: String::new(),
    });
    let after = |c: &ActiveCursor| (!c.after.is_empty()).then(|| c.after.clone());
    let mut records = Vec::new();
    let mut decided_after = None;
    if cursor.active {
        records = reader.datasets_page_by_activity(true, after(&cursor).as_deref(), limit + 1)?;
        if records.len() > limit {
            records.truncate(limit);
            let last = records.last().map(|d| d.set_id.clone()).unwrap_or_default();
            return Ok((records, Some(format!("a:{last}"))));
        }
    } else {
        decided_after = after(&cursor);
    }
    let room = limit - records.len();
    let mut decided =
        reader.datasets_page_by_activity(false, decided_after.as_deref(), room + 1)?;
    let more = decided.len() > room;
    decided.truncate(room);
    let next = more.then(|| {
        let last = decided
            .last()
            .map(|d| d.set_id.clone())
            .or(decided_after)
            .unwrap_or_default();
        format!("d:{last}")
    });
    records.extend(decided);
    Ok((records, next))
}

/// `?wait=DURATION[&since=VERSION]`: a long poll (see [`super::wait`]).
#[derive(Debug, Default, serde::Deserialize)]
pub struct WaitQuery {
    wait: Option<String>,
    since: Option<String>,
}

pub async fn one(
    State(state): State<AppState>,
    Path(set_id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Reply {
    let wait = match query.wait.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(wait)) => Some(wait.min(super::wait::MAX_WAIT)),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("wait: {e} (a duration like `30s`)")})),
            );
        }
    };
    let found = match wait {
        Some(wait) => {
            super::wait::until_changed(&state, &set_id, query.since.as_deref(), wait).await
        }
        None => read_detail(&state, set_id).await,
    };
    detail_reply(found)
}

/// A dataset with its example paths (`None`: no such dataset).
pub(super) async fn read_detail(
    state: &AppState,
    set_id: String,
) -> Result<Option<DatasetDetail>, String> {
    let reader = state.reader.clone();
    match tokio::task::spawn_blocking(move || reader.dataset_detail(&set_id, EXAMPLES)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn detail_reply(found: Result<Option<DatasetDetail>, String>) -> Reply {
    let detail = match found {
        Ok(Some(d)) => d,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such dataset"})),
            );
        }
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e})));
        }
    };
    let mut v = dataset_json(&detail.record);
    v["missing-paths"] = json!(detail.missing);
    v["mismatched-paths"] = json!(detail.mismatched);
    v["unexpected-paths"] = json!(detail.unexpected);
    v["pending-paths"] = json!(detail.pending);
    v["content-mismatch-paths"] = json!(detail.content_mismatch);
    v["unverifiable-paths"] = json!(detail.unverifiable);
    if let Some(n) = detail.examined {
        // The lists are examples from the first entries; counts are exact.
        v["paths-from-first-entries"] = json!(n);
    }
    v["policy-state"] = json!(detail.record.policy_state);
    (StatusCode::OK, Json(v))
}

fn reply(result: Result<crate::store::StoreResult<Value>, tokio::task::JoinError>) -> Reply {
    match result {
        Ok(Ok(v)) => (StatusCode::OK, Json(v)),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// A short fingerprint of what a dataset's record says: it changes when
/// anything a waiter shows changes (not with the clock).
pub fn version(d: &DatasetRecord) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        d.state.as_str(),
        d.counts.values(),
        d.manifest_loaded,
        d.manifest_entries,
        &d.note,
        d.decided_ms,
        d.deadline_ms,
        d.listed_entries,
    )
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

pub fn dataset_json(d: &DatasetRecord) -> Value {
    let time = |ms: Option<i64>| ms.map(format_event_time);
    let c = &d.counts;
    // Confirmed bytes over the time since the dataset was first seen.
    let confirmed = d.counts.local_bytes.saturating_sub(d.counts.pending_bytes);
    let seconds = (crate::notification::time::now_ms() - d.first_seen_ms).max(1) as f64 / 1000.0;
    let rate = (d.counts.local_files > 0).then(|| (confirmed as f64 / seconds).round() as u64);
    // An ETA only while the dataset uploads, and never one past its deadline.
    let now_s = crate::notification::time::now_ms() / 1000;
    let eta = rate
        .filter(|r| *r > 0 && d.counts.pending_bytes > 0 && !d.state.is_decided())
        .map(|r| d.counts.pending_bytes / r)
        .filter(|eta| {
            d.deadline_ms
                .is_none_or(|deadline| now_s.saturating_add(*eta as i64) <= deadline / 1000)
        });
    json!({
        "set-id": d.set_id,
        "state": d.state,
        "manifest-key": d.manifest.as_ref().map(|m| &m.key),
        "manifest-entries": d.manifest_loaded.then_some(d.manifest_entries),
        "received": d.counts.received,
        "missing": d.missing(),
        "unexpected": d.unexpected(),
        "mismatched": d.counts.mismatched,
        "ignored": d.counts.ignored,
        "rejected": d.counts.rejected,
        "unjudged": d.counts.unjudged,
        "first-notification": time(Some(d.first_seen_ms)),
        "last-notification": time(Some(d.last_seen_ms)),
        "deadline": time(d.deadline_ms),
        "decided": time(d.decided_ms),
        "note": d.note,
        "local-files": d.counts.local_files,
        "local-bytes": d.counts.local_bytes,
        "pending": d.counts.pending,
        "pending-bytes": d.counts.pending_bytes,
        "upload-rate-bytes-per-second": rate,
        "eta-seconds": eta,
        // Uploads recorded from an S3 listing, their notification lost.
        "listed-entries": d.listed_entries,
        // Changes whenever the dataset does (`?wait=...&since=VERSION`).
        "version": version(d),
        // Manifest entries by content outcome (`verify_content`): their
        // upload's S3 checksum against the file's on the share.
        "content": {
            "verified": c.verified,
            "verified-bytes": c.verified_bytes,
            "mismatch": c.content_mismatch,
            "unverifiable": c.unverifiable,
            "pending": d.manifest_loaded.then(|| d.manifest_entries
                .saturating_sub(c.verified + c.content_mismatch + c.unverifiable)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DatasetState, Store, memory::MemoryStore};

    fn store_with(active: usize, decided: usize) -> MemoryStore {
        let mut store = MemoryStore::new();
        for i in 0..active + decided {
            let set_id = format!("S{i:03}");
            let mut ds = DatasetRecord::new(&set_id, 1);
            if i >= active {
                ds.state = DatasetState::Succeeded;
                ds.decided_ms = Some(i as i64);
            }
            let mut tx = store.begin().unwrap();
            tx.dataset(&set_id).unwrap();
            tx.put_dataset(&ds).unwrap();
            tx.commit().unwrap();
        }
        store
    }

    /// Follows `next` to the end; returns the set-ids of each page.
    fn pages(store: &MemoryStore, limit: usize) -> Vec<Vec<String>> {
        let mut cursor = None;
        let mut pages = Vec::new();
        loop {
            let (records, next) = active_first_page(store, cursor, limit).unwrap();
            pages.push(records.into_iter().map(|d| d.set_id).collect());
            match next {
                Some(n) => cursor = Some(ActiveCursor::parse(&n).unwrap()),
                None => return pages,
            }
        }
    }

    #[test]
    fn active_first_pages_cover_every_dataset_once_in_order() {
        for (active, decided, limit) in [(3, 4, 3), (3, 3, 3), (0, 5, 2), (5, 0, 5), (2, 2, 10)] {
            let store = store_with(active, decided);
            let pages = pages(&store, limit);
            let seen: Vec<String> = pages.concat();
            let all: Vec<String> = (0..active + decided).map(|i| format!("S{i:03}")).collect();
            assert_eq!(seen, all, "{active} active, {decided} decided, by {limit}");
            assert!(pages.iter().all(|p| p.len() <= limit), "{pages:?}");
            assert!(
                pages.iter().rev().skip(1).all(|p| p.len() == limit),
                "{pages:?}"
            );
        }
    }

    #[test]
    fn a_cursor_from_elsewhere_is_refused() {
        assert!(ActiveCursor::parse("S001").is_none());
        assert!(ActiveCursor::parse("x:S001").is_none());
        assert!(ActiveCursor::parse("d:").is_some());
    }
}
