//! `GET /metrics`: the Prometheus exposition, checked by `promtool`, with
//! what an operator watches (notifications, commits, decisions, datasets by
//! state, plugin calls, sinks, HTTP requests), and `[http] protect_reads`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Env, file_names, http_get, http_get_with, sample};

#[test]
fn metrics_are_valid_prometheus_and_count_what_happened() {
    let env = Env::new("").with_http("api_key = \"s3cret\"\nprotect_reads = true");
    let agent = env.start();
    let key = [("x-api-key", "s3cret")];
    let lines = env.write_dataset("METRICS0000001", &file_names(5));
    let mut events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    events.push(crate::support::gateway_event(
        "elsewhere/file.bin",
        1,
        "2021-05-01T10:00:00Z",
    ));
    let (code, _) = agent.post_with(&json!(events).to_string(), &key);
    assert_eq!(code, 202);
    assert_eq!(agent.post_with("not json", &key).0, 400);
    assert_eq!(agent.post("[]").0, 401);
    env.wait_for_events("METRICS0000001", 1, crate::support::LONG);

    // Reads need the key; /healthz stays open for probes.
    let url = format!("{}/metrics", agent.base);
    assert_eq!(http_get(&url).unwrap().0, 401);
    assert_eq!(http_get(&format!("{}/status", agent.base)).unwrap().0, 401);
    assert_eq!(http_get(&format!("{}/healthz", agent.base)).unwrap().0, 200);
    // The status command takes the key from the config, or says what it needs.
    let table = crate::support::run_ok([
        "status".as_ref(),
        "--config".as_ref(),
        env.config_path().as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("METRICS0000001"));
    let refused = Command::new(crate::support::BIN)
        .args(["status", "--url", &agent.base])
        .env_remove("VAULT_AGENT_API_KEY")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("protect_reads") && said.contains("--api-key"),
        "{said}"
    );

    // The sink's delivery is counted once the dispatcher records it.
    let mut text = String::new();
    crate::support::wait_until("the delivery is counted", Duration::from_secs(30), || {
        let (code, body) = http_get_with(&url, &key).unwrap();
        assert_eq!(code, 200, "{body}");
        text = body;
        sample(&text, "vault_agent_sink_delivered_total{sink=\"file:").is_some()
    });
    let data = lines.len() as f64 - 1.0;
    for (series, value) in [
        ("vault_agent_notifications_total{kind=\"data\"}", data),
        ("vault_agent_notifications_total{kind=\"manifest\"}", 1.0),
        ("vault_agent_notifications_total{kind=\"outside\"}", 1.0),
        (
            "vault_agent_refused_requests_total{reason=\"malformed\"}",
            1.0,
        ),
        (
            "vault_agent_refused_requests_total{reason=\"unauthorized\"}",
            1.0,
        ),
        ("vault_agent_decisions_total{outcome=\"succeeded\"}", 1.0),
        ("vault_agent_datasets{state=\"succeeded\"}", 1.0),
        ("vault_agent_datasets{state=\"reconciling\"}", 0.0),
        (
            "vault_agent_http_requests_total{route=\"/events\",status=\"202\"}",
            1.0,
        ),
        (
            "vault_agent_http_requests_total{route=\"/metrics\",status=\"401\"}",
            1.0,
        ),
        ("vault_agent_build_info{", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    for present in [
        "vault_agent_commit_duration_seconds_bucket{le=\"0.01\"}",
        "vault_agent_decision_latency_seconds_count",
        "vault_agent_committed_batches_total",
        "vault_agent_plugin_calls_total{policy=\"exact-match\"}",
        "vault_agent_plugin_call_duration_seconds_count{policy=\"exact-match\"}",
        "vault_agent_manifest_reads_total",
        "vault_agent_pending_files",
    ] {
        assert!(sample(&text, present).is_some(), "{present} in:\n{text}");
    }
    assert!(
        !text.contains("METRICS0000001"),
        "a set-id is never a label"
    );

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut promtool = promtool.expect(
        "promtool checks the exposition (Debian's `prometheus` package; .ci/run installs it)",
    );
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
