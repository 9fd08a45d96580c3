//! The reconcile contract, end to end: exactly one Successful event, never
//! early, whatever the order; exactly one Timeout at the deadline.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::support::{Env, file_names, gateway_event};

#[test]
fn out_of_order_dataset_with_repeats_and_strays_succeeds_exactly_once() {
    let env = Env::new("[reconcile]\nwait = \"200ms\"\n");
    let agent = env.start();
    let set_id = "Xk3pQ9LmZt2Vb7Ra";
    let lines = env.write_dataset(set_id, &file_names(40));
    let manifest_line = lines.last().unwrap().clone();
    let (last_line, early) = {
        let mut data: Vec<String> = lines[..lines.len() - 1].to_vec();
        data.shuffle(&mut rand::rng());
        let last = data.pop().unwrap();
        (last, data)
    };
    // The manifest early, everything else but one file in random order,
    // in single events and arrays, with a repeat and keys outside datasets.
    let mut events: Vec<Value> = early.iter().map(|l| env.upload_for(l)).collect();
    events.insert(2, env.upload_for(&manifest_line));
    events.insert(10, events[5].clone());
    events.push(gateway_event(
        "scratch/readme.txt",
        5,
        "2021-05-01T10:00:00Z",
    ));
    events.push(gateway_event(
        "other-vaultjobs/x",
        5,
        "2021-05-01T10:00:00Z",
    ));
    for chunk in events.chunks(7) {
        let body = if chunk.len() == 1 {
            chunk[0].to_string()
        } else {
            json!(chunk).to_string()
        };
        let (code, body) = agent.post(&body);
        assert_eq!(code, 202, "{body}");
    }
    // Everything but the last file is committed and reconciled on 202: no event.
    let status = agent.status(Some(set_id));
    assert_eq!(status["state"], "reconciling", "{status}");
    assert_eq!(status["missing"], 1, "{status}");
    assert_eq!(status["unexpected"], 0, "{status}");
    assert_eq!(status["missing-paths"], json!([last_line]));
    crate::support::wait_rechecks(&agent, 2);
    assert!(
        env.events_for(set_id).is_empty(),
        "no event before the last file arrives"
    );

    let sent = Instant::now();
    let (code, body) = agent.post(&env.upload_for(&last_line).to_string());
    assert_eq!(code, 202, "{body}");
    let events = env.wait_for_events(set_id, 1, crate::support::LONG);
    eprintln!(
        "success event written {:?} after the last upload was posted",
        sent.elapsed()
    );
    let event = &events[0];
    let manifest_size = std::fs::metadata(env.share().join(&manifest_line))
        .unwrap()
        .len();
    assert_eq!(
        event["detail-type"],
        "File Upload Reconciliation Successful"
    );
    assert_eq!(event["source"], "vault.application");
    assert_eq!(event["resources"], json!([]));
    assert_eq!(event["version"], "0");
    assert_eq!(
        event["detail"],
        json!({ "set-id": set_id, "event-time": 1_619_863_200, "bucket-name": "e2e-bucket",
                "object-key": manifest_line, "object-size": manifest_size })
    );
    let detail_keys: Vec<&String> = event["detail"].as_object().unwrap().keys().collect();
    assert_eq!(
        detail_keys,
        [
            "set-id",
            "event-time",
            "bucket-name",
            "object-key",
            "object-size"
        ]
    );
    assert!(
        event["time"].as_str().unwrap().ends_with('Z')
            && event["time"].as_str().unwrap().len() == 20
    );

    // Re-checks and late repeats never emit a second event.
    agent.post(&env.upload_for(&last_line).to_string());
    crate::support::wait_rechecks(&agent, 2);
    assert_eq!(env.events_for(set_id).len(), 1);
    let all = agent.status(None);
    assert_eq!(all["counters"]["outside_keys"], 2, "{all}");
}

#[test]
fn dataset_missing_a_file_gets_exactly_one_timeout_after_the_deadline() {
    // Deadline = 250ms x 6 = 1.5s after the manifest's notification.
    let env = Env::new("[reconcile]\nwait = \"250ms\"\niterations = 6\n");
    let agent = env.start();
    let set_id = "TimeoutSet000001";
    let lines = env.write_dataset(set_id, &file_names(10));
    let missing = lines.iter().find(|l| l.ends_with(".dat")).unwrap().clone();
    let started = Instant::now();
    for line in lines.iter().rev().filter(|l| **l != missing) {
        let (code, body) = agent.post(&env.upload_for(line).to_string());
        assert_eq!(code, 202, "{body}");
    }
    // Re-checks that had every chance to time it out: none did before the
    // deadline (a slow machine may already be past it).
    crate::support::wait_rechecks(&agent, 2);
    if !env.events_for(set_id).is_empty() {
        let status = agent.status(Some(set_id));
        assert!(
            status["decided"].as_str() >= status["deadline"].as_str(),
            "a Timeout before the deadline: {status}"
        );
    }
    let events = env.wait_for_events(set_id, 1, Duration::from_secs(60));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "timed out early: {elapsed:?}"
    );
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Timeout"
    );
    assert_eq!(
        events[0]["detail"]["object-key"],
        lines.last().unwrap().as_str()
    );
    let status = agent.status(Some(set_id));
    assert_eq!(status["state"], "timed-out");
    assert_eq!(status["missing-paths"], json!([missing]));
    // The missing file arriving late does not turn a Timeout into a success.
    agent.post(&env.upload_for(&missing).to_string());
    crate::support::wait_rechecks(&agent, 2);
    assert_eq!(env.events_for(set_id).len(), 1);
}
