//! `GET /metrics`: the Prometheus exposition of [`crate::telemetry`]. The
//! gauges of what the store holds (datasets by state, pending files and
//! bytes) are read at scrape time; everything else is counted as it happens.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::store::DatasetState;
use crate::telemetry;

const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = telemetry::handle() else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off ([http] metrics = false)\n",
        )
            .into_response();
    };
    let reader = state.reader.clone();
    let read = tokio::task::spawn_blocking(move || reader.dataset_gauges()).await;
    match read {
        Ok(Ok(gauges)) => {
            let totals = gauges.totals;
            for s in [
                DatasetState::Collecting,
                DatasetState::Reconciling,
                DatasetState::Succeeded,
                DatasetState::TimedOut,
                DatasetState::Failed,
            ] {
                let n = totals
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(telemetry::DATASETS, "state" => s.as_str()).set(n as f64);
            }
            metrics::gauge!(telemetry::PENDING_FILES).set(gauges.pending_files as f64);
            metrics::gauge!(telemetry::PENDING_BYTES).set(gauges.pending_bytes as f64);
        }
        // The rest is still worth scraping; /healthz names the store's fault.
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the dataset totals"),
        Err(_) => {}
    }
    ([(header::CONTENT_TYPE, EXPOSITION)], handle.render()).into_response()
}
