//! The agent's HTTP server (always on at `[http] listen`): health, status
//! (JSON, Prometheus, and the page at `/`), and the routes of HTTP sources.

pub mod listener;
mod page;
mod prometheus;
mod status;
pub mod wait;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::health::Health;
use crate::reconcile::EngineHandle;
use crate::reconcile::plugin::PolicyHealth;
use crate::store::StoreReader;
use crate::watcher::ShareStatus;

use crate::sources::http::MAX_BODY_BYTES;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reader: Arc<dyn StoreReader>,
    pub policies: PolicyHealth,
    pub health: Health,
    pub share: ShareStatus,
    /// `[http] protect_reads`: the API key `/status` and `/metrics` need.
    pub read_key: Option<String>,
    /// Cancelled when the agent stops: long polls answer at once.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Long polls on one dataset share one read per commit.
    pub shared_reads: wait::SharedReads,
}

/// Health, status and metrics, plus the routes of the sources that take
/// HTTP; every request is counted by route and status.
pub fn router(state: AppState, sources: Vec<Router>) -> Router {
    let reads = Router::new()
        .route("/status", get(status::all))
        .route("/status/{set_id}", get(status::one))
        .route("/metrics", get(prometheus::render))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_read_key,
        ));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .merge(page::routes())
        .merge(reads)
        .with_state(state);
    for routes in sources {
        router = router.merge(routes);
    }
    router
        .layer(middleware::from_fn(count_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// With `[http] protect_reads`, reads need the API key as writes do.
async fn require_read_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match &state.read_key {
        Some(key) if !crate::sources::http::authorized(req.headers(), key) => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "missing or wrong API key ([http] protect_reads): send it as `x-api-key` or `Authorization: Bearer`"
            })),
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// Counts a request by its route pattern (never the raw path: a set-id is
/// no label) and status.
async fn count_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    metrics::counter!(
        crate::telemetry::HTTP_REQUESTS,
        "route" => route,
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

/// 200 when healthy; 503 with `{"reasons": [...]}` naming every problem.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut reasons = state.health.reasons();
    if !state.engine.is_running() {
        reasons.push("engine: the reconcile engine has stopped".into());
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unhealthy", "reasons": reasons })),
        )
            .into_response()
    }
}
