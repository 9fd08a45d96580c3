//! Replacing a plugin file while the agent runs: a thread per plugin file
//! notices the change and compiles the replacement off the engine thread;
//! the engine swaps it in at the start of its next batch, and is woken so
//! that happens at once, not at the next re-check.
//!
//! Compiling a large component once stalled every POST for seconds when it
//! ran on the engine thread, and a reload waited for the re-check tick
//! (about 30 s with the default `wait`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::bindings::PolicyPre;
use super::host::{LoadedFrom, PluginHost, hex};
use super::{PluginError, PluginSource};

/// How often a plugin file is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Called when a replacement is ready: it wakes the engine.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A component compiled, checked and linked, not yet instantiated.
pub struct Prepared {
    pub pre: PolicyPre,
    /// The interface version it was built against.
    pub package: &'static str,
    pub sha256: String,
    pub loaded_from: LoadedFrom,
    pub started: Instant,
}

/// Reads, compiles (or takes from the cache), checks and links a component.
pub fn prepare(
    host: &PluginHost,
    name: &str,
    source: &PluginSource,
) -> Result<Prepared, PluginError> {
    let started = Instant::now();
    let bytes = source.bytes(name, host.limits.component_bytes)?;
    let (component, loaded_from) = host.compile(name, &bytes)?;
    let package = host.check_world(name, &component)?;
    let pre = host.instantiate_pre(name, &component, package)?;
    Ok(Prepared {
        pre,
        package,
        sha256: hex(&Sha256::digest(&bytes)),
        loaded_from,
        started,
    })
}

/// What identifies a version of a file: a deploy replaces it (new inode)
/// or rewrites it (new time or length).
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &PathBuf) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The watching thread of one plugin file; it stops when this is dropped.
pub struct Reloader {
    ready: mpsc::Receiver<Result<Prepared, PluginError>>,
    stop: Arc<AtomicBool>,
}

impl Reloader {
    pub fn spawn(
        host: Arc<PluginHost>,
        name: String,
        path: PathBuf,
        wake: Waker,
    ) -> std::io::Result<Reloader> {
        let (tx, ready) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("reload-{name}"))
            .spawn(move || {
                let source = PluginSource::File(path.clone());
                let mut current = stamp(&path);
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let seen = stamp(&path);
                    if seen.is_none() || seen == current {
                        continue;
                    }
                    // Wait until the file holds still (a copy in progress).
                    std::thread::sleep(POLL);
                    if stamp(&path) != seen {
                        continue;
                    }
                    current = seen;
                    tracing::info!(plugin = %name, "policy plugin file replaced; compiling it");
                    if tx.send(prepare(&host, &name, &source)).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(Reloader { ready, stop })
    }

    /// A replacement that finished preparing since the last look.
    pub fn take(&self) -> Option<Result<Prepared, PluginError>> {
        let mut latest = None;
        while let Ok(next) = self.ready.try_recv() {
            latest = Some(next);
        }
        latest
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
