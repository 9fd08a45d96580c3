//! SIGKILL in the middle of ingest: every notification that got a 202 is in
//! the SQLite file after the kill, and once the senders re-send what they
//! have (at-least-once), every dataset gets exactly one event, also across
//! further restarts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::SliceRandom;
use serde_json::Value;

use crate::support::{Env, file_names};

#[test]
fn sigkill_mid_ingest_loses_nothing_accepted_and_emits_one_event_per_dataset() {
    let env = Env::new("[reconcile]\nwait = \"200ms\"\n");
    let mut agent = env.start();
    let set_ids: Vec<String> = (0..12).map(|i| format!("Crash{i:011}")).collect();
    let mut uploads: Vec<(String, Value)> = Vec::new();
    for set_id in &set_ids {
        for line in env.write_dataset(set_id, &file_names(60)) {
            let event = env.upload_for(&line);
            uploads.push((
                event["detail"]["object-key"].as_str().unwrap().to_owned(),
                event,
            ));
        }
    }
    uploads.shuffle(&mut rand::rng());
    let total = uploads.len();

    // Four concurrent senders; a fifth thread kills the agent with SIGKILL
    // once 40% of the notifications have been accepted.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let queue = Arc::new(Mutex::new(uploads.clone()));
    let base = agent.base.clone();
    let pid = agent.child.id();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (acked, dead, queue, base) =
                (acked.clone(), dead.clone(), queue.clone(), base.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = reqwest::Client::new();
                while !dead.load(Ordering::SeqCst) {
                    let Some((key, event)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let sent = rt.block_on(
                        client
                            .post(format!("{base}/events"))
                            .body(event.to_string())
                            .send(),
                    );
                    match sent {
                        Ok(r) if r.status().as_u16() == 202 => {
                            acked.lock().unwrap().insert(key);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let killer = {
        let (acked, dead) = (acked.clone(), dead.clone());
        std::thread::spawn(move || {
            while acked.lock().unwrap().len() < total * 2 / 5 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            dead.store(true, Ordering::SeqCst);
        })
    };
    killer.join().unwrap();
    for s in senders {
        s.join().unwrap();
    }
    agent.kill();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= total * 2 / 5 && acked.len() < total,
        "killed mid-ingest: {} of {total}",
        acked.len()
    );

    // Every accepted notification is in the database the agent left behind.
    let db = rusqlite::Connection::open(env.dir.path().join("state/vault-agent.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT coalesce(object_key, key) FROM entries WHERE size IS NOT NULL")
        .unwrap();
    let stored: HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} accepted notifications lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // Restart; the senders re-send everything (duplicates included).
    let mut agent = env.start();
    for chunk in uploads.chunks(50) {
        let body =
            serde_json::to_string(&chunk.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap();
        let (code, answer) = agent.post(&body);
        assert_eq!(code, 202, "{answer}");
    }
    for set_id in &set_ids {
        env.wait_for_events(set_id, 1, crate::support::LONG);
    }
    agent.stop();
    let agent = env.start();
    crate::support::wait_rechecks(&agent, 2);
    for set_id in &set_ids {
        let events = env.events_for(set_id);
        assert_eq!(events.len(), 1, "{set_id}: {events:?}");
        assert_eq!(
            events[0]["detail-type"],
            "File Upload Reconciliation Successful"
        );
    }
    assert_eq!(env.events().len(), set_ids.len());
    let status = agent.status(None);
    assert!(
        status["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "succeeded"),
        "{status}"
    );
}
