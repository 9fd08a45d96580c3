//! The agent's HTTP server (always on at `[http] listen`): health, status,
//! and the routes of HTTP sources.

pub mod listener;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;

use crate::health::Health;
use crate::reconcile::EngineHandle;
use crate::reconcile::plugin::PolicyHealth;
use crate::store::StoreReader;
use crate::watcher::ShareStatus;

/// Largest accepted request body (an API destination batch is far smaller).
const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reader: Arc<dyn StoreReader>,
    pub policies: PolicyHealth,
    pub health: Health,
    pub share: ShareStatus,
}

/// Health and status, plus the routes of the sources that take HTTP.
pub fn router(state: AppState, sources: Vec<Router>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status::all))
        .route("/status/{set_id}", get(status::one))
        .with_state(state);
    for routes in sources {
        router = router.merge(routes);
    }
    router.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
