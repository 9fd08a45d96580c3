//! The share watcher and the share commands, end to end: files written by
//! other programs are tracked with none missed, pending counts follow the
//! cloud's confirmations, and odd names survive manifest and reconcile.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{AgentProcess, BIN, Env, run_ok};

fn wait_status(
    agent: &AgentProcess,
    set_id: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let all = agent.status(None);
        if let Some(d) = all["datasets"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["set-id"] == set_id))
            && cond(d)
        {
            return d.clone();
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}: {all}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every path below `dir` (itself included), relative to `share`, as `find` prints them.
fn find(share: &Path, dir: &str) -> BTreeSet<String> {
    let out = Command::new("find")
        .arg(dir)
        .current_dir(share)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn tree_copied_by_cp_is_tracked_with_no_file_missed() {
    let env = Env::new("");
    let agent = env.start();
    // 20,000 files in nested directories, made outside the share...
    let src = env.dir.path().join("src");
    for i in 0..20_000 {
        let dir = src.join(format!("d{:02}/e{:02}", i % 40, (i / 40) % 25));
        if i < 1000 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i:05}.dat")), i.to_string()).unwrap();
    }
    // ...then copied in by cp while the agent watches.
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(env.share().join("CPTREE-vaultjob"))
        .status()
        .unwrap();
    assert!(status.success());
    let expected = find(&env.share(), "CPTREE-vaultjob");
    assert_eq!(expected.len(), 20_000 + 1000 + 40 + 1);
    let d = wait_status(
        &agent,
        "CPTREE",
        "every copied file tracked",
        Duration::from_secs(60),
        |d| d["local-files"].as_u64() == Some(expected.len() as u64),
    );
    assert_eq!(
        d["pending"], d["local-files"],
        "nothing is confirmed before the cloud says so"
    );

    run_ok([
        OsStr::new("seal"),
        env.share().join("CPTREE-vaultjob").as_os_str(),
    ]);
    let manifest =
        std::fs::read_to_string(env.share().join("CPTREE-vaultjob/CPTREE.manifest")).unwrap();
    let lines: BTreeSet<String> = manifest.lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        find(&env.share(), "CPTREE-vaultjob"),
        "the sealed manifest equals find's output"
    );
    // The watcher sees the manifest too.
    wait_status(
        &agent,
        "CPTREE",
        "the manifest tracked",
        crate::support::LONG,
        |d| d["local-files"].as_u64() == Some(expected.len() as u64 + 1),
    );
}

#[test]
fn pending_falls_to_zero_with_the_last_notification_and_rises_on_rewrite() {
    let env = Env::new("[reconcile]\nwait = \"200ms\"\n");
    let agent = env.start();
    let dir = env.share().join("PEND-vaultjob");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for name in ["a.bin", "b.bin", "sub/c.bin"] {
        std::fs::write(dir.join(name), format!("data of {name}")).unwrap();
    }
    run_ok([OsStr::new("seal"), dir.as_os_str()]);
    let lines: Vec<String> = std::fs::read_to_string(dir.join("PEND.manifest"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let d = wait_status(&agent, "PEND", "all local", crate::support::LONG, |d| {
        d["local-files"] == json!(lines.len())
    });
    assert_eq!(d["pending"], json!(lines.len()));

    let (last, rest) = lines.split_last().unwrap();
    for line in rest {
        assert_eq!(agent.post(&uploaded(&env, line).to_string()).0, 202);
    }
    let d = agent.status(Some("PEND"));
    assert_eq!(d["pending"], 1, "{d}");
    assert_eq!(d["pending-paths"], json!([last]));
    assert_eq!(agent.post(&uploaded(&env, last).to_string()).0, 202);
    let d = agent.status(Some("PEND"));
    assert_eq!(d["pending"], 0, "{d}");
    assert_eq!(d["pending-bytes"], 0);
    env.wait_for_events("PEND", 1, crate::support::LONG);

    // Rewritten after its notification (later mtime, new size): pending again.
    std::fs::write(dir.join("a.bin"), "a longer new version").unwrap();
    // A later mtime than the notification's, whatever the clock did.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(dir.join("a.bin"))
        .and_then(|f| f.set_modified(later))
        .unwrap();
    let d = wait_status(&agent, "PEND", "rewrite seen", crate::support::LONG, |d| {
        d["pending"] == 1
    });
    assert_eq!(d["pending-bytes"], 20);
    let out = Command::new(BIN)
        .args(["status", "--url", &agent.base, "--pending", "PEND"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PEND: 1 pending") && text.contains("PEND-vaultjob/a.bin"),
        "{text}"
    );
    // Its new upload confirms it again.
    assert_eq!(
        agent
            .post(&uploaded(&env, "PEND-vaultjob/a.bin").to_string())
            .0,
        202
    );
    assert_eq!(agent.status(Some("PEND"))["pending"], 0);

    // Deleting files and directories is seen too.
    std::fs::remove_dir_all(dir.join("sub")).unwrap();
    wait_status(&agent, "PEND", "deletion seen", crate::support::LONG, |d| {
        d["local-files"] == json!(lines.len() - 2)
    });
}

/// The gateway's notification for a path as it is now on the share, with
/// the file's mtime as its modification-time.
fn uploaded(env: &Env, line: &str) -> Value {
    let path = env.share().join(line);
    let meta = std::fs::metadata(&path).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = |secs: u64| {
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let key = if meta.is_dir() {
        format!("{line}/")
    } else {
        line.to_owned()
    };
    let mut event = crate::support::gateway_event(
        &key,
        if meta.is_dir() { 0 } else { meta.len() },
        &time(mtime + 2),
    );
    event["detail"]["modification-time"] = json!(time(mtime));
    event
}

#[test]
fn odd_names_round_trip_through_vault_manifest_and_reconcile() {
    let env = Env::new("[reconcile]\nwait = \"200ms\"\n");
    let agent = env.start();
    let src = env.dir.path().join("odd");
    let deep: String = (0..40).map(|i| format!("level {i}/")).collect();
    let names = [
        "with space.txt".to_string(),
        "ünïcödé/日本語 ファイル.bin".to_string(),
        "emoji 🚀/file (1) [copy] #2 & more.dat".to_string(),
        format!("{deep}deep file.txt"),
        "-leading-dash".to_string(),
    ];
    for n in &names {
        let p = src.join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, n.as_bytes()).unwrap();
    }
    let share = env.share();
    let out = run_ok([
        OsStr::new("vault"),
        OsStr::new("--source"),
        src.as_os_str(),
        OsStr::new("--share"),
        share.as_os_str(),
        OsStr::new("--set-id"),
        OsStr::new("ODD-names.1"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ODD-names.1");
    let manifest = std::fs::read_to_string(
        env.share()
            .join("ODD-names.1-vaultjob/ODD-names.1.manifest"),
    )
    .unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    for n in &names {
        assert!(
            lines.contains(&format!("ODD-names.1-vaultjob/{n}").as_str()),
            "{n} missing from the manifest"
        );
    }
    assert_eq!(
        lines.iter().copied().collect::<BTreeSet<_>>(),
        find(&env.share(), "ODD-names.1-vaultjob")
            .iter()
            .map(String::as_str)
            .collect()
    );
    wait_status(
        &agent,
        "ODD-names.1",
        "all tracked",
        crate::support::LONG,
        |d| d["local-files"] == json!(lines.len()),
    );
    let events: Vec<Value> = lines.iter().map(|l| uploaded(&env, l)).collect();
    assert_eq!(agent.post(&json!(events).to_string()).0, 202);
    let events = env.wait_for_events("ODD-names.1", 1, crate::support::LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    assert_eq!(agent.status(Some("ODD-names.1"))["pending"], 0);
}

#[test]
fn vault_and_gen_data_commands() {
    let env = Env::new("").with_share("watch = \"off\"");
    let data = env.dir.path().join("data");
    let share = env.share();
    run_ok(
        [
            OsStr::new("gen-data"),
            OsStr::new("--target"),
            data.as_os_str(),
        ]
        .into_iter()
        .chain(["--total", "2MiB", "--min", "10KiB", "--max", "200KiB"].map(OsStr::new)),
    );
    let out = run_ok(
        ["vault", "--jobs", "4", "--source"]
            .map(OsStr::new)
            .into_iter()
            .chain([data.as_os_str(), OsStr::new("--share"), share.as_os_str()]),
    );
    let set_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(set_id.len(), 16);
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&data)
        .arg(env.share().join(format!("{set_id}-vaultjob")))
        .output()
        .unwrap();
    // Only the manifest differs.
    assert_eq!(
        String::from_utf8_lossy(&diff.stdout).trim(),
        format!(
            "Only in {}: {set_id}.manifest",
            env.share().join(format!("{set_id}-vaultjob")).display()
        )
    );
    let again = Command::new(BIN)
        .args(["vault", "--set-id", &set_id, "--source"])
        .arg(&data)
        .arg("--share")
        .arg(env.share())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already used"));
    let missing = Command::new(BIN)
        .args(["vault", "--source", "/nonexistent/src", "--share"])
        .arg(env.share())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("source /nonexistent/src: does not exist")
    );
}

#[test]
fn poll_mode_tracks_files_and_auto_seal_writes_the_manifest() {
    let env =
        Env::new("").with_share("watch = \"poll\"\npoll_interval = \"200ms\"\nseal_after = \"1s\"");
    let agent = env.start();
    let dir = env.share().join("POLL-vaultjob");
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::write(dir.join("x/one.bin"), "1").unwrap();
    std::fs::write(dir.join("two.bin"), "22").unwrap();
    // Polling finds the files; a second later, quiet, the dataset is sealed.
    let manifest = dir.join("POLL.manifest");
    let start = Instant::now();
    while !manifest.exists() {
        assert!(
            start.elapsed() < crate::support::LONG,
            "no auto-seal:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(
        text,
        "POLL-vaultjob\nPOLL-vaultjob/x\nPOLL-vaultjob/POLL.manifest\nPOLL-vaultjob/two.bin\nPOLL-vaultjob/x/one.bin\n"
    );
    wait_status(&agent, "POLL", "polled", crate::support::LONG, |d| {
        d["local-files"] == 5
    });
    assert!(agent.logs().contains("auto-sealed"));
}
