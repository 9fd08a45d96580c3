//! `GET /`: the status page, in a real browser. Headless Chromium (driven
//! over WebDriver by Debian's chromedriver) opens the page of an agent
//! mid-upload and the test reads what a person would see: dataset ids,
//! progress values, the paths a click reveals, the next page, a Timeout's
//! reason. It saves a screenshot (`status-page.png` in the test's temp
//! dir, or at `$VAULT_AGENT_SCREENSHOT`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{Env, file_names, free_port, wait_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Generous: CI shares the machine, and the page redraws every 2 s (a
/// fresh clone's CI beside a whole suite under load once took over 60 s).
const SEE_WITHIN: Duration = Duration::from_secs(180);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[test]
fn status_page_shows_progress_paths_pages_and_a_timeout_reason() {
    // First life: a short deadline gives one dataset its Timeout.
    let mut env = Env::new("[reconcile]\nwait = \"250ms\"\niterations = 4\n");
    let mut agent = env.start();
    let timed_out = "PageSetB00000001";
    let lines = env.write_dataset(timed_out, &file_names(4));
    let lost = lines.iter().find(|l| l.ends_with(".dat")).unwrap().clone();
    for line in lines.iter().filter(|l| **l != lost) {
        agent.post(&env.upload_for(line).to_string());
    }
    env.wait_for_events(timed_out, 1, SEE_WITHIN);
    agent.stop();
    // Second life: deadlines far away, one dataset mid-upload and 60 more
    // just begun, so the active ones fill page one.
    env.extra_config = "[reconcile]\nwait = \"1h\"\niterations = 2\n".into();
    let agent = env.start();
    let uploading = "PageSetA00000001";
    let lines = env.write_dataset(uploading, &file_names(10));
    let (sent, unsent) = lines.split_at(lines.len() / 2);
    let manifest = lines.last().unwrap();
    // Uploaded now, after the files were written: they confirm them.
    let now = vault_agent::notification::time::format_event_time(
        vault_agent::notification::time::now_ms(),
    );
    for line in sent.iter().chain([manifest]) {
        let mut event = env.upload_for(line);
        event["time"] = json!(now);
        event["detail"]["modification-time"] = json!(now);
        agent.post(&event.to_string());
    }
    let fillers: Vec<Value> = (0..60)
        .map(|i| {
            crate::support::gateway_event(
                &format!("PageSetF{i:08}-vaultjob/part.dat"),
                10,
                "2021-05-01T10:00:00Z",
            )
        })
        .collect();
    assert_eq!(agent.post(&json!(fillers).to_string()).0, 202);
    let mut expected = Value::Null;
    wait_until(
        "the uploading dataset's manifest is read and its files seen",
        SEE_WITHIN,
        || {
            expected = agent.status(Some(uploading));
            let pending = expected["pending-bytes"].as_u64().unwrap_or(0);
            let local = expected["local-bytes"].as_u64().unwrap_or(0);
            expected["manifest-entries"].is_u64()
                && 0 < pending
                && pending < local
                && agent.status(None)["totals"]["collecting"] == 60
        },
    );
    let entries = expected["manifest-entries"].as_u64().unwrap();
    let uploaded = entries - expected["missing"].as_u64().unwrap();
    assert!(0 < uploaded && uploaded < entries, "{expected}");

    let browser = Browser::start();
    browser.visit(&format!("{}/", agent.base));

    // Page one: 50 datasets, every one still active, ours among them with
    // its progress as the agent counts it.
    browser.wait_for_count("tr.dataset", 50);
    let states = browser.texts("tr.dataset td.state");
    assert_eq!(states.len(), 50);
    for state in &states {
        assert!(
            state == "collecting" || state == "reconciling",
            "active first, got {state}"
        );
    }
    let row = format!("#datasets tr.dataset[data-set-id='{uploading}']");
    let files = browser.text(&format!("{row} td.files"));
    assert!(
        files.contains(&format!("{uploaded} / {entries}")),
        "{files}"
    );
    let local = expected["local-bytes"].as_u64().unwrap();
    let confirmed = local - expected["pending-bytes"].as_u64().unwrap();
    assert!(0 < confirmed && confirmed < local, "{expected}");
    let bytes = browser.text(&format!("{row} td.bytes"));
    let percent = confirmed * 100 / local;
    assert!(bytes.contains(&format!("({percent}%)")), "{bytes}");
    assert!(browser.text("#share").contains("mounted"));

    // A click lists the paths the dataset still waits for.
    browser.click(&format!("{row} td.note"));
    let missing_files = unsent.iter().filter(|l| l.ends_with(".dat")).count();
    browser.wait_for_count("[data-list='missing'] li", missing_files);
    let listed = browser.text("[data-list='missing']");
    for line in unsent.iter().filter(|l| l.ends_with(".dat")) {
        assert!(listed.contains(line.as_str()), "{line} not in {listed}");
    }
    browser.screenshot();

    // Page two: the rest, and the timed-out dataset with its reason.
    browser.click("#next");
    wait_until("page two is drawn", SEE_WITHIN, || {
        browser
            .texts("#pageinfo")
            .first()
            .is_some_and(|t| t.starts_with("page 2:"))
    });
    // Only the datasets table: the recent decisions name it too, and a
    // selector matching both once passed on page one and failed (two
    // rows) when page two was drawn before the first look.
    let row = format!("#datasets tr.dataset[data-set-id='{timed_out}']");
    browser.wait_for_count(&row, 1);
    assert_eq!(browser.text(&format!("{row} td.state")), "timed-out");
    let note = browser.text(&format!("{row} td.note"));
    let reason = agent.status(Some(timed_out))["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !reason.is_empty() && note == reason,
        "page {note:?}, agent {reason:?}"
    );
    let recent = browser.text("#recent");
    assert!(
        recent.contains(timed_out) && recent.contains("Timeout"),
        "{recent}"
    );
}

/// Headless Chromium behind chromedriver, one session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Browser {
    fn start() -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            runtime,
            http,
        };
        wait_until("chromedriver answers", SEE_WITHIN, || {
            browser.call("GET", "/status", None).is_some()
        });
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network this machine does not have.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let created = browser
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                }}})),
            )
            .expect("chromedriver answers");
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        std::mem::forget(profile); // removed with the test's temp files
        browser
    }

    /// One WebDriver command; its `value`, or None if nothing answered.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
        };
        self.runtime.block_on(async {
            let text = req.send().await.ok()?.text().await.ok()?;
            let reply: Value = serde_json::from_str(&text).ok()?;
            Some(reply["value"].clone())
        })
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .unwrap_or_else(|| panic!("chromedriver did not answer {path}"))
    }

    fn visit(&self, url: &str) {
        let reply = self.session_call("POST", "/url", Some(json!({ "url": url })));
        assert!(reply.is_null(), "navigation failed: {reply}");
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let reply = self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        reply
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait_for_count(&self, css: &str, count: usize) {
        wait_until(
            &format!("the page shows {count} of {css}"),
            SEE_WITHIN,
            || self.find_all(css).len() == count,
        );
    }

    /// The text a person sees in each element `css` matches, read at once
    /// (the page redraws itself; element by element could read two draws).
    fn texts(&self, css: &str) -> Vec<String> {
        let script =
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText.trim());";
        let reply = self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": [css]})),
        );
        serde_json::from_value(reply).unwrap_or_default()
    }

    /// The text a person sees in the first element `css` matches.
    fn text(&self, css: &str) -> String {
        let mut text = None;
        wait_until(&format!("the page shows {css}"), SEE_WITHIN, || {
            text = self.texts(css).into_iter().next();
            text.is_some()
        });
        text.unwrap()
    }

    /// Clicks the first element `css` matches (again if a redraw replaced
    /// it between finding and clicking).
    fn click(&self, css: &str) {
        wait_until(&format!("a click on {css}"), SEE_WITHIN, || {
            self.find_all(css).first().is_some_and(|element| {
                self.session_call("POST", &format!("/element/{element}/click"), None)
                    .is_null()
            })
        });
    }

    /// Saves what the browser shows as a PNG.
    fn screenshot(&self) {
        let shot = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = std::env::var_os("VAULT_AGENT_SCREENSHOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("status page screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
