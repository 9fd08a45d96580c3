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
use crate::notification::Classifier;
use crate::reconcile::EngineHandle;
use crate::reconcile::plugin::PolicyHealth;
use crate::sources;
use crate::store::StoreReader;

/// Largest accepted request body (an API destination batch is far smaller).
const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reader: Arc<dyn StoreReader>,
    pub classifier: Arc<Classifier>,
    pub api_key: Option<String>,
    pub policies: PolicyHealth,
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

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (StatusCode, &'static str) {
    if state.engine.is_running() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "reconcile engine stopped\n",
        )
    }
}
