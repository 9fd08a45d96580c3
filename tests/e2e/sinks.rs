//! The webhook sink against a real HTTP receiver: retried through 5xx,
//! one POST per event, with the event id as idempotency key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Env, file_names};

#[test]
fn webhook_sink_retries_until_the_receiver_takes_the_event() {
    // The receiver: refuses the first two POSTs with 503, then records them.
    let received: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let refusals = Arc::new(Mutex::new(2));
    let (store, left) = (received.clone(), refusals.clone());
    let app = axum::Router::new().route(
        "/hooks/vault",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (store, left) = (store.clone(), left.clone());
            async move {
                let mut left = left.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                store.lock().unwrap().push((
                    header("idempotency-key"),
                    header("authorization"),
                    serde_json::from_str(&body).unwrap(),
                ));
                axum::http::StatusCode::OK
            }
        }),
    );
    let receiver = crate::support::serve(app);
    let url = format!("{}/hooks/vault", receiver.base);

    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\n[[sink]]\nkind = \"webhook\"\nurl = \"{url}\"\nbearer_token = \"hook-secret\"\n"
    ));
    let agent = env.start();
    let lines = env.write_dataset("HOOK0000000001", &file_names(4));
    let events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    assert_eq!(agent.post(&json!(events).to_string()).0, 202);
    let in_file = env.wait_for_events("HOOK0000000001", 1, Duration::from_secs(5));

    let start = std::time::Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the webhook never got the event:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the dispatcher has recorded the delivery, nothing resends it.
    crate::support::wait_until("the delivery recorded", Duration::from_secs(60), || {
        crate::support::http_get(&format!("{}/metrics", agent.base)).is_some_and(|(_, text)| {
            text.lines().any(|l| {
                l.starts_with("vault_agent_sink_delivered_total{sink=\"webhook")
                    && l.ends_with(" 1")
            })
        })
    });
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one delivery, after two refusals");
    let (key, auth, body) = &got[0];
    assert_eq!(body, &in_file[0], "the same envelope as every other sink");
    assert_eq!(key, in_file[0]["id"].as_str().unwrap());
    assert_eq!(auth, "Bearer hook-secret");
    assert_eq!(*refusals.lock().unwrap(), 0);
    assert!(agent.logs().contains("delivery failed; will retry"));
}
