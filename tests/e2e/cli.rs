//! The command line around `run`: config checking, refusing unsafe state
//! directories, `status`, and the log lines.

use std::path::Path;
use std::process::Command;

use crate::support::{BIN, Env, gateway_event};

#[test]
fn check_config_points_at_line_and_column() {
    let env = Env::new("");
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[share]\npath = \"/x\"\nsufix = \"-job\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3:1: unknown field `sufix`"),
        "{stderr}"
    );

    std::fs::write(&bad, "[reconcile]\nwait = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:2:8: invalid duration \"soon\""),
        "{stderr}"
    );

    let good = env.dir.path().join("good.toml");
    std::fs::write(&good, "[reconcile]\nwait = \"10s\"\niterations = 6\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK") && stdout.contains("(deadline 1m)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy     exact-match (bundled): loads"),
        "{stdout}"
    );

    // A plugin that does not load fails the check, naming it and why.
    std::fs::write(env.dir.path().join("broken.wasm"), "nope").unwrap();
    std::fs::write(
        &good,
        "[[reconcile.route]]\nset_ids = \"X*\"\npolicy = \"broken.wasm\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugin broken: not a WebAssembly file"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_state_dir_inside_the_share() {
    let env = Env::new("");
    let config = env.dir.path().join("on-share.toml");
    std::fs::write(
        &config,
        "[agent]\nstate_dir = \"share/.state\"\n[share]\npath = \"share\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("inside the share") && stderr.contains("local disk"),
        "{stderr}"
    );
}

#[test]
fn status_command_and_upload_log_lines() {
    let env = Env::new("");
    let agent = env.start();
    let (code, _) = agent
        .post(&gateway_event("StatusSet-vaultjob/a/b.bin", 9, "2021-05-01T10:00:00Z").to_string());
    assert_eq!(code, 202);
    let out = Command::new(BIN)
        .args(["status", "--url", &agent.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("StatusSet") && stdout.contains("collecting"),
        "{stdout}"
    );

    let logs = agent.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("StatusSet-vaultjob/a/b.bin"))
        .expect("an upload log line");
    assert!(
        line.contains("kind=\"data\"")
            && line.contains("set_id=\"StatusSet\"")
            && line.contains("size=9"),
        "{line}"
    );

    let unreachable = format!("http://127.0.0.1:{}", crate::support::free_port());
    let out = Command::new(BIN)
        .args(["status", "--url", &unreachable])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `vault-agent run` running?"));
}

#[test]
fn the_demo_runs_end_to_end() {
    // 2000 files: with a fixed 4 s deadline the complete dataset once timed
    // out under a Successful heading.
    let out = Command::new(BIN)
        .args(["demo", "--files", "2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the share watcher sees"), "{stdout}");
    let summary = stdout.split("summary").nth(1).unwrap_or_default();
    assert!(
        summary.contains("File Upload Reconciliation Successful  2014 entries"),
        "{summary}"
    );
    // Every heading names the type of the event printed below it.
    for heading in stdout
        .lines()
        .filter(|l| l.ends_with(':') && l.contains(" for "))
    {
        let kind = heading.split(" for ").next().unwrap_or_default();
        let body = stdout.split(heading).nth(1).unwrap_or_default();
        let detail_type = body
            .lines()
            .find(|l| l.contains("\"detail-type\""))
            .unwrap_or_default();
        assert!(detail_type.contains(kind), "{heading} above {detail_type}");
    }
    assert!(
        summary.contains("File Upload Reconciliation Timeout  missing: [\""),
        "{summary}"
    );
    assert!(summary.contains("ignored: 2 keys outside"), "{summary}");
}

#[test]
fn the_example_configs_are_valid() {
    // Both keep their state in /var/lib/vault-agent, as on a host; here
    // --state-dir puts it in a folder of the test's.
    let state = tempfile::tempdir().unwrap();
    for name in ["vault-agent.toml", "vault-agent-aws.toml"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/").to_owned() + name;
        let out = Command::new(BIN)
            .args(["check-config", "--config", &path, "--state-dir"])
            .arg(state.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("state_dir  {}", state.path().display())),
            "{stdout}"
        );
        if name.contains("aws") {
            assert!(
                stdout.contains("store      dynamodb table vault-upload-records"),
                "{stdout}"
            );
            assert!(
                stdout.contains("verify     before-timeout: list a dataset's prefix in the manifest's bucket, else vault-gateway-bucket"),
                "{stdout}"
            );
        } else {
            assert!(stdout.contains("verify     off"), "{stdout}");
        }
    }
}

/// The package's units, `vault-agent.service` and the template
/// `vault-agent@.service`, pass `systemd-analyze verify` (with the binary
/// path pointed at this build) with no warning, and are alike but for the
/// instance's names and paths.
#[test]
fn the_systemd_units_verify() {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{}/debian/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let unit = read("vault-agent.service");
    let template = read("vault-agent@.service");
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "StateDirectory=vault-agent",
        "LimitNOFILE=",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting}");
    }
    // Each instance: its own config and state.
    for setting in [
        "run --config /etc/vault-agent/%i.toml --state-dir /var/lib/vault-agent/%i",
        "StateDirectory=vault-agent/%i",
    ] {
        assert!(template.contains(setting), "the template lacks {setting}");
    }
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                l.replace(
                    "/etc/vault-agent/%i.toml --state-dir /var/lib/vault-agent/%i",
                    "/etc/vault-agent/vault-agent.toml",
                )
                .replace("vault-agent/%i", "vault-agent")
            })
            .filter(|l| !l.starts_with("Description="))
            .collect()
    };
    assert_eq!(
        settings(&unit),
        settings(&template),
        "the units drifted apart"
    );

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("vault-agent.service");
    std::fs::write(&plain, unit.replace("/usr/bin/vault-agent", BIN)).unwrap();
    std::fs::write(
        dir.path().join("vault-agent@.service"),
        template.replace("/usr/bin/vault-agent", BIN),
    )
    .unwrap();
    // `Documentation=man:vault-agent(1)` is checked too: against the pages
    // this build wrote (build/docs.rs).
    let man = Path::new(BIN).with_file_name("dist").join("man");
    for path in [plain, dir.path().join("vault-agent@.service")] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", &man)
            .output()
            .expect("systemd-analyze runs (tests/run installs it)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{}: {said}",
            path.display()
        );
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "-o default vault-agent"),
        ("zsh", "#compdef vault-agent"),
        ("fish", "complete -c vault-agent"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("check-config"), "{shell}: subcommands listed");
    }
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new() -> Tmux {
        Tmux(format!("vault-agent-test-{}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux runs the terminal test (.ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "watch"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// `status --watch` in a real pseudo-terminal: it shows progress, redraws
/// as uploads arrive, and quits on q.
#[test]
fn status_watch_redraws_in_a_terminal_and_quits_on_q() {
    use std::time::Duration;

    use crate::support::{file_names, wait_until};

    let env = Env::new("");
    let agent = env.start();
    let lines = env.write_dataset("WATCH000000001", &file_names(3));
    let (last, first) = lines.split_at(1);
    let post = |lines: &[String]| {
        let events: Vec<serde_json::Value> = lines.iter().map(|l| env.upload_for(l)).collect();
        assert_eq!(agent.post(&serde_json::json!(events).to_string()).0, 202);
    };
    post(first);

    let tmux = Tmux::new();
    let command = format!(
        "{BIN} status --watch --url {}; echo WATCH-EXITED; sleep 60",
        agent.base
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "160",
        "-y",
        "40",
        &command,
    ]);
    wait_until(
        "the live view shows the dataset uploading",
        Duration::from_secs(30),
        || {
            let screen = tmux.screen();
            screen.contains("WATCH000000001")
                && screen.contains("reconciling")
                && screen.contains("(q to quit)")
        },
    );
    post(last);
    wait_until(
        "the live view redraws with the dataset done",
        Duration::from_secs(30),
        || {
            let screen = tmux.screen();
            screen.contains("succeeded") && screen.contains("[####################]")
        },
    );
    tmux.run(&["send-keys", "-t", "watch", "q"]);
    wait_until("q quits the live view", Duration::from_secs(30), || {
        tmux.screen().contains("WATCH-EXITED")
    });
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = crate::support::run_ok(["--version"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let commit = text
        .trim()
        .strip_prefix(concat!(
            "vault-agent ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        ))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}
