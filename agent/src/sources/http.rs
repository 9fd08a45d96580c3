//! `POST /events`: one EventBridge event, or a JSON array of them, as an
//! EventBridge API destination (or anything else) sends them.
//!
//! 202 only after the durable commit; 400 with a JSON error naming the field
//! for bad input (nothing of that body is recorded); 401 without the API key
//! when one is configured; 503 if the store cannot commit (retry later).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::json;
use tracing::warn;

use crate::notification::parse_body;
use crate::reconcile::EngineError;
use crate::server::AppState;

pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    if let Some(expected) = state.api_key.as_deref()
        && !authorized(&headers, expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": "missing or wrong API key: send it as `x-api-key` or `Authorization: Bearer`"}),
            ),
        );
    }
    let notifications = match parse_body(&body) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, bytes = body.len(), "refused a malformed request body");
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            );
        }
    };
    match state.engine.ingest(notifications).await {
        Ok(receipt) => (StatusCode::ACCEPTED, Json(json!(receipt))),
        Err(e @ EngineError::Store(_)) | Err(e @ EngineError::Stopped) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string(), "retry": true})),
        ),
    }
}

fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()))
}

/// Compares without an early exit, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_in_either_header() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "k1"));
        h.insert("x-api-key", "k1".parse().unwrap());
        assert!(authorized(&h, "k1"));
        assert!(!authorized(&h, "k2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(authorized(&h, "k1"));
        assert!(!authorized(&h, "k"));
    }
}
