//! Helpers: a temporary share + state + config, the agent as a child process,
//! gateway-shaped notifications built independently of the agent's code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_vault-agent");

/// The agent binary the tests start: `VAULT_AGENT_BIN` when set (to run a
/// test, such as the history checker, against another build), else [`BIN`].
pub fn agent_bin() -> String {
    std::env::var("VAULT_AGENT_BIN").unwrap_or_else(|_| BIN.to_owned())
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Appended to the config (e.g. a `[reconcile]` table).
    pub extra_config: String,
    /// Extra lines inside `[http]` (e.g. `api_key`).
    pub http_extra: String,
    /// Extra lines inside `[share]` (e.g. `watch`).
    pub share_extra: String,
    /// Environment variables for the agent process.
    pub envs: Vec<(String, String)>,
}

impl Env {
    pub fn new(extra_config: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        Env {
            dir,
            extra_config: extra_config.to_owned(),
            http_extra: String::new(),
            share_extra: String::new(),
            envs: Vec::new(),
        }
    }

    pub fn with_share(mut self, lines: &str) -> Env {
        self.share_extra = lines.to_owned();
        self
    }

    pub fn with_http(mut self, lines: &str) -> Env {
        self.http_extra = lines.to_owned();
        self
    }

    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Starts the agent on a free loopback port and waits until it is healthy.
    pub fn start(&self) -> AgentProcess {
        self.start_with_state("state")
    }

    /// Starts an agent with its own state directory: several agents on one
    /// share, as on several hosts.
    pub fn start_with_state(&self, state_dir: &str) -> AgentProcess {
        let port = self.write_config(state_dir);
        let mut agent = self.spawn(port, None);
        agent.wait_healthy();
        agent
    }

    /// Stops `agent` (SIGTERM) and starts it again on the same port, with
    /// the same config and state: what a client connected to it sees of a
    /// restart.
    pub fn restart(&self, agent: &mut AgentProcess) {
        agent.stop();
        let port: u16 = agent
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the agent's port");
        *agent = self.spawn(port, None);
        agent.wait_healthy();
    }

    /// Writes the config (state in `state`) and returns its port.
    pub fn start_config(&self) -> u16 {
        self.write_config("state")
    }

    /// Starts the agent with the soft open-file limit systemd gives services.
    pub fn start_with_soft_fd_limit(&self, soft: u64) -> AgentProcess {
        let port = self.write_config("state");
        let mut agent = self.spawn(port, Some(soft));
        agent.wait_healthy();
        agent
    }

    /// Starts the agent and waits until it answers /healthz, healthy or not.
    pub fn start_unhealthy_ok(&self) -> AgentProcess {
        let port = self.write_config("state");
        let agent = self.spawn(port, None);
        let start = Instant::now();
        while http_get(&format!("{}/healthz", agent.base)).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no answer:\n{}",
                agent.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn write_config(&self, state_dir: &str) -> u16 {
        let port = free_port();
        let text = format!(
            "[agent]\nstate_dir = \"{state_dir}\"\n[share]\npath = \"share\"\n{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{}\n\
             [[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n{}\n",
            self.share_extra, self.http_extra, self.extra_config
        );
        std::fs::write(self.config_path(), text).unwrap();
        port
    }

    fn spawn(&self, port: u16, soft_fd_limit: Option<u64>) -> AgentProcess {
        use std::os::unix::process::CommandExt;
        let log = self.dir.path().join(format!("agent-{port}.log"));
        let mut command = Command::new(agent_bin());
        command
            .args(["run", "--config"])
            .arg(self.config_path())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(soft) = soft_fd_limit {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child
            // between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    set_soft_fd_limit(soft);
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("vault-agent starts");
        AgentProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Writes `<set_id>-vaultjob` with `files` (paths below it) and the
    /// manifest; returns the manifest lines (directories, files, manifest).
    pub fn write_dataset(&self, set_id: &str, files: &[String]) -> Vec<String> {
        let root = format!("{set_id}-vaultjob");
        let share = self.share();
        std::fs::create_dir_all(share.join(&root)).unwrap();
        let mut dirs = vec![root.clone()];
        for f in files {
            let path = share.join(&root).join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("content of {f}")).unwrap();
            let mut parent = Path::new(f).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                let line = format!("{root}/{}", p.display());
                if !dirs.contains(&line) {
                    dirs.push(line);
                }
                parent = p.parent();
            }
        }
        dirs.sort();
        let mut lines = dirs;
        lines.extend(files.iter().map(|f| format!("{root}/{f}")));
        let manifest = format!("{root}/{set_id}.manifest");
        lines.push(manifest.clone());
        std::fs::write(share.join(&manifest), lines.join("\n") + "\n").unwrap();
        lines
    }

    /// The gateway's notification for a manifest line: directory keys get
    /// their S3 `/`, sizes come from the share.
    pub fn upload_for(&self, line: &str) -> Value {
        let meta = std::fs::metadata(self.share().join(line)).unwrap();
        if meta.is_dir() {
            gateway_event(&format!("{line}/"), 0, "2021-05-01T10:00:00Z")
        } else {
            gateway_event(line, meta.len(), "2021-05-01T10:00:00Z")
        }
    }

    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.events_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line of the sink is JSON"))
            .collect()
    }

    pub fn events_for(&self, set_id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["detail"]["set-id"] == set_id)
            .collect()
    }

    pub fn wait_for_events(&self, set_id: &str, count: usize, limit: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events_for(set_id);
            if events.len() >= count {
                return events;
            }
            assert!(
                start.elapsed() < limit,
                "no event for {set_id} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub struct AgentProcess {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Waits until /healthz answers 200 (generously: CI shares the machine).
    pub fn wait_healthy(&mut self) {
        let start = Instant::now();
        while http_get(&format!("{}/healthz", self.base)).map(|(c, _)| c) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited ({status}) before becoming healthy:\n{}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "agent did not become healthy:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn post(&self, body: &str) -> (u16, Value) {
        self.post_with(body, &[])
    }

    /// Posts gateway events, which the agent must accept (202).
    pub fn post_events(&self, events: &[Value]) {
        let (code, answer) = self.post(&Value::from(events.to_vec()).to_string());
        assert_eq!(code, 202, "{answer}");
    }

    /// The value of the first `/metrics` sample whose line starts with
    /// `prefix` (a name, or a name and labels), if there is one.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = http_get_with(&format!("{}/metrics", self.base), &[])?;
        sample(&text, prefix)
    }

    pub fn post_with(&self, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let client = client();
        let mut req = client
            .post(format!("{}/events", self.base))
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let rt = runtime();
        rt.block_on(async {
            let resp = req.send().await.expect("agent answers");
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    pub fn status(&self, set_id: Option<&str>) -> Value {
        let url = match set_id {
            Some(id) => format!("{}/status/{id}", self.base),
            None => format!("{}/status", self.base),
        };
        let (code, body) = http_get(&url).expect("status answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit the agent promises within 15 s (the
    /// limit here is generous: CI shares the machine).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "agent did not stop on SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}

pub fn gateway_event(key: &str, size: u64, time: &str) -> Value {
    vault_agent::notification::sample::gateway_event_at("e2e-bucket", key, size, time)
}

/// Sets this process's soft open-file limit to `soft` (at most the hard
/// limit). Only getrlimit/setrlimit: safe between fork and exec too.
pub fn set_soft_fd_limit(soft: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/set of this process's limit, on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = soft.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Whether a gateway event is the upload of a manifest.
pub fn is_manifest_upload(event: &Value) -> bool {
    event["detail"]["object-key"]
        .as_str()
        .is_some_and(|k| k.ends_with(".manifest"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET returning (status, body), or None if nothing answers.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    http_get_with(url, &[])
}

/// GET with request headers.
pub fn http_get_with(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    runtime().block_on(async {
        let mut req = client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.unwrap_or_default()))
    })
}

/// An HTTP server the test runs on loopback (kept alive by its runtime).
pub struct TestServer {
    pub base: String,
    _runtime: tokio::runtime::Runtime,
}

/// Serves `app` on a free loopback port until the returned value is dropped.
pub fn serve(app: axum::Router) -> TestServer {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await });
    TestServer {
        base,
        _runtime: runtime,
    }
}

/// Runs `vault-agent ARGS`, asserting success (showing stderr if not).
pub fn run_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("vault-agent runs");
    assert!(
        out.status.success(),
        "vault-agent failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// File names for a dataset: `n` files spread over a few nested directories.
pub fn file_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("d{}/sub{}/file-{i:04}.dat", i % 3, i % 2))
        .collect()
}

/// The value of the first Prometheus sample in `text` whose line starts
/// with `prefix` (a name followed by a space or its labels).
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter(|l| {
            prefix.contains('{') || matches!(l.as_bytes().get(prefix.len()), Some(b' ' | b'{'))
        })
        .find_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
}

/// The deadline for what takes a while but must happen: generous, since
/// CI shares the machine with builds.
pub const LONG: Duration = Duration::from_secs(120);

/// A test plugin component built from `plugins/fixtures/` (or a bundled
/// policy), by name.
pub fn plugin_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/plugins")).join(format!("{name}.wasm"))
}

/// The agent's re-checks committed so far (`vault_agent_rechecks_total`).
pub fn rechecks(agent: &AgentProcess) -> u64 {
    agent.metric("vault_agent_rechecks_total").unwrap_or(0.0) as u64
}

/// Waits (generously) until the agent has committed `n` more re-checks:
/// each had every chance to decide, so an absence asserted after them is
/// a fact, not a race with the clock.
pub fn wait_rechecks(agent: &AgentProcess, n: u64) {
    let from = rechecks(agent);
    wait_until(&format!("{n} re-checks"), Duration::from_secs(180), || {
        rechecks(agent) >= from + n
    });
}

/// Waits until `done` holds, polling; panics naming `what` after `limit`.
/// Limits are generous on purpose: CI shares the machine with builds.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway event for every manifest line of a dataset written with
/// [`Env::write_dataset`], at `time`.
pub fn uploads_at(env: &Env, lines: &[String], time: &str) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let mut e = env.upload_for(l);
            e["time"] = json!(time);
            e["detail"]["modification-time"] = json!(time);
            e
        })
        .collect()
}
