//! `GET /status` (every dataset) and `GET /status/{set-id}` (one dataset with
//! example paths of what it is waiting for).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::notification::time::format_event_time;
use crate::store::DatasetRecord;

/// Example paths listed per problem in `/status/{set-id}`.
const EXAMPLES: usize = 100;

type Reply = (StatusCode, Json<Value>);

/// Datasets per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most datasets one page may hold, whatever the client asks.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, serde::Deserialize)]
pub struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

/// One page of datasets in set-id order, with totals by state; `next` is
/// the `after` of the following page (absent on the last).
pub async fn all(State(state): State<AppState>, Query(page): Query<Page>) -> Reply {
    let reader = state.reader.clone();
    let policies: Vec<Value> = {
        let health = state.policies.lock().unwrap_or_else(|p| p.into_inner());
        health.values().map(|h| json!(h)).collect()
    };
    let health = state.health.reasons();
    let share = state.share.clone();
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let result = tokio::task::spawn_blocking(move || -> crate::store::StoreResult<Value> {
        // One more than asked tells whether another page follows.
        let mut records = reader.datasets_page(page.after.as_deref(), limit + 1)?;
        let next = (records.len() > limit).then(|| {
            records.truncate(limit);
            records.last().map(|d| d.set_id.clone())
        });
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
        Ok(json!({
            "datasets": datasets,
            "next": next.flatten(),
            "totals": totals,
            "counters": counters,
            "policies": policies,
            "share": share.describe(),
            "health": health,
        }))
    })
    .await;
    reply(result)
}

pub async fn one(State(state): State<AppState>, Path(set_id): Path<String>) -> Reply {
    let reader = state.reader.clone();
    let result =
        tokio::task::spawn_blocking(move || reader.dataset_detail(&set_id, EXAMPLES)).await;
    let detail = match result {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such dataset"})),
            );
        }
        Ok(Err(e)) => return reply(Ok(Err(e))),
        Err(e) => return reply(Err(e)),
    };
    let mut v = dataset_json(&detail.record);
    v["missing-paths"] = json!(detail.missing);
    v["mismatched-paths"] = json!(detail.mismatched);
    v["unexpected-paths"] = json!(detail.unexpected);
    v["pending-paths"] = json!(detail.pending);
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

pub fn dataset_json(d: &DatasetRecord) -> Value {
    let time = |ms: Option<i64>| ms.map(format_event_time);
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
    })
}
