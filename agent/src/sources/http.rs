//! `POST /events`: one EventBridge event, or a JSON array of them, as an
//! EventBridge API destination (or anything else) sends them.
//!
//! 202 only after the durable commit; 400 with a JSON error naming the field
//! for bad input (nothing of that body is recorded); 401 without the API key
//! when one is configured; 503 if the store cannot commit (retry later).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::logging::RateLimit;

/// Refused requests logged per minute (the rest are counted in the next line).
static REFUSALS_LOGGED: RateLimit = RateLimit::new(20, Duration::from_secs(60));

use crate::notification::parse_body;
use crate::reconcile::{EngineError, EngineHandle};
use crate::telemetry;

/// What `POST /events` needs.
#[derive(Clone)]
pub struct HttpSource {
    pub engine: EngineHandle,
    pub api_key: Option<String>,
}

impl HttpSource {
    /// This source's routes, for the agent's HTTP server to serve.
    pub fn routes(self) -> axum::Router {
        axum::Router::new()
            .route("/events", axum::routing::post(post_events))
            .with_state(self)
    }
}

async fn post_events(
    State(state): State<HttpSource>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    if let Some(expected) = state.api_key.as_deref()
        && !authorized(&headers, expected)
    {
        metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "unauthorized").increment(1);
        if let Some(held_back) = REFUSALS_LOGGED.allow() {
            warn!(%peer, held_back, "refused a request without the right API key (401)");
        }
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
            metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "malformed").increment(1);
            if let Some(held_back) = REFUSALS_LOGGED.allow() {
                warn!(%peer, error = %e, bytes = body.len(), held_back, "refused a malformed request body (400)");
            }
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            );
        }
    };
    match state.engine.ingest(notifications).await {
        Ok(receipt) => (StatusCode::ACCEPTED, Json(json!(receipt))),
        Err(e @ EngineError::Store(_)) | Err(e @ EngineError::Stopped) => {
            metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "store").increment(1);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": e.to_string(), "retry": true})),
            )
        }
    }
}

/// Whether the request carries the API key (also used by the server for
/// `[http] protect_reads`).
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    presented_key(headers).is_some_and(|given| {
        !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    })
}

/// The key from `x-api-key`, or from `Authorization: Bearer` (the scheme
/// is case-insensitive, RFC 9110).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok();
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
        h.insert(header::AUTHORIZATION, "bearer k1".parse().unwrap());
        assert!(authorized(&h, "k1"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert!(!authorized(&h, "k1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "".parse().unwrap());
        assert!(!authorized(&h, ""));
    }
}
