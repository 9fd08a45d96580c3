//! A reconcile policy backed by a WebAssembly component.
//!
//! Every call runs with a deadline and a memory cap. A call that traps, runs
//! out of time or memory returns an error (the engine fails closed), the
//! instance is thrown away and the next call gets a fresh one; after
//! [`QUARANTINE_AFTER`] failures in a row of any one hook the plugin is
//! quarantined for [`QUARANTINE_FOR`] and every call fails at once (another
//! hook succeeding in between does not reset the count).
//!
//! Each plugin has a time budget per engine batch: `batch_budget`, plus
//! [`ALLOWANCE_PER_CALL`] for each call it made. Once its calls used it,
//! further calls are deferred to a later batch instead of made, so a slow
//! policy delays its own datasets, never the batch everyone waits on, while
//! a policy of normal speed is never deferred however large the batch.
//! A plugin file replaced on disk is reloaded (see [`super::reloader`]); a
//! broken replacement keeps the previous version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::{BoundPolicy, PolicyPre};
use super::host::{HostState, Limits, LoadedFrom, PluginHost, capped};
use super::reloader::{self, Prepared, Reloader, Waker};
use super::{HealthSlot, PluginError, PluginHealth, PluginSource, PluginState};
use crate::reconcile::policy::{
    Decision, ExpectedEntry, Hook, Policy, PolicyError, PolicyState, Summary, UploadVerdict,
    UploadView,
};
use crate::telemetry;

pub const QUARANTINE_AFTER: u32 = 3;
pub const QUARANTINE_FOR: Duration = Duration::from_secs(60);
/// What each call adds to a plugin's time budget in a batch: far above what
/// a policy needs per call (microseconds), far below a slow one's.
pub const ALLOWANCE_PER_CALL: Duration = Duration::from_micros(50);

/// Time and memory used by a plugin's calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    pub calls: u64,
    pub total: Duration,
    pub slowest: Duration,
    pub peak_memory: usize,
}

struct Loaded {
    pre: PolicyPre,
    /// The interface version the component was built against.
    package: &'static str,
    /// None after a failed call: the next call instantiates afresh.
    live: Option<(Store<HostState>, BoundPolicy)>,
    wants_sizes: bool,
    sha256: String,
    loaded_from: LoadedFrom,
    load_time: Duration,
}

pub struct WasmPolicy {
    name: String,
    source: PluginSource,
    settings: Vec<(String, String)>,
    host: Arc<PluginHost>,
    loaded: Result<Loaded, PluginError>,
    /// Failures in a row, per hook.
    failures_in_a_row: Vec<(Hook, u32)>,
    /// Time spent in calls since the batch began, and their number.
    batch_spent: Duration,
    batch_calls: u32,
    /// Calls when health was last published.
    published_calls: u64,
    quarantined_until: Option<Instant>,
    last_error: Option<String>,
    /// Watches a plugin file (once the engine gave a way to wake it).
    reloader: Option<Reloader>,
    stats: CallStats,
    health: HealthSlot,
    capture_logs: bool,
    captured: Vec<String>,
    metrics: PluginMetrics,
}

/// Handles registered once per plugin, so a call pays no metric lookup.
struct PluginMetrics {
    calls: metrics::Counter,
    failures: metrics::Counter,
    quarantines: metrics::Counter,
    duration: metrics::Histogram,
}

impl PluginMetrics {
    fn new(policy: &str) -> PluginMetrics {
        let label = || ("policy", policy.to_owned());
        PluginMetrics {
            calls: metrics::counter!(telemetry::PLUGIN_CALLS, &[label()]),
            failures: metrics::counter!(telemetry::PLUGIN_FAILURES, &[label()]),
            quarantines: metrics::counter!(telemetry::PLUGIN_QUARANTINES, &[label()]),
            duration: metrics::histogram!(telemetry::PLUGIN_CALL_SECONDS, &[label()]),
        }
    }
}

impl WasmPolicy {
    /// Loads a plugin; a plugin that cannot load is kept, broken: every call
    /// fails (closed) and a replaced file is tried again.
    pub fn load(
        host: Arc<PluginHost>,
        name: &str,
        source: PluginSource,
        settings: Vec<(String, String)>,
        health: HealthSlot,
    ) -> WasmPolicy {
        let mut policy = WasmPolicy {
            name: name.to_owned(),
            source,
            settings,
            host,
            loaded: Err(PluginError::Host("not loaded yet".into())),
            failures_in_a_row: Vec::new(),
            batch_spent: Duration::ZERO,
            batch_calls: 0,
            published_calls: 0,
            quarantined_until: None,
            last_error: None,
            reloader: None,
            stats: CallStats::default(),
            health,
            capture_logs: false,
            captured: Vec::new(),
            metrics: PluginMetrics::new(name),
        };
        policy.loaded = reloader::prepare(&policy.host, &policy.name, &policy.source)
            .and_then(|prepared| policy.activate(prepared));
        match &policy.loaded {
            Ok(l) => tracing::info!(
                plugin = %policy.name, source = %policy.source, interface = l.package, sha256 = &l.sha256[..12],
                from = ?l.loaded_from, load_ms = l.load_time.as_secs_f64() * 1e3, "policy plugin loaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "policy plugin failed to load; its datasets cannot succeed until it is fixed");
                policy.last_error = Some(e.to_string());
            }
        }
        policy.publish();
        policy
    }

    /// Loads or fails with the reason (for the CLI and config checks).
    pub fn load_strict(
        host: Arc<PluginHost>,
        name: &str,
        source: PluginSource,
        settings: Vec<(String, String)>,
    ) -> Result<WasmPolicy, PluginError> {
        let policy = WasmPolicy::load(host, name, source, settings, HealthSlot::default());
        match &policy.loaded {
            Ok(_) => Ok(policy),
            Err(e) => Err(e.clone()),
        }
    }

    /// Instantiates a prepared component and runs its `init`.
    fn activate(&mut self, prepared: Prepared) -> Result<Loaded, PluginError> {
        let mut loaded = Loaded {
            pre: prepared.pre,
            package: prepared.package,
            live: None,
            wants_sizes: false,
            sha256: prepared.sha256,
            loaded_from: prepared.loaded_from,
            load_time: Duration::ZERO,
        };
        let (store, instance, wants_sizes) =
            self.instantiate(&loaded.pre)
                .map_err(|message| PluginError::Init {
                    plugin: self.name.clone(),
                    message,
                })?;
        loaded.live = Some((store, instance));
        loaded.wants_sizes = wants_sizes;
        loaded.load_time = prepared.started.elapsed();
        Ok(loaded)
    }

    /// A fresh instance with `init` run, and its answer to
    /// `wants-expected-sizes` (asked once: it describes the policy, not a
    /// dataset). Err is the reason, for the operator.
    fn instantiate(
        &mut self,
        pre: &PolicyPre,
    ) -> Result<(Store<HostState>, BoundPolicy, bool), String> {
        let mut store = self.host.new_store(&self.name);
        store.data_mut().captured = self.capture_logs.then(Vec::new);
        store.set_epoch_deadline(self.host.deadline_ticks());
        store.data_mut().begin_call();
        store.data_mut().state.enter_none();
        let policy = pre
            .instantiate(&mut store)
            .map_err(|e| describe_failure(&self.host.limits, &store, &e))?;
        match policy.init(&mut store, &self.settings) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(format!("init refused its settings: {}", capped(message)));
            }
            Err(e) => {
                return Err(format!(
                    "init failed: {}",
                    describe_failure(&self.host.limits, &store, &e)
                ));
            }
        }
        store.set_epoch_deadline(self.host.deadline_ticks());
        // A trap here poisons the instance: it is not kept.
        let wants_sizes = policy.wants_expected_sizes(&mut store).map_err(|e| {
            format!(
                "wants-expected-sizes failed: {}",
                describe_failure(&self.host.limits, &store, &e)
            )
        })?;
        self.drain_captured(&mut store);
        Ok((store, policy, wants_sizes))
    }

    fn drain_captured(&mut self, store: &mut Store<HostState>) {
        if let Some(lines) = store.data_mut().captured.as_mut() {
            self.captured.append(lines);
        }
    }

    /// Runs one hook under the limits, failing closed. `state`: the
    /// dataset's policy state, which the call may change (kept only if it
    /// returns).
    fn call<T>(
        &mut self,
        hook: Hook,
        state: &mut Option<PolicyState>,
        f: impl FnOnce(&mut BoundPolicy, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, PolicyError> {
        let fail = |policy: &WasmPolicy, message: String| {
            PolicyError::failed(policy.label(), hook, message)
        };
        let budget = (self.host.limits.batch_budget)
            .saturating_add(ALLOWANCE_PER_CALL.saturating_mul(self.batch_calls));
        if hook.may_defer() && self.batch_spent >= budget {
            return Err(PolicyError::deferred(
                self.label(),
                hook,
                format!(
                    "its time in this batch ({:?}) is used; the call waits for the next batch",
                    self.batch_spent
                ),
            ));
        }
        if let Some(until) = self.quarantined_until {
            if Instant::now() < until {
                let last = self.last_error.clone().unwrap_or_default();
                return Err(fail(
                    self,
                    format!("quarantined after {QUARANTINE_AFTER} failures in a row; last: {last}"),
                ));
            }
            self.quarantined_until = None;
        }
        let loaded = match &mut self.loaded {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                return Err(fail(self, message));
            }
        };
        let start = Instant::now();
        if loaded.live.is_none() {
            let pre = loaded.pre.clone();
            let instantiated = self.instantiate(&pre);
            self.batch_spent += start.elapsed();
            match instantiated {
                Ok((store, instance, wants_sizes)) => {
                    if let Ok(l) = &mut self.loaded {
                        l.live = Some((store, instance));
                        l.wants_sizes = wants_sizes;
                    }
                }
                Err(message) => return Err(self.failed(hook, message)),
            }
        }
        let Ok(Loaded {
            live: Some((store, instance)),
            ..
        }) = &mut self.loaded
        else {
            return Err(fail(self, "no instance".into()));
        };
        store.set_epoch_deadline(self.host.deadline_ticks());
        store.data_mut().begin_call();
        store.data_mut().state.enter(&self.name, state);
        let start = Instant::now();
        let result = f(instance, store);
        let elapsed = start.elapsed();
        store
            .data_mut()
            .state
            .leave(&self.name, state, result.is_ok());
        self.batch_spent += elapsed;
        self.batch_calls = self.batch_calls.saturating_add(1);
        self.stats.calls += 1;
        self.metrics.calls.increment(1);
        self.metrics.duration.record(elapsed);
        self.stats.total += elapsed;
        self.stats.slowest = self.stats.slowest.max(elapsed);
        self.stats.peak_memory = self.stats.peak_memory.max(store.data().limiter.peak);
        match result {
            Ok(value) => {
                if self.capture_logs {
                    let lines: Vec<String> = store
                        .data_mut()
                        .captured
                        .as_mut()
                        .map(std::mem::take)
                        .unwrap_or_default();
                    self.captured.extend(lines);
                }
                if let Some((_, n)) = self.failures_in_a_row.iter_mut().find(|(h, _)| *h == hook)
                    && *n > 0
                {
                    *n = 0;
                    self.publish();
                }
                Ok(value)
            }
            Err(e) => {
                let message = describe_failure(&self.host.limits, store, &e);
                // The instance may be in any state now: throw it away.
                if let Ok(l) = &mut self.loaded {
                    l.live = None;
                }
                Err(self.failed(hook, message))
            }
        }
    }

    fn failed(&mut self, hook: Hook, message: String) -> PolicyError {
        let in_a_row = match self.failures_in_a_row.iter_mut().find(|(h, _)| *h == hook) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.failures_in_a_row.push((hook, 1));
                1
            }
        };
        self.metrics.failures.increment(1);
        let error = PolicyError::failed(self.label(), hook, message);
        tracing::error!(error = %error, failures_in_a_row = in_a_row, "policy call failed; failing closed");
        self.last_error = Some(error.to_string());
        if in_a_row >= QUARANTINE_AFTER {
            self.quarantined_until = Some(Instant::now() + QUARANTINE_FOR);
            self.metrics.quarantines.increment(1);
            self.failures_in_a_row.clear();
            tracing::error!(plugin = %self.name, for_secs = QUARANTINE_FOR.as_secs(), "policy plugin quarantined");
        }
        self.publish();
        error
    }

    /// Swaps in a replacement the reloader prepared; true if it took
    /// effect.
    fn take_replacement(&mut self) -> bool {
        let Some(prepared) = self.reloader.as_ref().and_then(Reloader::take) else {
            return false;
        };
        let activated = prepared.and_then(|p| self.activate(p));
        let reloaded = match activated {
            Ok(loaded) => {
                tracing::info!(plugin = %self.name, sha256 = &loaded.sha256[..12], "policy plugin file replaced; reloaded");
                self.loaded = Ok(loaded);
                self.failures_in_a_row.clear();
                self.quarantined_until = None;
                self.last_error = None;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "replaced policy plugin does not load; keeping the previous version");
                self.last_error = Some(e.to_string());
                if self.loaded.is_err() {
                    self.loaded = Err(e);
                }
                false
            }
        };
        self.publish();
        reloaded
    }

    /// "name (source, vault:reconcile@0.2.0, sha256 0123abcd)" for messages.
    pub fn label(&self) -> String {
        match &self.loaded {
            Ok(l) => format!(
                "{} ({}, {}, sha256 {})",
                self.name,
                self.source,
                l.package,
                &l.sha256[..12]
            ),
            Err(_) => format!("{} ({})", self.name, self.source),
        }
    }

    pub fn stats(&self) -> CallStats {
        self.stats
    }

    pub fn load_time(&self) -> Option<(Duration, LoadedFrom)> {
        self.loaded
            .as_ref()
            .ok()
            .map(|l| (l.load_time, l.loaded_from))
    }

    /// Collect the plugin's log lines instead of logging them (`plugin test`).
    pub fn capture_logs(&mut self) {
        self.capture_logs = true;
        if let Ok(Loaded {
            live: Some((store, _)),
            ..
        }) = &mut self.loaded
        {
            store.data_mut().captured = Some(Vec::new());
        }
    }

    pub fn take_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.captured)
    }

    fn publish(&mut self) {
        self.published_calls = self.stats.calls;
        let state = match (&self.loaded, self.quarantined_until) {
            (Err(_), _) => PluginState::Broken,
            (Ok(_), Some(_)) => PluginState::Quarantined,
            (Ok(_), None) => PluginState::Ready,
        };
        let entry = PluginHealth {
            name: self.name.clone(),
            route: self.health.route.clone(),
            source: self.source.to_string(),
            state,
            calls: self.stats.calls,
            last_error: self.last_error.clone(),
        };
        let mut board = self.health.board.lock().unwrap_or_else(|p| p.into_inner());
        board.insert(self.health.route.clone(), entry);
    }
}

/// Why a call failed, in the operator's words.
fn describe_failure(limits: &Limits, store: &Store<HostState>, e: &wasmtime::Error) -> String {
    let state = store.data();
    if state.limiter.hit {
        return format!(
            "ran out of memory (limit {} MiB)",
            limits.memory_bytes >> 20
        );
    }
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return format!(
            "did not return within {:?} and was stopped",
            limits.call_timeout
        );
    }
    let output = capped(state.output());
    let root = e.root_cause().to_string();
    if output.is_empty() {
        format!("trapped: {root}")
    } else {
        format!("trapped: {root}; plugin output: {output}")
    }
}

impl Policy for WasmPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&mut self, _set_id: &str) -> String {
        self.label()
    }

    fn wants_expected_sizes(&mut self, _set_id: &str) -> bool {
        self.loaded.as_ref().is_ok_and(|l| l.wants_sizes)
    }

    fn expects(
        &mut self,
        _set_id: &str,
        entry: &str,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.call(Hook::Expects, state, |p, s| p.expects(s, entry))
    }

    fn begin_batch(&mut self) -> bool {
        self.batch_spent = Duration::ZERO;
        self.batch_calls = 0;
        if self.published_calls != self.stats.calls {
            self.publish();
        }
        self.take_replacement()
    }

    fn set_waker(&mut self, wake: Waker) {
        let PluginSource::File(path) = &self.source else {
            return;
        };
        match Reloader::spawn(self.host.clone(), self.name.clone(), path.clone(), wake) {
            Ok(reloader) => self.reloader = Some(reloader),
            Err(e) => {
                tracing::warn!(plugin = %self.name, error = %e, "cannot watch the plugin file; a replaced file needs a restart");
            }
        }
    }

    fn on_upload(
        &mut self,
        view: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<UploadVerdict, PolicyError> {
        self.call(Hook::OnUpload, state, |p, s| p.on_upload(s, view))
    }

    fn entry_matches(
        &mut self,
        expected: &ExpectedEntry<'_>,
        view: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.call(Hook::EntryMatches, state, |p, s| {
            p.entry_matches(s, expected, view)
        })
    }

    fn decide(
        &mut self,
        summary: &Summary<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<Decision, PolicyError> {
        self.call(Hook::Decide, state, |p, s| p.decide(s, summary))
    }
}
