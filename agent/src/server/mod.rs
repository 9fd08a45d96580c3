//! The agent's HTTP server (always on at `[http] listen`): health, status,
//! and the routes of HTTP sources.

pub mod listener;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::config::SourceConfig;
use crate::health::Health;
use crate::notification::Classifier;
use crate::reconcile::EngineHandle;
use crate::reconcile::plugin::PolicyHealth;
use crate::sources;
use crate::store::StoreReader;
use crate::watcher::ShareStatus;

/// Largest accepted request body (an API destination batch is far smaller).
const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reader: Arc<dyn StoreReader>,
    pub classifier: Arc<Classifier>,
    pub api_key: Option<String>,
    pub policies: PolicyHealth,
    pub health: Health,
    pub share: ShareStatus,
}

pub fn router(state: AppState, source: &SourceConfig) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status::all))
        .route("/status/{set_id}", get(status::one));
    match source {
        SourceConfig::Http => {
            router = router.route("/events", post(sources::http::post_events));
        }
        SourceConfig::Sqs { .. } => {}
    }
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
