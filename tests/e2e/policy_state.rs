//! Plugin interface 0.2: the policy state a plugin keeps per dataset lives
//! in the store, so it survives agent restarts, plugin reloads and traps;
//! and components built against 0.1.0 keep loading.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{AgentProcess, Env, file_names, plugin_fixture, run_ok, wait_until};

fn post(env: &Env, agent: &AgentProcess, lines: &[&String]) {
    let events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    agent.post_events(&events);
}

fn policy_state_text(agent: &AgentProcess, set_id: &str) -> Option<String> {
    agent.status(Some(set_id))["policy-state"]["text"]
        .as_str()
        .map(str::to_owned)
}

/// "Complete when every manifest entry is uploaded, ignoring junk files,
/// and only once `_SUCCESS` was uploaded": written with instance memory,
/// the marker was forgotten at a restart and the dataset timed out. The
/// bundled `marker` policy keeps it in the dataset's state.
#[test]
fn the_marker_is_remembered_across_a_reload_and_a_restart() {
    let env = Env::new("");
    // A plugin file of its own, so it can be replaced while the agent runs.
    let plugin = env.dir.path().join("marker.wasm");
    std::fs::copy(plugin_fixture("marker"), &plugin).unwrap();
    let env = Env {
        extra_config: format!(
            "[reconcile]\nwait = \"1s\"\niterations = 600\npolicy = \"{}\"\n",
            plugin.display()
        ),
        ..env
    };
    let mut agent = env.start();
    let mut names = file_names(6);
    names.extend([
        "_SUCCESS".into(),
        "d0/.DS_Store".into(),
        "._notes.txt".into(),
    ]);
    let lines = env.write_dataset("MARK0000000001", &names);
    let (last, first): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.ends_with(&names[5]));
    // Everything but one data file: the marker and the junk included.
    post(&env, &agent, &first);
    wait_until(
        "the marker is in the policy state",
        Duration::from_secs(30),
        || policy_state_text(&agent, "MARK0000000001").as_deref() == Some("marker uploaded"),
    );
    // A dataset whose every file came, but no marker, waits for it.
    let no_marker = env.write_dataset("MARK0000000002", &file_names(3));
    post(&env, &agent, &no_marker.iter().collect::<Vec<_>>());
    wait_until(
        "the unmarked dataset says why it waits",
        Duration::from_secs(30),
        || {
            agent.status(Some("MARK0000000002"))["note"]
                .as_str()
                .is_some_and(|n| n.contains("waiting for the marker _SUCCESS"))
        },
    );

    // Reload: a new instance of the plugin, which never saw the marker.
    let tmp = env.dir.path().join("marker.wasm.new");
    std::fs::copy(plugin_fixture("marker"), &tmp).unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    wait_until(
        "the replaced plugin is reloaded",
        Duration::from_secs(30),
        || agent.logs().contains("reloaded"),
    );
    // Restart: a new process.
    agent.stop();
    let agent = env.start();
    assert_eq!(
        policy_state_text(&agent, "MARK0000000001").as_deref(),
        Some("marker uploaded")
    );
    assert!(env.events_for("MARK0000000001").is_empty());

    post(&env, &agent, &last);
    let events = env.wait_for_events("MARK0000000001", 1, crate::support::LONG);
    assert_eq!(
        events[0]["detail-type"], "File Upload Reconciliation Successful",
        "{events:?}"
    );
    let status = agent.status(Some("MARK0000000001"));
    assert_eq!(
        status["ignored"], 3,
        "marker, .DS_Store, ._notes.txt: {status}"
    );
    assert!(env.events_for("MARK0000000002").is_empty());
}

/// A call that sets the state and then traps changes nothing; a component
/// built against 0.1.0 (no state) loads and decides beside 0.2 ones.
#[test]
fn a_trapping_call_changes_no_state_and_a_0_1_component_still_loads() {
    let env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\niterations = 3000\n\
         [[reconcile.route]]\nset_ids = \"TRAP*\"\npolicy = \"{}\"\n\
         [reconcile.route.policy_config]\nmode = \"stateful\"\nhook = \"none\"\n\
         [[reconcile.route]]\nset_ids = \"OLD*\"\npolicy = \"{}\"\n",
        plugin_fixture("fixture_chaos").display(),
        plugin_fixture("fixture_legacy_v0_1").display(),
    ));
    let agent = env.start();
    let lines = env.write_dataset(
        "TRAP0000000001",
        &["a.dat".into(), "first.mark".into(), "boom.trap".into()],
    );
    let (trap, rest): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.ends_with(".trap"));
    post(&env, &agent, &rest);
    let marked = Some("TRAP0000000001-vaultjob/first.mark".to_owned());
    wait_until(
        "the .mark upload is in the state",
        Duration::from_secs(30),
        || policy_state_text(&agent, "TRAP0000000001") == marked,
    );
    post(&env, &agent, &trap);
    wait_until("the trap is noted", Duration::from_secs(30), || {
        agent.status(Some("TRAP0000000001"))["note"]
            .as_str()
            .is_some_and(|n| n.contains("trap after setting the state"))
    });
    assert_eq!(policy_state_text(&agent, "TRAP0000000001"), marked);
    assert!(env.events_for("TRAP0000000001").is_empty(), "fail closed");

    let mut names = file_names(4);
    names.push("scratch.tmp".into());
    let old = env.write_dataset("OLD00000000001", &names);
    post(&env, &agent, &old.iter().collect::<Vec<_>>());
    let events = env.wait_for_events("OLD00000000001", 1, crate::support::LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );
    let status = agent.status(Some("OLD00000000001"));
    assert_eq!(status["ignored"], 1, "the 0.1.0 policy ran: {status}");
    assert!(status["policy-state"].is_null(), "{status}");
    assert!(
        agent.logs().contains("vault:reconcile@0.1.0"),
        "the log names the version a plugin was built against"
    );

    let list = run_ok(["plugin", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("vault:reconcile@0.2.0, vault:reconcile@0.1.0"),
        "{list}"
    );
}

/// `plugin test` runs the real engine: it shows the state a policy kept.
#[test]
fn plugin_test_shows_the_policy_state() {
    let env = Env::new("");
    let mut names = file_names(2);
    names.push("_SUCCESS".into());
    let lines = env.write_dataset("PT000000000001", &names);
    let events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    let events_file = env.dir.path().join("events.json");
    std::fs::write(&events_file, json!(events).to_string()).unwrap();
    let manifest = env
        .share()
        .join("PT000000000001-vaultjob/PT000000000001.manifest");
    let out = run_ok([
        "plugin".as_ref(),
        "test".as_ref(),
        "--policy".as_ref(),
        "marker".as_ref(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "--events".as_ref(),
        events_file.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("complete"), "{text}");
    assert!(
        text.contains("policy state: marker: 15 bytes \"marker uploaded\""),
        "{text}"
    );
}
