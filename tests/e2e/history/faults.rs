//! One agent's view of AWS through a seeded fault proxy: its DynamoDB
//! requests are delayed (so agents' requests reorder), some are refused
//! with a 500 before reaching the table, and some reach the table but lose
//! their answer (the agent cannot tell whether they applied). Other
//! services pass through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the proxy did, for the report.
#[derive(Default)]
pub struct FaultCounts {
    pub delayed: AtomicU64,
    pub refused: AtomicU64,
    pub answers_lost: AtomicU64,
}

pub struct AgentProxy {
    pub endpoint: String,
    pub counts: Arc<FaultCounts>,
    _server: crate::support::TestServer,
}

/// In percent of DynamoDB requests.
const REFUSED: u32 = 3;
const ANSWER_LOST: u32 = 2;
const MAX_DELAY_MS: u64 = 25;

impl AgentProxy {
    pub fn start(upstream: String, seed: u64) -> AgentProxy {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let counts = Arc::new(FaultCounts::default());
        let client = reqwest::Client::new();
        let seen = counts.clone();
        let handler = move |req: axum::extract::Request| {
            let (upstream, rng, client, counts) =
                (upstream.clone(), rng.clone(), client.clone(), seen.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let dynamodb = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with("DynamoDB_"));
                let (delay, roll) = {
                    let mut rng = rng.lock().unwrap();
                    (
                        rng.random_range(0..=MAX_DELAY_MS),
                        rng.random_range(0..100u32),
                    )
                };
                let error = || {
                    axum::response::Response::builder()
                        .status(500)
                        .header("content-type", "application/x-amz-json-1.0")
                        .body(axum::body::Body::from(
                            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#,
                        ))
                        .unwrap()
                };
                if dynamodb {
                    counts.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if roll < REFUSED {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        return error();
                    }
                }
                let Ok(answer) =
                    crate::aws::forward(&client, &upstream, &parts, body.to_vec()).await
                else {
                    return error();
                };
                if dynamodb && roll < REFUSED + ANSWER_LOST {
                    counts.answers_lost.fetch_add(1, Ordering::Relaxed);
                    return error();
                }
                answer.pass_back()
            }
        };
        let server = crate::support::serve(axum::Router::new().fallback(handler));
        AgentProxy {
            endpoint: server.base.clone(),
            counts,
            _server: server,
        }
    }
}
