//! `vault-agent wait` and `vault --wait`: a script on the NFS host blocks
//! until its dataset is decided, with the exit codes a shell needs, through
//! the agent's long poll (`GET /status/{set-id}?wait=`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{BIN, Env, LONG, file_names, wait_until};

/// Starts `vault-agent ARGS`, its stdout piped.
fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (generously) for a child to exit: (code, stdout, stderr).
fn finish(mut child: Child) -> (i32, String, String) {
    wait_until("the command exits", LONG, || {
        child.try_wait().ok().flatten().is_some()
    });
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Posts every line's notification.
fn upload(env: &Env, agent: &crate::support::AgentProcess, lines: &[String]) {
    let events: Vec<Value> = lines.iter().map(|l| env.upload_for(l)).collect();
    agent.post_events(&events);
}

#[test]
fn wait_before_any_notification_exits_0_on_successful_and_json_prints_the_record() {
    let env = Env::new("");
    let agent = env.start();
    let set_id = "WAITFOR0000001";
    let waiter = spawn(&["wait", set_id, "--url", &agent.base, "--json"]);
    // The waiter is holding its long poll before anything is known.
    wait_until("the waiter's long poll", LONG, || {
        agent
            .metric("vault_agent_http_requests_total{route=\"/status/{set_id}\",status=\"404\"}")
            .is_some_and(|n| n >= 1.0)
    });
    let lines = env.write_dataset(set_id, &file_names(5));
    upload(&env, &agent, &lines);
    let (code, out, err) = finish(waiter);
    assert_eq!(code, 0, "{out}{err}");
    let records: Value = serde_json::from_str(&out).unwrap();
    let record = &records[0];
    assert_eq!(record["set-id"], set_id);
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["manifest-entries"], lines.len());
    assert!(
        record["version"].is_string() && record["content"].is_object(),
        "{record}"
    );
    assert_eq!(env.events_for(set_id).len(), 1);
}

#[test]
fn wait_exits_1_on_a_timeout_and_124_when_its_own_time_is_up() {
    let env = Env::new("[reconcile]\nwait = \"1s\"\niterations = 3");
    let agent = env.start();
    let set_id = "WAITTIMEOUT001";
    let lines = env.write_dataset(set_id, &file_names(3));
    // One file never uploaded: the dataset times out.
    upload(&env, &agent, &lines[1..]);
    let (code, out, err) = finish(spawn(&["wait", set_id, "--url", &agent.base, "--quiet"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with(&format!("{set_id}: File Upload Reconciliation Timeout")),
        "{out}"
    );
    // A dataset nobody uploads: `--timeout` passes first.
    let (code, out, err) = finish(spawn(&[
        "wait",
        "NEVERSEEN00001",
        "--url",
        &agent.base,
        "--timeout",
        "1s",
    ]));
    assert_eq!(code, 124, "{out}{err}");
    // A refused key: the answer cannot be known.
    let env = Env::new("").with_http("api_key = \"k\"\nprotect_reads = true");
    let agent = env.start();
    let (code, _, err) = finish(spawn(&[
        "wait",
        "ANY",
        "--url",
        &agent.base,
        "--api-key",
        "wrong",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
}

#[test]
fn vault_wait_prints_the_set_id_then_exits_0_once_the_gateway_notified_it() {
    let env = Env::new("");
    let agent = env.start();
    let source = env.dir.path().join("source");
    for name in file_names(4) {
        let path = source.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "bytes").unwrap();
    }
    let child = spawn(&[
        "vault",
        "--source",
        source.to_str().unwrap(),
        "--share",
        env.share().to_str().unwrap(),
        "--set-id",
        "VAULTWAIT00001",
        "--wait",
        "--url",
        &agent.base,
    ]);
    // The gateway's notifications, once the manifest exists.
    let manifest = env
        .share()
        .join("VAULTWAIT00001-vaultjob/VAULTWAIT00001.manifest");
    wait_until("vault sealed the dataset", LONG, || manifest.exists());
    let lines: Vec<String> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    upload(&env, &agent, &lines);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}{err}");
    let mut out_lines = out.lines();
    assert_eq!(out_lines.next(), Some("VAULTWAIT00001"), "the set-id first");
    assert!(
        out.contains("VAULTWAIT00001: File Upload Reconciliation Successful"),
        "{out}"
    );
}

#[test]
fn a_wait_outlives_an_agent_restart_and_reads_the_decision() {
    let env = Env::new("");
    let mut agent = env.start();
    let set_id = "WAITRESTART001";
    let lines = env.write_dataset(set_id, &file_names(4));
    // Half the uploads before the restart.
    upload(&env, &agent, &lines[..2]);
    let waiter = spawn(&["wait", set_id, "--url", &agent.base]);
    wait_until("the waiter is connected", LONG, || {
        agent
            .metric("vault_agent_http_requests_total{route=\"/status/{set_id}\",status=\"200\"}")
            .is_some_and(|n| n >= 1.0)
    });
    env.restart(&mut agent);
    upload(&env, &agent, &lines[2..]);
    env.wait_for_events(set_id, 1, LONG);
    let (code, out, err) = finish(waiter);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Successful"), "{out}");
}

#[test]
fn two_hundred_waiters_are_all_released_by_one_decision() {
    let env = Env::new("");
    let agent = env.start();
    let set_id = "MANYWAITERS001";
    let lines = env.write_dataset(set_id, &file_names(3));
    upload(&env, &agent, &lines[..1]);
    // No `since`: each waits for the decision itself.
    let url = format!("{}/status/{set_id}?wait=60s", agent.base);
    // Its own worker threads drive the waiters while the test thread waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            rt.spawn(async move {
                let answer = client.get(&url).send().await.unwrap();
                serde_json::from_str::<Value>(&answer.text().await.unwrap()).unwrap()
            })
        })
        .collect();
    // Every waiter holds its request before the decision comes.
    wait_until("200 long polls waiting", LONG, || {
        agent
            .metric("vault_agent_http_waiters")
            .is_some_and(|n| n >= 200.0)
    });
    upload(&env, &agent, &lines[1..]);
    for waiter in waiters {
        let body = rt.block_on(waiter).unwrap();
        assert_eq!(
            body["state"], "succeeded",
            "released by the decision: {body}"
        );
    }
    wait_until("every waiter released", LONG, || {
        agent.metric("vault_agent_http_waiters") == Some(0.0)
    });
    assert_eq!(env.events_for(set_id).len(), 1);
}

/// With the shared DynamoDB store, a `wait` on one agent hears of a
/// decision another agent took (no commit of its own names the dataset).
#[test]
fn a_wait_on_one_agent_reports_another_agents_decision() {
    let moto = crate::moto::Moto::start();
    let rt = crate::aws::runtime();
    let ddb = aws_sdk_dynamodb::Client::new(&rt.block_on(moto.sdk()));
    rt.block_on(crate::moto::create_table(&ddb, "vault-agent"));
    let mut env = Env::new(&format!(
        "[reconcile]\nverify = \"off\"\nverify_content = \"off\"\n\
         [store]\nbackend = \"dynamodb\"\ntable = \"vault-agent\"\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    ));
    env.envs = moto.envs();
    let a = env.start_with_state("state-a");
    let b = env.start_with_state("state-b");
    let set_id = "SHAREDWAIT0001";
    let lines = env.write_dataset(set_id, &file_names(3));
    // B waits; every notification goes to A, which decides.
    let waiter = spawn(&["wait", set_id, "--url", &b.base, "--quiet"]);
    upload(&env, &a, &lines);
    let (code, out, err) = finish(waiter);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Successful"), "{out}");
}
