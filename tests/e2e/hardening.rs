//! Hostile clients, hostile shares, storage faults and operator mistakes
//! never cost a notification or fake an outcome.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{BIN, Env, LONG, free_port, gateway_event, http_get, uploads_at, wait_until};

fn healthz(base: &str) -> (u16, String) {
    http_get(&format!("{base}/healthz")).expect("healthz answers")
}

#[test]
fn a_second_agent_on_one_state_dir_is_refused_naming_the_first() {
    let env = Env::new("");
    let first = env.start();
    // Same config (same state_dir), another port.
    let text = std::fs::read_to_string(env.config_path()).unwrap().replace(
        first.base.trim_start_matches("http://"),
        &format!("127.0.0.1:{}", free_port()),
    );
    let second = env.dir.path().join("second.toml");
    std::fs::write(&second, text).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&second)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "in use by another vault-agent (pid {})",
            first.child.id()
        )),
        "{stderr}"
    );
    assert_eq!(healthz(&first.base).0, 200);
}

#[test]
fn a_deleted_state_directory_turns_posts_and_health_to_503() {
    let env = Env::new("[reconcile]\nwait = \"1s\"\n");
    let agent = env.start();
    let event = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z").to_string();
    assert_eq!(agent.post(&event).0, 202);
    std::fs::remove_dir_all(env.dir.path().join("state")).unwrap();
    let (code, body) = agent.post(&event);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["retry"], true, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("was deleted"),
        "{body}"
    );
    let (code, body) = healthz(&agent.base);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store: "), "{body}");
}

#[test]
fn a_truncated_or_damaged_database_stops_start_up_naming_the_file() {
    let env = Env::new("");
    {
        let mut agent = env.start();
        let event = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z").to_string();
        assert_eq!(agent.post(&event).0, 202);
        agent.stop();
    }
    let db = env.dir.path().join("state/vault-agent.db");
    let start = || {
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(env.config_path())
            .output()
            .unwrap()
    };
    // Garbage over the pages after the header.
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 20_000, "{}", bytes.len());
    for b in &mut bytes[16_384..] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(env.dir.path().join("state/vault-agent.db-wal"));
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vault-agent.db") && stderr.contains("damaged"),
        "{stderr}"
    );

    std::fs::write(&db, b"").unwrap();
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vault-agent.db is damaged: the file is empty"),
        "{stderr}"
    );
}

#[test]
fn api_key_edges() {
    // An empty key is a config error, not an open door.
    let env = Env::new("").with_http("api_key = \"\"");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg({
            let _ = env.start_config();
            env.config_path()
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_key must not be empty"), "{stderr}");

    let env = Env::new("").with_http("api_key = \"s3cret\"");
    let agent = env.start();
    let event = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z").to_string();
    assert_eq!(agent.post_with(&event, &[("x-api-key", "")]).0, 401);
    assert_eq!(
        agent
            .post_with(&event, &[("authorization", "bearer s3cret")])
            .0,
        202
    );
    assert_eq!(
        agent
            .post_with(&event, &[("authorization", "BEARER s3cret")])
            .0,
        202
    );
    assert_eq!(agent.post_with(&event, &[("x-api-key", "nope")]).0, 401);
    wait_until("the refusal logged with its peer", LONG, || {
        agent
            .logs()
            .contains("refused a request without the right API key")
            && agent.logs().contains("peer=127.0.0.1:")
    });
}

#[test]
fn idle_connections_never_lock_out_health_or_posts() {
    // 1,100 idle connections at systemd's default soft limit of 1,024
    // descriptors locked out every client before.
    // This test process holds those 1,100 sockets itself.
    crate::support::set_soft_fd_limit(u64::MAX);
    let env = Env::new("").with_http("max_connections = 1000\nheader_read_timeout = \"2s\"");
    let agent = env.start_with_soft_fd_limit(1024);
    let addr = agent.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(&addr).expect("connect"));
    }
    let event = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z").to_string();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let (code, body) = agent.post(&event);
        assert_eq!(code, 202, "{body}");
        best = best.min(started.elapsed());
    }
    eprintln!("POST with 1,100 idle connections open: best of 5 {best:?}");
    assert!(best < Duration::from_millis(100), "{best:?}");
    assert_eq!(healthz(&agent.base).0, 200);
    // A client that sends half a header is cut off by the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    drop(idle);
}

#[test]
fn a_share_mounted_late_is_watched_without_a_restart() {
    let env = Env::new("");
    std::fs::remove_dir_all(env.share()).unwrap();
    let agent = env.start_unhealthy_ok();
    let (code, body) = healthz(&agent.base);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("is not mounted"), "{body}");
    assert_eq!(agent.status(None)["share"]["mounted"], false);

    std::fs::create_dir_all(env.share()).unwrap();
    wait_until("healthy once the share appears", LONG, || {
        healthz(&agent.base).0 == 200
    });
    env.write_dataset("LATE", &["a.bin".to_string()]);
    wait_until("the watcher sees the new dataset", LONG, || {
        http_get(&format!("{}/status/LATE", agent.base)).is_some_and(|(c, b)| {
            c == 200
                && serde_json::from_str::<Value>(&b).unwrap()["local-files"].as_u64() >= Some(2)
        })
    });
    assert_eq!(agent.status(None)["share"]["mounted"], true);
}

#[test]
fn links_on_the_share_are_never_followed() {
    let env = Env::new("").with_share("seal_after = \"1s\"");
    let agent = env.start();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("private.txt"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, env.share().join("EVIL-vaultjob")).unwrap();
    // A real dataset next to it is seen and auto-sealed.
    env.write_dataset("REAL", &["a.bin".to_string()]);
    std::fs::remove_file(env.share().join("REAL-vaultjob/REAL.manifest")).unwrap();
    wait_until("the real dataset auto-sealed", LONG, || {
        env.share().join("REAL-vaultjob/REAL.manifest").exists()
    });
    // A dataset written after that one is sealed by a later pass, which
    // looked at the link again.
    env.write_dataset("LATER", &["b.bin".to_string()]);
    std::fs::remove_file(env.share().join("LATER-vaultjob/LATER.manifest")).unwrap();
    wait_until("a later pass auto-sealed another dataset", LONG, || {
        env.share().join("LATER-vaultjob/LATER.manifest").exists()
    });
    assert!(
        !outside.join("EVIL.manifest").exists(),
        "auto-seal wrote through the link"
    );
    let status = http_get(&format!("{}/status/EVIL", agent.base)).unwrap();
    assert_eq!(status.0, 404, "{}", status.1);
    // Manual seal refuses the link too.
    let out = Command::new(BIN)
        .arg("seal")
        .arg(env.share().join("EVIL-vaultjob"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"));
    assert!(!outside.join("EVIL.manifest").exists());

    // vault refuses a source that holds its own manifest, copying nothing.
    let out = vault(
        &env,
        "S",
        &["S.manifest"],
        ["--share".as_ref(), env.share().as_ref()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds S.manifest at its root"));
    assert!(!env.share().join("S-vaultjob").exists());
}

#[test]
fn check_config_runs_every_check_of_run_without_side_effects() {
    let env = Env::new("");
    let share = env.share();
    let check = |text: &str| {
        let path = env.dir.path().join("check.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) =
        check("[agent]\nstate_dir = \"share/state\"\n[share]\npath = \"share\"\n");
    assert!(
        !ok && stderr.contains("inside the share"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains("OK"), "{stdout}");
    assert!(
        !share.join("state").exists(),
        "check-config created the state dir"
    );

    let (ok, stdout, stderr) =
        check("[[sink]]\nkind = \"file\"\npath = \"/proc/vault-agent-e2e/events.jsonl\"\n");
    assert!(!ok && stderr.contains("not writable"), "{stdout}{stderr}");

    let (ok, stdout, stderr) = check(
        "[reconcile]\npolicy = \"exact-match\"\n[[reconcile.route]]\nset_ids = \"GEN*\"\npolicy = \"size-verified\"\n",
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("route      set-ids GEN* -> policy size-verified"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}");

    // `run` refuses the same state_dir before creating anything.
    let path = env.dir.path().join("run.toml");
    std::fs::write(
        &path,
        "[agent]\nstate_dir = \"share/state\"\n[share]\npath = \"share\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!share.join("state").exists(), "run created the state dir");
}

#[test]
fn status_is_paged_and_every_mode_honours_json() {
    let env = Env::new("");
    let agent = env.start();
    let events: Vec<Value> = (0..250)
        .map(|i| gateway_event(&format!("P{i:03}-vaultjob/f"), 1, "2021-05-01T10:00:00Z"))
        .collect();
    assert_eq!(agent.post(&json!(events).to_string()).0, 202);
    let page = agent.status(None);
    assert_eq!(page["datasets"].as_array().unwrap().len(), 100);
    assert_eq!(page["next"], "P099");
    assert_eq!(page["totals"]["collecting"], 250);
    let (_, body) = http_get(&format!("{}/status?limit=100000&after=P200", agent.base)).unwrap();
    let last: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(last["datasets"].as_array().unwrap().len(), 49);
    assert_eq!(last["next"], Value::Null);

    let status = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["status", "--url", &agent.base])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = status(&[]);
    assert_eq!(
        table.lines().filter(|l| l.starts_with('P')).count(),
        250,
        "{table}"
    );
    let all: Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(all["datasets"].as_array().unwrap().len(), 250);
    let text = status(&["--set-id", "P007"]);
    assert!(
        text.starts_with("set-id") && text.contains("P007"),
        "{text}"
    );
    let one: Value = serde_json::from_str(&status(&["--set-id", "P007", "--json"])).unwrap();
    assert_eq!(one["set-id"], "P007");
    let pending: Value = serde_json::from_str(&status(&["--pending", "P007", "--json"])).unwrap();
    assert_eq!(pending["pending"], 0);

    // A closed pipe ends the output quietly.
    let mut child = Command::new(BIN)
        .args(["status", "--url", &agent.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn user_errors_print_no_backtrace_and_vault_takes_the_share_from_the_config() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/agent.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    assert!(
        !stderr.contains("Stack backtrace") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );

    let env = Env::new("");
    let _ = env.start_config();
    let out = vault(
        &env,
        "CFG",
        &[],
        ["--config".as_ref(), env.config_path().as_ref()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.share().join("CFG-vaultjob/CFG.manifest").exists());
    let _ = uploads_at;
}

/// Runs `vault --set-id SET_ID` on a new source holding `data.bin` and the
/// files `extra` at its root, into `target` (`--share DIR` or `--config
/// FILE`).
fn vault(
    env: &Env,
    set_id: &str,
    extra: &[&str],
    target: [&std::ffi::OsStr; 2],
) -> std::process::Output {
    let source = env.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("data.bin"), "d").unwrap();
    for name in extra {
        std::fs::write(source.join(name), "forged\n").unwrap();
    }
    Command::new(BIN)
        .args(["vault", "--set-id", set_id, "--source"])
        .arg(&source)
        .args(target)
        .output()
        .unwrap()
}

/// The agent's resident memory, in bytes.
fn rss(agent: &crate::support::AgentProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Observed: request bodies were read before the API key was checked; 96
/// connections without a key grew the agent's RSS by 1.3 GB. Now a body is
/// read only once the key is right, and all bodies being read share one
/// budget, whoever sends them.
#[test]
fn bodies_are_read_only_with_the_key_and_within_one_budget() {
    let env = Env::new("").with_http("api_key = \"s3cret\"");
    let agent = env.start();
    let addr = agent.base.trim_start_matches("http://").to_owned();
    let before = rss(&agent);
    let chunk = vec![b'x'; 1 << 20];
    // Without the key: 96 connections announce 16 MiB bodies and send 4 MiB
    // each (the agent answers 401 and may stop reading).
    let mut refused = 0;
    let clients: Vec<_> = (0..96)
        .map(|_| {
            let (addr, chunk) = (addr.clone(), chunk.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let head = format!(
                    "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    16 << 20
                );
                let _ = s.write_all(head.as_bytes());
                for _ in 0..4 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let mut answer = [0u8; 64];
                let n = s.read(&mut answer).unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).contains(" 401 ")
            })
        })
        .collect();
    for c in clients {
        refused += usize::from(c.join().unwrap());
    }
    assert_eq!(refused, 96, "every keyless request is refused");
    let grown = rss(&agent).saturating_sub(before);
    eprintln!(
        "96 keyless requests announcing 16 MiB: RSS grew {} KiB",
        grown >> 10
    );
    assert!(
        grown < 64 << 20,
        "keyless bodies grew the agent by {} MiB",
        grown >> 20
    );

    // With the key, 24 bodies of unknown length at once: the budget (128 MiB)
    // holds 8 of them; the others are told to retry at once.
    let streams: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(
                b"POST /events HTTP/1.1\r\nHost: x\r\nx-api-key: s3cret\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                // A chunk of 1 MiB each, then silence: an admitted body is
                // still being read when the others are answered.
                let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
                let _ = s.write_all(&chunk);
                let _ = s.write_all(b"\r\n");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut answer = [0u8; 64];
                let busy = s
                    .read(&mut answer)
                    .is_ok_and(|n| String::from_utf8_lossy(&answer[..n]).contains(" 503 "));
                (busy, s)
            })
        })
        .collect();
    let answered: Vec<(bool, TcpStream)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let busy = answered.iter().filter(|(b, _)| *b).count();
    assert_eq!(busy, 16, "8 bodies fit the budget, 16 are refused");
    let grown = rss(&agent).saturating_sub(before);
    eprintln!(
        "24 bodies at once, 8 admitted: RSS grew {} KiB",
        grown >> 10
    );
    assert!(
        grown < 256 << 20,
        "bodies grew the agent by {} MiB",
        grown >> 20
    );
    assert_eq!(healthz(&agent.base).0, 200);
}
