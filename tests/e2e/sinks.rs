//! The webhook sink against a real HTTP receiver: retried through 5xx,
//! one POST per event, with the event id as idempotency key; an event the
//! receiver refuses for good is counted and moved past.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{Env, LONG, file_names, wait_until};

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
    let in_file = env.wait_for_events("HOOK0000000001", 1, LONG);

    wait_until("the webhook gets the event", LONG, || {
        !received.lock().unwrap().is_empty()
    });
    // Once the dispatcher has recorded the delivery, nothing resends it.
    wait_until("the delivery recorded", LONG, || {
        agent.metric("vault_agent_sink_delivered_total{sink=\"webhook") == Some(1.0)
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

/// A receiver's 4xx is its final word on that event: the dispatcher (not
/// the sink) reports it, counts it, and moves on to the next events, which
/// are still retried through a 503.
#[test]
fn a_refused_event_is_counted_and_the_events_after_it_still_go_out() {
    const REFUSED: &str = "HOOKREFUSED001";
    const TAKEN: &str = "HOOKTAKEN00001";
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let unavailable_once = Arc::new(Mutex::new(true));
    let (store, once) = (received.clone(), unavailable_once.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let (store, once) = (store.clone(), once.clone());
            async move {
                let event: Value = serde_json::from_str(&body).unwrap();
                let set_id = event["detail"]["set-id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if set_id == REFUSED {
                    return axum::http::StatusCode::UNPROCESSABLE_ENTITY;
                }
                if std::mem::take(&mut *once.lock().unwrap()) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                store.lock().unwrap().push(set_id);
                axum::http::StatusCode::OK
            }
        }),
    );
    let receiver = crate::support::serve(app);
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\n[[sink]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"{}/hook\"\n",
        receiver.base
    ));
    let agent = env.start();
    // The refused dataset is decided first: its event is ahead in the outbox.
    for set_id in [REFUSED, TAKEN] {
        let lines = env.write_dataset(set_id, &file_names(2));
        let events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
        agent.post_events(&events);
        env.wait_for_events(set_id, 1, LONG);
    }
    wait_until("the second event delivered", LONG, || {
        agent.metric("vault_agent_sink_delivered_total{sink=\"hook\"}") == Some(1.0)
    });
    assert_eq!(*received.lock().unwrap(), [TAKEN]);
    assert_eq!(
        agent.metric("vault_agent_sink_refused_total{sink=\"hook\"}"),
        Some(1.0),
        "{}",
        agent.logs()
    );
    let logs = agent.logs();
    assert!(logs.contains("EVENT NOT DELIVERED"), "{logs}");
    assert!(
        logs.contains(REFUSED),
        "the refusal names the dataset: {logs}"
    );
    assert!(logs.contains("delivery failed; will retry"), "{logs}");
}
