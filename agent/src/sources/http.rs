//! `POST /events`: one EventBridge event, or a JSON array of them, as an
//! EventBridge API destination (or anything else) sends them.
//!
//! 202 only after the durable commit; 400 with a JSON error naming the field
//! for bad input (nothing of that body is recorded); 401 without the API key
//! when one is configured, decided on the headers before a byte of the body
//! is read; 413 for a body over 16 MiB; 503 if the store cannot commit, or
//! while the bodies being read already hold [`BODY_BUDGET_BYTES`] (retry
//! later).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::logging::RateLimit;

/// Refused requests logged per minute (the rest are counted in the next line).
static REFUSALS_LOGGED: RateLimit = RateLimit::new(20, Duration::from_secs(60));

use crate::notification::parse_body;
use crate::reconcile::{EngineError, EngineHandle};
use crate::telemetry;

/// Largest accepted body (an API destination batch is far smaller).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Memory all bodies being read may hold at once, whatever the number of
/// connections: each request reserves its Content-Length (or, without one,
/// the largest body) before reading.
pub const BODY_BUDGET_BYTES: usize = 128 << 20;
/// The budget's unit.
const KIB: usize = 1024;

/// What `POST /events` needs.
#[derive(Clone)]
pub struct HttpSource {
    pub engine: EngineHandle,
    pub api_key: Option<String>,
    /// [`BODY_BUDGET_BYTES`] in KiB permits.
    body_budget: Arc<Semaphore>,
}

impl HttpSource {
    pub fn new(engine: EngineHandle, api_key: Option<String>) -> HttpSource {
        HttpSource {
            engine,
            api_key,
            body_budget: Arc::new(Semaphore::new(BODY_BUDGET_BYTES / KIB)),
        }
    }

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
    request: Request,
) -> (StatusCode, Json<serde_json::Value>) {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if let Some(expected) = state.api_key.as_deref()
        && !authorized(headers, expected)
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
    // Only now is the body read, within the budget all bodies share.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // A body declared larger than the cap is still read up to the cap (then
    // 413), as clients that write the whole body before reading the answer
    // expect; it holds at most the cap meanwhile.
    let held = declared.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
    let reserve = held.div_ceil(KIB).max(1) as u32;
    let Ok(_reserved) = state.body_budget.clone().try_acquire_many_owned(reserve) else {
        metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "busy").increment(1);
        if let Some(held_back) = REFUSALS_LOGGED.allow() {
            warn!(%peer, held_back, "request bodies being read hold the whole budget; refused one (503)");
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"error": "too many request bodies are being read; retry later", "retry": true}),
            ),
        );
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) if declared.is_none_or(|n| n > MAX_BODY_BYTES) => return too_large(),
        Err(e) => {
            metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "malformed").increment(1);
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("could not read the request body: {e}")})),
            );
        }
    };
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

fn too_large() -> (StatusCode, Json<serde_json::Value>) {
    metrics::counter!(telemetry::REFUSED_REQUESTS, "reason" => "too_large").increment(1);
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({"error": format!("request body over {MAX_BODY_BYTES} bytes")})),
    )
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
