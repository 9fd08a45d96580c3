//! Manifests are untrusted input: a FIFO, a link to /dev/zero or to a
//! secret, a BOM, `..` lines, and a dataset re-sealed with a new manifest.

use serde_json::json;

use crate::support::{Env, LONG, gateway_event, http_get, uploads_at, wait_until};

#[test]
fn hostile_manifests_mark_only_their_own_dataset() {
    // Re-checks every second; the deadline is far away.
    let env = Env::new("[reconcile]\nwait = \"1s\"\niterations = 600\n");
    let agent = env.start();
    let share = env.share();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOPSECRET-LINE\n").unwrap();

    // A FIFO manifest: the old single reader thread blocked on it forever.
    std::fs::create_dir_all(share.join("FIFO-vaultjob")).unwrap();
    nix::unistd::mkfifo(
        &share.join("FIFO-vaultjob/FIFO.manifest"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    // Links to /dev/zero and to a file outside the share.
    std::fs::create_dir_all(share.join("ZERO-vaultjob")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", share.join("ZERO-vaultjob/ZERO.manifest")).unwrap();
    std::fs::create_dir_all(share.join("LEAK-vaultjob")).unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret.txt"),
        share.join("LEAK-vaultjob/LEAK.manifest"),
    )
    .unwrap();
    // `..` escaping the dataset.
    std::fs::create_dir_all(share.join("DOTS-vaultjob")).unwrap();
    std::fs::write(
        share.join("DOTS-vaultjob/DOTS.manifest"),
        "DOTS-vaultjob\nDOTS-vaultjob/../../outside/x\nDOTS-vaultjob/DOTS.manifest\n",
    )
    .unwrap();
    let time = "2021-05-01T10:00:00Z";
    for id in ["FIFO", "ZERO", "LEAK", "DOTS"] {
        let key = format!("{id}-vaultjob/{id}.manifest");
        let (code, body) = agent.post(&gateway_event(&key, 10, time).to_string());
        assert_eq!(code, 202, "{body}");
    }

    // A complete dataset whose manifest starts with a UTF-8 BOM, and a plain
    // one, notified after the hostile ones: both succeed.
    let bom_lines = env.write_dataset("BOM", &["a.bin".to_string(), "b.bin".to_string()]);
    let manifest = share.join("BOM-vaultjob/BOM.manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("\u{FEFF}{text}")).unwrap();
    let plain_lines = env.write_dataset("PLAIN", &["c.bin".to_string()]);
    for lines in [&bom_lines, &plain_lines] {
        let (code, body) = agent.post(&json!(uploads_at(&env, lines, time)).to_string());
        assert_eq!(code, 202, "{body}");
    }
    for id in ["BOM", "PLAIN"] {
        let events = env.wait_for_events(id, 1, LONG);
        assert_eq!(
            events[0]["detail-type"], "File Upload Reconciliation Successful",
            "{id}: {events:?}"
        );
    }

    // Each hostile dataset says what is wrong with its own manifest.
    let note = |id: &str| {
        agent.status(Some(id))["note"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_until("every hostile manifest noted", LONG, || {
        ["FIFO", "ZERO", "LEAK", "DOTS"]
            .iter()
            .all(|id| !note(id).is_empty())
    });
    assert!(
        note("FIFO").contains("not a regular file (a FIFO)"),
        "{}",
        note("FIFO")
    );
    assert!(note("ZERO").contains("symbolic link"), "{}", note("ZERO"));
    assert!(note("LEAK").contains("symbolic link"), "{}", note("LEAK"));
    assert!(
        note("DOTS").contains("line 2: `..` and `.` path components are not allowed"),
        "{}",
        note("DOTS")
    );
    for id in ["FIFO", "ZERO", "LEAK", "DOTS"] {
        assert_eq!(agent.status(Some(id))["state"], "reconciling");
    }
    // The secret is neither served nor logged.
    let (_, body) = http_get(&format!("{}/status", agent.base)).unwrap();
    assert!(!body.contains("TOPSECRET"), "{body}");
    assert!(!agent.logs().contains("TOPSECRET"));
}

#[test]
fn a_resealed_dataset_is_decided_on_its_new_manifest() {
    let env = Env::new("[reconcile]\nwait = \"1s\"\niterations = 600\n");
    let agent = env.start();
    let id = "RESEAL";
    let first = env.write_dataset(id, &["a.bin".to_string(), "b.bin".to_string()]);
    // Sealed once: the manifest and everything but b.bin arrive.
    let early: Vec<String> = first
        .iter()
        .filter(|l| !l.ends_with("b.bin"))
        .cloned()
        .collect();
    let t1 = "2021-05-01T10:00:00Z";
    let (code, body) = agent.post(&json!(uploads_at(&env, &early, t1)).to_string());
    assert_eq!(code, 202, "{body}");
    wait_until("the first manifest loaded", LONG, || {
        agent.status(Some(id))["manifest-entries"] == 4
    });

    // Re-sealed with a new file; its manifest notification is newer.
    let second = env.write_dataset(
        id,
        &[
            "a.bin".to_string(),
            "b.bin".to_string(),
            "c.bin".to_string(),
        ],
    );
    let manifest = second.iter().find(|l| l.ends_with(".manifest")).unwrap();
    let t2 = "2021-05-01T11:00:00Z";
    let (code, body) =
        agent.post(&json!(uploads_at(&env, std::slice::from_ref(manifest), t2)).to_string());
    assert_eq!(code, 202, "{body}");
    // b.bin completes the OLD manifest, not the new one.
    let b = second.iter().find(|l| l.ends_with("b.bin")).unwrap();
    let (code, body) =
        agent.post(&json!(uploads_at(&env, std::slice::from_ref(b), t2)).to_string());
    assert_eq!(code, 202, "{body}");
    wait_until("the new manifest loaded", LONG, || {
        agent.status(Some(id))["manifest-entries"] == 5
    });
    let status = agent.status(Some(id));
    assert_eq!(status["state"], "reconciling", "{status}");
    assert_eq!(
        status["missing-paths"],
        json!([format!("{id}-vaultjob/c.bin")])
    );
    assert!(env.events_for(id).is_empty(), "{:?}", env.events_for(id));

    let c = second.iter().find(|l| l.ends_with("c.bin")).unwrap();
    let (code, _) = agent.post(&json!(uploads_at(&env, std::slice::from_ref(c), t2)).to_string());
    assert_eq!(code, 202);
    let events = env.wait_for_events(id, 1, LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
}
