//! Reconcile policies as WebAssembly components, end to end: the bundled
//! policies on reference-shaped datasets, routing, components that
//! misbehave, and replacing a plugin file while the agent runs.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{AgentProcess, Env, file_names, plugin_fixture};

/// A test component built by the agent's build script from plugins/fixtures.
/// Posts every manifest line's upload (plus `extra` keys) for a dataset.
fn upload_all(env: &Env, agent: &AgentProcess, lines: &[String], extra: &[Value]) {
    let mut events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    events.extend(extra.iter().cloned());
    agent.post_events(&events);
}

fn nfs_file(set_id: &str) -> Value {
    crate::support::gateway_event(
        &format!("{set_id}-vaultjob/d0/.nfs000000001234"),
        0,
        "2021-05-01T10:00:00Z",
    )
}

#[test]
fn bundled_policies_on_reference_datasets_and_routing() {
    let env = Env::new(
        "[reconcile]\nwait = \"200ms\"\npolicy = \"exact-match\"\n\
         [[reconcile.route]]\nset_ids = \"IGN*\"\npolicy = \"ignore-patterns\"\n\
         [reconcile.route.policy_config]\npatterns = [\".nfs*\", \"*.tmp\", \".DS_Store\"]\n\
         [[reconcile.route]]\nset_ids = \"SIZE*\"\npolicy = \"size-verified\"\n",
    );
    let agent = env.start();

    // An NFS silly-rename file blocks exact-match...
    let exact = env.write_dataset("EXACT0000000001", &file_names(12));
    upload_all(&env, &agent, &exact, &[nfs_file("EXACT0000000001")]);
    // ...and passes ignore-patterns, which also ignores listed temp files.
    let mut names = file_names(12);
    names.push("d1/scratch.tmp".into());
    let ignoring = env.write_dataset("IGN00000000001", &names);
    let without_tmp: Vec<String> = ignoring
        .iter()
        .filter(|l| !l.ends_with(".tmp"))
        .cloned()
        .collect();
    upload_all(&env, &agent, &without_tmp, &[nfs_file("IGN00000000001")]);
    // size-verified: right sizes pass, a wrong size blocks.
    let sized = env.write_dataset("SIZE0000000001", &file_names(8));
    upload_all(&env, &agent, &sized, &[]);
    let wrong = env.write_dataset("SIZE0000000002", &file_names(8));
    let mut events: Vec<Value> = wrong.iter().map(|l| env.upload_for(l)).collect();
    let victim = events
        .iter_mut()
        .find(|e| {
            e["detail"]["object-key"]
                .as_str()
                .unwrap()
                .ends_with(".dat")
        })
        .unwrap();
    victim["detail"]["object-size"] = json!(1);
    assert_eq!(agent.post(&json!(events).to_string()).0, 202);
    // The same wrong size under exact-match (names only) passes.
    let names_only = env.write_dataset("EXACT0000000002", &file_names(8));
    let mut events: Vec<Value> = names_only.iter().map(|l| env.upload_for(l)).collect();
    events[3]["detail"]["object-size"] = json!(1);
    assert_eq!(agent.post(&json!(events).to_string()).0, 202);

    env.wait_for_events("IGN00000000001", 1, crate::support::LONG);
    env.wait_for_events("SIZE0000000001", 1, crate::support::LONG);
    env.wait_for_events("EXACT0000000002", 1, crate::support::LONG);
    crate::support::wait_rechecks(&agent, 2);
    assert!(
        env.events_for("EXACT0000000001").is_empty(),
        "exact-match must block on the .nfs file"
    );
    assert!(
        env.events_for("SIZE0000000002").is_empty(),
        "size-verified must block on the wrong size"
    );
    let blocked = agent.status(Some("EXACT0000000001"));
    assert_eq!(
        blocked["unexpected-paths"],
        json!(["EXACT0000000001-vaultjob/d0/.nfs000000001234"]),
        "{blocked}"
    );
    let mismatched = agent.status(Some("SIZE0000000002"));
    assert_eq!(mismatched["mismatched"], 1, "{mismatched}");
    assert_eq!(mismatched["mismatched-paths"].as_array().unwrap().len(), 1);
    let ign = agent.status(Some("IGN00000000001"));
    assert_eq!(ign["state"], "succeeded");
    assert_eq!(ign["ignored"], 1, "{ign}");
    assert_eq!(
        ign["manifest-entries"].as_u64(),
        Some(ignoring.len() as u64 - 1),
        "the .tmp line is not expected"
    );
}

/// Sleeping is a host call the epoch deadline cannot interrupt: a policy
/// that slept forever once wedged the engine (no POST answered, no
/// deadline kept, SIGTERM ignored). Under the plugins' frozen clock a
/// sleep now ends at once, so a sleep forever is a loop the deadline stops.
#[test]
fn sleeping_policies_neither_wedge_the_agent_nor_outlive_their_timeout() {
    let chaos = plugin_fixture("fixture_chaos");
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\niterations = 300\nplugin_timeout = \"100ms\"\n\
         [[reconcile.route]]\nset_ids = \"NAP*\"\npolicy = \"{c}\"\n\
         policy_config = {{ mode = \"sleep\", hook = \"on-upload\" }}\n\
         [[reconcile.route]]\nset_ids = \"COMA*\"\npolicy = \"{c}\"\n\
         policy_config = {{ mode = \"sleep-forever\" }}\n",
        c = chaos.display()
    ));
    let mut agent = env.start();
    // A policy sleeping forever in `decide`, then one sleeping 3 s in every
    // `on-upload`, then a dataset under the default policy.
    for set_id in ["COMA0000000001", "NAP0000000001", "GOOD0000000001"] {
        let lines = env.write_dataset(set_id, &file_names(5));
        upload_all(&env, &agent, &lines, &[]);
    }
    for set_id in ["NAP0000000001", "GOOD0000000001"] {
        let events = env.wait_for_events(set_id, 1, Duration::from_secs(60));
        assert_eq!(
            events[0]["detail-type"], "File Upload Reconciliation Successful",
            "{set_id}"
        );
    }
    crate::support::wait_until(
        "the endless sleep to be stopped",
        Duration::from_secs(60),
        || {
            agent.status(Some("COMA0000000001"))["note"]
                .as_str()
                .is_some_and(|n| n.contains("did not return within 100ms"))
        },
    );
    assert_eq!(
        crate::support::http_get(&format!("{}/healthz", agent.base))
            .unwrap()
            .0,
        200
    );
    agent.stop();
}

/// A policy taking tens of milliseconds per call once held up every
/// dataset: each POST waited for every policy call of its batch (another
/// dataset's POST waited 6.5 s). Now a policy's calls past its time in a
/// batch wait for a later one, so other datasets go first.
#[test]
fn a_slow_policy_delays_only_its_own_datasets() {
    let chaos = plugin_fixture("fixture_chaos");
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\niterations = 3000\nplugin_timeout = \"10s\"\n\
         [[reconcile.route]]\nset_ids = \"SLOW*\"\npolicy = \"{}\"\n\
         policy_config = {{ mode = \"slow\", hook = \"on-upload\", spin = \"30000000\" }}\n",
        chaos.display()
    ));
    let agent = env.start();
    let slow = env.write_dataset("SLOW0000000001", &file_names(150));
    upload_all(&env, &agent, &slow, &[]);
    let good = env.write_dataset("GOOD0000000001", &file_names(5));
    upload_all(&env, &agent, &good, &[]);
    env.wait_for_events("GOOD0000000001", 1, Duration::from_secs(60));
    let waiting = agent.status(Some("SLOW0000000001"));
    assert!(
        waiting["unjudged"].as_u64().unwrap() > 0,
        "the slow policy's uploads should still be waiting: {waiting}"
    );
    // The slow dataset is judged in the following batches, and completes.
    let events = env.wait_for_events("SLOW0000000001", 1, Duration::from_secs(300));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let status = agent.status(None);
    let slow_policy = status["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fixture_chaos")
        .unwrap();
    assert!(
        slow_policy["calls"].as_u64().unwrap() >= slow.len() as u64,
        "{slow_policy}"
    );
}

/// A policy whose `entry-matches` always timed out while its `on-upload`
/// succeeded was never quarantined: each success reset the count of
/// failures. Failures are now counted per hook.
#[test]
fn a_hook_that_keeps_failing_is_quarantined_though_another_succeeds() {
    let chaos = plugin_fixture("fixture_chaos");
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\niterations = 3000\nplugin_timeout = \"50ms\"\n\
         [[reconcile.route]]\nset_ids = \"FLAKY*\"\npolicy = \"{}\"\n\
         policy_config = {{ mode = \"loop\", hook = \"entry-matches\" }}\n",
        chaos.display()
    ));
    let agent = env.start();
    let flaky = env.write_dataset("FLAKY000000001", &file_names(8));
    upload_all(&env, &agent, &flaky, &[]);
    crate::support::wait_until(
        "the failing plugin to be quarantined",
        Duration::from_secs(120),
        || {
            agent.status(None)["policies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fixture_chaos" && p["state"] == "quarantined")
        },
    );
    let note = agent.status(Some("FLAKY000000001"))["note"].clone();
    assert!(
        note.as_str().is_some_and(|n| n.contains("entry-matches")),
        "{note}"
    );
    // Other datasets are unaffected.
    let good = env.write_dataset("GOOD0000000001", &file_names(5));
    upload_all(&env, &agent, &good, &[]);
    let events = env.wait_for_events("GOOD0000000001", 1, Duration::from_secs(60));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    assert!(env.events_for("FLAKY000000001").is_empty());
}

/// Printing once trapped (a 4 KiB pipe never drained: a policy printing
/// 2 KB per call failed every third call), and what a policy returned was
/// kept whole (1 MB reasons grew memory, `/status` and the log).
#[test]
fn printing_and_long_answers_cost_the_agent_a_bounded_amount() {
    let chaos = plugin_fixture("fixture_chaos");
    let route = |glob: &str, mode: &str, hook: &str| {
        format!(
            "[[reconcile.route]]\nset_ids = \"{glob}\"\npolicy = \"{}\"\n\
             policy_config = {{ mode = \"{mode}\", hook = \"{hook}\" }}\n",
            chaos.display()
        )
    };
    let env = Env::new(
        &[
            "[reconcile]\nwait = \"200ms\"\niterations = 3000\n".to_string(),
            route("CHATTY*", "print", "on-upload"),
            route("LOUD*", "verbose", "decide"),
            route("REJECTY*", "verbose", "on-upload"),
        ]
        .concat(),
    );
    let agent = env.start();
    for set_id in ["CHATTY00000001", "LOUD0000000001", "REJECTY0000001"] {
        let lines = env.write_dataset(set_id, &file_names(12));
        upload_all(&env, &agent, &lines, &[]);
    }
    let events = env.wait_for_events("CHATTY00000001", 1, Duration::from_secs(60));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    assert!(
        !agent.logs().contains("policy call failed"),
        "printing must not fail a call"
    );
    for set_id in ["LOUD0000000001", "REJECTY0000001"] {
        crate::support::wait_until("a note", Duration::from_secs(60), || {
            agent.status(Some(set_id))["note"].is_string()
        });
        let note = agent.status(Some(set_id))["note"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(note.contains("because because"), "{note}");
        assert!(note.len() < 1300, "{set_id}: a {} byte note", note.len());
    }
    let (_, body) = crate::support::http_get(&format!("{}/status", agent.base)).unwrap();
    assert!(body.len() < 64 * 1024, "/status is {} bytes", body.len());
    let log = std::fs::metadata(&agent.log).unwrap().len();
    assert!(log < 512 * 1024, "the log is {log} bytes");
}

/// Two routes loading one `.wasm` with different settings once shared one
/// health entry (keyed by name), overwriting each other's errors; and a
/// policy overriding the exact-match rule did so silently.
#[test]
fn each_route_reports_its_own_health_and_overrides_are_logged() {
    let chaos = plugin_fixture("fixture_chaos");
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\niterations = 3000\n\
         [[reconcile.route]]\nset_ids = \"TRAPA*\"\npolicy = \"{c}\"\n\
         policy_config = {{ mode = \"trap\", hook = \"on-upload\" }}\n\
         [[reconcile.route]]\nset_ids = \"LENIENT*\"\npolicy = \"{c}\"\n\
         policy_config = {{ mode = \"lenient\" }}\n",
        c = chaos.display()
    ));
    let agent = env.start();
    let trapping = env.write_dataset("TRAPA000000001", &file_names(3));
    upload_all(&env, &agent, &trapping, &[]);
    // One data file never arrives; the lenient policy says complete anyway.
    let lenient = env.write_dataset("LENIENT0000001", &file_names(4));
    let sent: Vec<String> = lenient
        .iter()
        .filter(|l| !l.ends_with("file-0002.dat"))
        .cloned()
        .collect();
    assert_eq!(sent.len() + 1, lenient.len());
    upload_all(&env, &agent, &sent, &[]);
    let events = env.wait_for_events("LENIENT0000001", 1, Duration::from_secs(60));
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let logs = agent.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("declared the dataset complete"))
        .unwrap_or_else(|| panic!("no override line in\n{logs}"));
    assert!(
        line.contains("although 1 manifest entries are missing"),
        "{line}"
    );
    assert!(line.contains("fixture_chaos"), "{line}");

    crate::support::wait_until("the trap to be reported", Duration::from_secs(60), || {
        agent.status(None)["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["route"] == "TRAPA*" && !p["last-error"].is_null())
    });
    let status = agent.status(None);
    let routes: Vec<&Value> = status["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "fixture_chaos")
        .collect();
    assert_eq!(routes.len(), 2, "{routes:?}");
    let lenient_health = routes.iter().find(|p| p["route"] == "LENIENT*").unwrap();
    assert!(lenient_health["last-error"].is_null(), "{lenient_health}");
}

#[test]
fn misbehaving_components_fail_closed_and_the_agent_keeps_going() {
    let env = Env::new("");
    let junk = env.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not WebAssembly").unwrap();
    // Past plugin_max_size: refused before it is read whole or compiled.
    let big = env.dir.path().join("big.wasm");
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.resize(2 << 20, 0);
    std::fs::write(&big, bytes).unwrap();
    let route = |glob: &str, path: &PathBuf, settings: &str| {
        format!(
            "[[reconcile.route]]\nset_ids = \"{glob}\"\npolicy = \"{}\"\n{settings}",
            path.display()
        )
    };
    let chaos = plugin_fixture("fixture_chaos");
    let env = Env {
        extra_config: [
            "[reconcile]\nwait = \"200ms\"\niterations = 15\nplugin_timeout = \"50ms\"\nplugin_memory_mb = 32\nplugin_max_size = \"1MiB\"\n".to_string(),
            route("LOOP*", &chaos, "policy_config = { mode = \"loop\" }\n"),
            route("BOMB*", &chaos, "policy_config = { mode = \"bomb\" }\n"),
            route("TRAP*", &chaos, "policy_config = { mode = \"trap\", hook = \"on-upload\" }\n"),
            route("INIT*", &chaos, "policy_config = { mode = \"trap\", hook = \"init\" }\n"),
            route("MISS*", &plugin_fixture("fixture_no_policy"), ""),
            route("VERS*", &plugin_fixture("fixture_wrong_version"), ""),
            route("JUNK*", &junk, ""),
            route("BIG*", &big, ""),
        ]
        .concat(),
        ..env
    };
    let agent = env.start();
    let bad = [
        "LOOP", "BOMB", "TRAP", "INIT", "MISS", "VERS", "JUNK", "BIG",
    ];
    for prefix in bad {
        let set_id = format!("{prefix}0000000001");
        let lines = env.write_dataset(&set_id, &file_names(5));
        upload_all(&env, &agent, &lines, &[]);
    }
    let good = env.write_dataset("GOOD0000000001", &file_names(5));
    upload_all(&env, &agent, &good, &[]);
    env.wait_for_events("GOOD0000000001", 1, crate::support::LONG);
    assert_eq!(
        env.events_for("GOOD0000000001")[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    assert_eq!(
        crate::support::http_get(&format!("{}/healthz", agent.base))
            .unwrap()
            .0,
        200
    );

    // Each broken policy's dataset shows its error, then times out (3 s).
    let expected = [
        ("LOOP", "did not return within 50ms"),
        ("BOMB", "ran out of memory (limit 32 MiB)"),
        ("TRAP", "chaos: trap on purpose"),
        ("INIT", "init failed"),
        ("MISS", "missing export `vault:reconcile/policy`"),
        (
            "VERS",
            "built for vault:reconcile@0.9.0, but this agent supports vault:reconcile@0.2.0, vault:reconcile@0.1.0 only",
        ),
        ("JUNK", "not a WebAssembly file"),
        (
            "BIG",
            "larger than [reconcile] plugin_max_size (1048576 bytes)",
        ),
    ];
    let status = agent.status(None);
    for (prefix, message) in expected {
        let set_id = format!("{prefix}0000000001");
        let d = status["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["set-id"] == set_id.as_str())
            .unwrap();
        assert_ne!(d["state"], "succeeded", "{d}");
        let note = d["note"].as_str().unwrap_or_default();
        assert!(
            note.contains(message),
            "{prefix}: note {note:?} should contain {message:?}"
        );
    }
    let policies = status["policies"].as_array().unwrap();
    let junk_health = policies.iter().find(|p| p["name"] == "junk").unwrap();
    assert_eq!(junk_health["state"], "broken", "{junk_health}");
    for prefix in bad {
        let events = env.wait_for_events(&format!("{prefix}0000000001"), 1, crate::support::LONG);
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0]["detail-type"], "File Upload Reconciliation Timeout",
            "{prefix}"
        );
    }
    let logs = agent.logs();
    assert!(
        logs.contains("quarantined"),
        "a repeatedly failing plugin is quarantined"
    );
    // Still reconciling new datasets after all that.
    let later = env.write_dataset("GOOD0000000002", &file_names(3));
    upload_all(&env, &agent, &later, &[]);
    env.wait_for_events("GOOD0000000002", 1, crate::support::LONG);
}

/// Under the default config (re-checks every 30 s) a replaced file once
/// took effect only at the next re-check; it is now compiled off the engine
/// thread and in effect about a second after the swap.
#[test]
fn replacing_the_plugin_file_is_picked_up_without_a_restart() {
    let env = Env::new("");
    let plugin = env.dir.path().join("policy.wasm");
    std::fs::write(&plugin, b"not yet").unwrap();
    let env = Env {
        extra_config: format!("[reconcile]\npolicy = \"{}\"\n", plugin.display()),
        ..env
    };
    let agent = env.start();
    let lines = env.write_dataset("RELOAD00000001", &file_names(4));
    upload_all(&env, &agent, &lines, &[]);
    // The broken plugin has been asked (its error is the dataset's note)...
    let note = || {
        agent.status(Some("RELOAD00000001"))["note"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    crate::support::wait_until("the broken plugin's error", Duration::from_secs(60), || {
        note().contains("not a WebAssembly file")
    });
    // ...and gave no success.
    assert!(
        env.events_for("RELOAD00000001").is_empty(),
        "a broken plugin never gives success"
    );

    // Swap in a working component (write + rename, as a deploy would).
    let tmp = env.dir.path().join("policy.wasm.new");
    std::fs::copy(plugin_fixture("exact_match"), &tmp).unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    // Well before the first re-check (30 s after start).
    env.wait_for_events("RELOAD00000001", 1, crate::support::LONG);
    assert!(agent.logs().contains("reloaded"));
}

#[test]
fn plugin_new_builds_with_one_command_and_plugin_test_judges_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = crate::support::BIN;
    crate::support::run_ok(
        ["plugin", "new", "skip-nfs", "--dir"]
            .map(std::ffi::OsStr::new)
            .into_iter()
            .chain([dir.path().as_os_str()]),
    );
    let root = dir.path().join("skip-nfs");
    // The one command a plugin author runs (the scaffold pins the target).
    let built =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet"])
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .unwrap();
    assert!(built.success());
    let wasm = root.join("target/wasm32-wasip2/release/skip_nfs.wasm");
    assert!(wasm.exists());
    // Its unit tests run with plain `cargo test` (in the agent's sandbox:
    // the scaffold names this binary as cargo's runner). That once failed,
    // trying to execute a .wasm.
    let tested =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--quiet"])
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap();
    let said = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success() && said.contains("1 passed"),
        "{said}{}",
        String::from_utf8_lossy(&tested.stderr)
    );

    let manifest = dir.path().join("m.txt");
    std::fs::write(
        &manifest,
        "P-vaultjob\nP-vaultjob/a.bin\nP-vaultjob/P.manifest\n",
    )
    .unwrap();
    let events: Vec<String> = [
        ("P-vaultjob/", 0),
        ("P-vaultjob/a.bin", 5),
        ("P-vaultjob/.nfs0042", 1),
        ("P-vaultjob/P.manifest", 9),
    ]
    .iter()
    .map(|(k, s)| crate::support::gateway_event(k, *s, "2021-05-01T10:00:00Z").to_string())
    .collect();
    let events_path = dir.path().join("e.jsonl");
    std::fs::write(&events_path, events.join("\n")).unwrap();
    let run = |policy: &std::path::Path, extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["plugin", "test", "--json", "--policy"])
            .arg(policy)
            .arg("--manifest")
            .arg(&manifest)
            .arg("--events")
            .arg(&events_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&wasm, &["--set", "ignore_suffixes=.nfs0042"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "complete");
    assert_eq!(report["ignored"], 1);
    assert_eq!(
        report["logs"],
        json!(["debug: ignoring P-vaultjob/.nfs0042"])
    );
    assert!(
        report["calls"].as_u64().unwrap() > 0 && report["peak-memory-bytes"].as_u64().unwrap() > 0
    );

    let out = run(&wasm, &[]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["unexpected"], json!(["P-vaultjob/.nfs0042"]));

    let out = run(&wasm, &["--set", "colour=blue"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown setting `colour`; known: ignore_suffixes")
    );
}

/// Stumbles of a first-time plugin author, each once a dead end: the
/// scaffold's sample dataset, an events file as a JSON array, a missing
/// manifest upload, an unknown policy name, a name cargo refuses.
#[test]
fn plugin_test_and_new_guide_a_first_time_author() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::support::BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let refused = run(&["plugin", "new", "123"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("start with a letter"),
        "{}",
        text(&refused)
    );
    assert!(!dir.path().join("123").exists());

    // The scaffold's sample: a manifest and its events, complete as is.
    let made = run(&["plugin", "new", "first-policy", "--dir", "."]);
    assert!(made.status.success(), "{}", text(&made));
    let sample = dir.path().join("first-policy/sample");
    let manifest = sample.join("SAMPLE0000000001.manifest");
    let events = sample.join("events.jsonl");
    let test = |policy: &str, events: &std::path::Path| {
        run(&[
            "plugin",
            "test",
            "--policy",
            policy,
            "--manifest",
            manifest.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ])
    };
    let out = test("exact-match", &events);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("complete"), "{}", text(&out));

    // The same events as the JSON array `POST /events` takes.
    let lines: Vec<Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let array = dir.path().join("events.json");
    std::fs::write(&array, serde_json::to_string_pretty(&lines).unwrap()).unwrap();
    let out = test("exact-match", &array);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Without the manifest's own upload: said at once, not after a wait.
    let without: Vec<String> = lines
        .iter()
        .filter(|e| !crate::support::is_manifest_upload(e))
        .map(Value::to_string)
        .collect();
    let partial = dir.path().join("partial.jsonl");
    std::fs::write(&partial, without.join("\n")).unwrap();
    let out = test("exact-match", &partial);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "holds no upload of the manifest SAMPLE0000000001-vaultjob/SAMPLE0000000001.manifest"
        ),
        "{}",
        text(&out)
    );

    let out = test("exact-macth", &events);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("the bundled ones are exact-match, ignore-patterns, marker, size-verified"),
        "{}",
        text(&out)
    );
}

/// Compiling is bounded: a component whose compile runs past
/// `plugin_compile_timeout` or over `plugin_compile_memory_mb` is refused
/// with a clear note (the compile runs in a child process, so the agent's
/// own memory and threads are not at stake), and other datasets go on.
#[test]
fn compiling_a_plugin_is_bounded_in_time_and_memory() {
    let chaos = plugin_fixture("fixture_chaos");
    for (limit, message) in [
        (
            "plugin_compile_timeout = \"1ms\"",
            "compiling took longer than 1ms and was stopped",
        ),
        (
            "plugin_compile_memory_mb = 1",
            "its memory is limited to 1 MiB",
        ),
    ] {
        let env = Env::new(&format!(
            "[reconcile]\nwait = \"200ms\"\niterations = 3000\npolicy = \"exact-match-native\"\n{limit}\n\
             [[reconcile.route]]\nset_ids = \"HEAVY*\"\npolicy = \"{}\"\n\
             policy_config = {{ mode = \"trap\" }}\n",
            chaos.display()
        ));
        let agent = env.start();
        let heavy = env.write_dataset("HEAVY000000001", &file_names(3));
        upload_all(&env, &agent, &heavy, &[]);
        let good = env.write_dataset("GOOD0000000001", &file_names(3));
        upload_all(&env, &agent, &good, &[]);
        env.wait_for_events("GOOD0000000001", 1, Duration::from_secs(60));
        let note = agent.status(Some("HEAVY000000001"))["note"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(note.contains("does not compile"), "{limit}: {note}");
        assert!(note.contains(message), "{limit}: {note}");
    }
}
