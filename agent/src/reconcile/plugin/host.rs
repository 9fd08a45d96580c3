//! The WebAssembly side of the policy host: one wasmtime engine per agent,
//! an epoch ticker that bounds every call in time, a memory limiter per
//! instance, an on-disk cache of compiled components, and the (empty) set of
//! capabilities a plugin gets.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PluginError;
use super::compile_job::CompileJob;
use super::frozen_time::{self, FrozenClock};
use super::output::PluginOutput;

pub(super) mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "reconcile-policy" });
}

use bindings::vault::reconcile::host::{Host, Level};

/// The WIT package this agent implements.
pub const SUPPORTED_PACKAGE: &str = "vault:reconcile@0.1.0";
const POLICY_EXPORT_PREFIX: &str = "vault:reconcile/policy@";
const POLICY_EXPORT: &str = "vault:reconcile/policy@0.1.0";

/// Granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);
/// Longest text a plugin may hand the agent (a log line, a reason, an
/// error), and log lines per call.
pub const TEXT_BYTES: usize = 1024;
const LOG_LINES_PER_CALL: u32 = 16;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub call_timeout: Duration,
    pub memory_bytes: usize,
    /// A plugin's time per engine batch; calls past it wait for a later batch.
    pub batch_budget: Duration,
    /// Largest component file loaded.
    pub component_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            batch_budget: Duration::from_millis(10),
            component_bytes: 16 << 20,
        }
    }
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedFrom {
    Compiled,
    Cache,
}

pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Compile in a bounded child process (needs `cache_dir`); else here.
    compile_job: Option<CompileJob>,
    pub limits: Limits,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// `cache_dir`: where compiled components are kept (None: no cache).
    /// Components are compiled in this process.
    pub fn new(cache_dir: Option<PathBuf>, limits: Limits) -> Result<Arc<PluginHost>, PluginError> {
        PluginHost::with_compile_job(cache_dir, limits, None)
    }

    /// As [`PluginHost::new`], compiling in a bounded child process when
    /// `job` is given (and there is a cache to hand the result over).
    pub fn with_compile_job(
        cache_dir: Option<PathBuf>,
        limits: Limits,
        job: Option<CompileJob>,
    ) -> Result<Arc<PluginHost>, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Host(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| frozen_time::add_to_linker(&mut linker))
            .map_err(|e| PluginError::Host(e.to_string()))?;
        bindings::ReconcilePolicy::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Host(e.to_string()))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticking_engine, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Host(format!("cannot start the epoch ticker: {e}")))?;
        if let Some(dir) = &cache_dir {
            let _ = std::fs::create_dir_all(dir);
        }
        Ok(Arc::new(PluginHost {
            engine,
            linker,
            compile_job: job.filter(|_| cache_dir.is_some()),
            cache_dir,
            limits,
            stop_ticker,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads it from the cache. The cache key is the
    /// component's SHA-256 and the engine's compatibility hash, so a new
    /// agent version or different settings never load a stale artifact.
    pub fn compile(
        &self,
        plugin: &str,
        bytes: &[u8],
    ) -> Result<(Component, LoadedFrom), PluginError> {
        check_magic(plugin, bytes)?;
        let digest = hex(&Sha256::digest(bytes));
        let mut compat = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{:016x}.cwasm", compat.finish())));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash, into the agent's own
            // state directory; a damaged file fails to load and is rebuilt.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok((component, LoadedFrom::Cache)),
                Err(e) => {
                    tracing::warn!(plugin, error = %e, "compiled plugin cache entry unusable; recompiling");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        if let (Some(job), Some(path)) = (&self.compile_job, &cached) {
            return self.compile_in_child(job, plugin, bytes, &digest, path);
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| PluginError::Compile {
            plugin: plugin.to_owned(),
            message: format!("{e:#}"),
        })?;
        if let Some(path) = cached
            && let Ok(blob) = component.serialize()
        {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, blob)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok((component, LoadedFrom::Compiled))
    }

    /// Compiles through a child process into the cache entry `cached`,
    /// then loads that entry.
    fn compile_in_child(
        &self,
        job: &CompileJob,
        plugin: &str,
        bytes: &[u8],
        digest: &str,
        cached: &Path,
    ) -> Result<(Component, LoadedFrom), PluginError> {
        let failed = |message: String| PluginError::Compile {
            plugin: plugin.to_owned(),
            message,
        };
        let input = cached.with_file_name(format!("{digest}.wasm.tmp"));
        let output = cached.with_extension("child.tmp");
        let result = std::fs::write(&input, bytes)
            .map_err(|e| format!("cannot write {}: {e}", input.display()))
            .and_then(|()| job.run(&input, &output))
            .and_then(|()| {
                std::fs::rename(&output, cached)
                    .map_err(|e| format!("cannot write {}: {e}", cached.display()))
            });
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
        result.map_err(failed)?;
        // SAFETY: written just now by this same binary's `plugin compile`
        // (same engine settings), into the agent's own state directory.
        let component = unsafe { Component::deserialize_file(&self.engine, cached) }
            .map_err(|e| failed(format!("{e:#}")))?;
        Ok((component, LoadedFrom::Compiled))
    }

    /// Compiles `wasm` into a loadable artifact at `out` (the child side of
    /// [`CompileJob`]).
    pub fn precompile_file(&self, wasm: &Path, out: &Path) -> Result<(), PluginError> {
        let (name, bytes) = read_wasm(wasm)?;
        let blob = self
            .engine
            .precompile_component(&bytes)
            .map_err(|e| PluginError::Compile {
                plugin: name.clone(),
                message: format!("{e:#}"),
            })?;
        std::fs::write(out, blob).map_err(|e| PluginError::Host(format!("{}: {e}", out.display())))
    }

    /// Checks the component exports the policy interface of a supported version.
    pub fn check_world(&self, plugin: &str, component: &Component) -> Result<(), PluginError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if exports.iter().any(|e| e == POLICY_EXPORT) {
            return Ok(());
        }
        if let Some(other) = exports.iter().find(|e| e.starts_with(POLICY_EXPORT_PREFIX)) {
            return Err(PluginError::WrongVersion {
                plugin: plugin.to_owned(),
                found: other.replacen("/policy", "", 1),
            });
        }
        Err(PluginError::MissingExport {
            plugin: plugin.to_owned(),
            exports,
        })
    }

    pub fn instantiate_pre(
        &self,
        plugin: &str,
        component: &Component,
    ) -> Result<bindings::ReconcilePolicyPre<HostState>, PluginError> {
        let link = |e: wasmtime::Error| PluginError::Link {
            plugin: plugin.to_owned(),
            message: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(component).map_err(link)?;
        bindings::ReconcilePolicyPre::new(pre).map_err(link)
    }

    /// A fresh store: no files, network, environment or clock; output
    /// captured (a panic message ends up in the error).
    pub fn new_store(&self, plugin: &str) -> Store<HostState> {
        let output = PluginOutput::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(self.limits.memory_bytes),
            plugin: plugin.to_owned(),
            output,
            log_budget: LOG_LINES_PER_CALL,
            captured: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
    }

    /// Runs a `wasi:cli/command` component that links against the plugin
    /// interface: a policy crate's unit tests, with this host as cargo's
    /// runner. Stdout and stderr are inherited and `args` passed; otherwise
    /// it gets what a plugin gets (no files, network or clock). Returns
    /// whether it exited successfully.
    pub fn run_command(&self, path: &Path, args: &[String]) -> Result<bool, PluginError> {
        use wasmtime_wasi::p2::bindings::sync::CommandPre;
        const TEST_RUN_LIMIT: u64 = 10 * 60 * 1000; // epoch ticks of 1 ms
        let name = path.display().to_string();
        let failed = |e: wasmtime::Error| PluginError::Init {
            plugin: name.clone(),
            message: format!("{e:#}"),
        };
        let (_, bytes) = read_wasm(path)?;
        let component = Component::new(&self.engine, &bytes).map_err(|e| PluginError::Compile {
            plugin: name.clone(),
            message: format!("{e:#}"),
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(CommandPre::new)
            .map_err(failed)?;
        let wasi = WasiCtxBuilder::new()
            .inherit_stdout()
            .inherit_stderr()
            .args(args)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter::new(self.limits.memory_bytes),
                plugin: name.clone(),
                output: PluginOutput::default(),
                log_budget: u32::MAX,
                captured: None,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(TEST_RUN_LIMIT);
        let command = pre.instantiate(&mut store).map_err(failed)?;
        match command.wasi_cli_run().call_run(&mut store) {
            Ok(result) => Ok(result.is_ok()),
            // A failed test panics, and panics abort in WebAssembly.
            Err(e) => {
                eprintln!(
                    "\n{name}: {}\n(a test panicked, and a panic aborts a WebAssembly test run; \
                     `cargo test -- --nocapture` shows its message)",
                    e.root_cause()
                );
                Ok(false)
            }
        }
    }

    /// Epoch ticks of one call's deadline.
    pub fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }
}

/// A WebAssembly file named by its path (for the CLI's own commands).
fn read_wasm(path: &Path) -> Result<(String, Vec<u8>), PluginError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
        plugin: name.clone(),
        path: name.clone(),
        message: e.to_string(),
    })?;
    check_magic(&name, &bytes)?;
    Ok((name, bytes))
}

fn check_magic(plugin: &str, bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(PluginError::NotWasm {
            plugin: plugin.to_owned(),
        });
    }
    // Layer 0 is a core module; components are layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::CoreModule {
            plugin: plugin.to_owned(),
        });
    }
    Ok(())
}

/// Text from a plugin, cut to [`TEXT_BYTES`] (at a character boundary) so
/// what it returns cannot grow memory, `/status` or the log.
pub fn capped(mut text: String) -> String {
    if text.len() > TEXT_BYTES {
        let mut cut = TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [cut]");
        text.shrink_to_fit();
    }
    text
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-instance state: WASI plumbing with no capabilities, limits, logging.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: Limiter,
    plugin: String,
    output: PluginOutput,
    pub(super) log_budget: u32,
    /// `plugin test` collects log lines here instead of logging them.
    pub(super) captured: Option<Vec<String>>,
}

impl HostState {
    /// What the plugin wrote to stdout/stderr in this call (its panic
    /// message, say), capped.
    pub fn output(&self) -> String {
        self.output.text()
    }

    pub fn begin_call(&mut self) {
        self.log_budget = LOG_LINES_PER_CALL;
        self.limiter.hit = false;
        self.output.clear();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::vault::reconcile::types::Host for HostState {}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let message = capped(message);
        if let Some(lines) = self.captured.as_mut() {
            let name = match level {
                Level::Debug => "debug",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Error => "error",
            };
            lines.push(format!("{name}: {message}"));
            return;
        }
        let plugin = self.plugin.as_str();
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Caps the linear memory of an instance, all its memories together (a
/// component may hold several: four of 62.5 MiB once ran under a 64 MiB
/// cap), and remembers whether the cap was hit.
pub struct Limiter {
    memory_limit: usize,
    /// Bytes of every memory of the instance.
    total: usize,
    pub(super) peak: usize,
    pub(super) hit: bool,
}

impl Limiter {
    pub fn new(memory_limit: usize) -> Limiter {
        Limiter {
            memory_limit,
            total: 0,
            peak: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    /// Called when a memory is created (from 0) and when it grows.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.memory_limit {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_holds_for_all_memories_together() {
        const MIB: usize = 1 << 20;
        let mut limiter = Limiter::new(64 * MIB);
        let quarter = 62 * MIB + MIB / 2;
        assert!(limiter.memory_growing(0, quarter, None).unwrap());
        // A second memory of the same instance would pass a per-memory cap.
        assert!(!limiter.memory_growing(0, quarter, None).unwrap());
        assert!(limiter.hit);
        // Growing the first memory within the cap still works.
        assert!(limiter.memory_growing(quarter, 63 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, MIB, None).unwrap());
        assert_eq!(limiter.peak, 64 * MIB);
    }
}
