//! The share watcher: what is written into `*<job_dir_suffix>` datasets on
//! this host, so the agent knows what is still pending long before the cloud
//! says anything.
//!
//! One thread owns a notify watcher (inotify on Linux): the share root
//! non-recursively (new datasets), each dataset recursively. Events are
//! gathered for a few milliseconds, the touched paths stat'ed, and the
//! observations sent to the engine, which keeps them with the dataset's
//! records. Nothing may be missed:
//! - a dataset that exists at start-up, or appears later, is scanned in full;
//! - a directory that appears is scanned (files made before its watch was
//!   added);
//! - a queue overflow, or a directory removed or renamed, rescans the
//!   dataset, and entries the scan no longer finds are forgotten.
//!
//! inotify sees only writes made on this host; `[share] watch = "poll"`
//! rescans every interval instead (for datasets written by other NFS
//! clients), and the watcher falls back to it, loudly, when the inotify watch
//! limit is hit.

mod mount;
pub mod scan;

pub use mount::ShareStatus;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RemoveKind};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{error, info, warn};

use crate::notification::Classifier;
use crate::notification::time::now_ms;
use crate::reconcile::{EngineHandle, LocalChange};
use crate::telemetry;

/// How long events are gathered before they are stat'ed and sent.
const GATHER: Duration = Duration::from_millis(50);
/// Observations per message to the engine.
const CHUNK: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    Inotify,
    Poll(Duration),
}

#[derive(Debug, Clone)]
pub struct WatcherSettings {
    pub share: PathBuf,
    pub classifier: Classifier,
    pub mode: WatchMode,
    /// Seal a dataset that has had no local change for this long.
    pub seal_after: Option<Duration>,
}

/// Starts the watcher thread; it stops when the engine does. It waits for
/// the share to appear, and attaches again when it is remounted.
pub fn spawn(
    settings: WatcherSettings,
    engine: EngineHandle,
    status: ShareStatus,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("share-watcher".into())
        .spawn(move || mount::supervise(settings, engine, status))
        .map(|_| ())
}

/// Why [`run`] returned.
enum Exit {
    /// The engine stopped.
    Stopped,
    /// The share went away or was remounted (another device).
    ShareChanged,
}

enum AnyWatcher {
    Inotify(RecommendedWatcher),
    Poll(PollWatcher),
}

impl AnyWatcher {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        match self {
            AnyWatcher::Inotify(w) => w.watch(path, mode),
            AnyWatcher::Poll(w) => w.watch(path, mode),
        }
    }
}

struct State {
    settings: WatcherSettings,
    engine: EngineHandle,
    watcher: AnyWatcher,
    events: Receiver<notify::Result<Event>>,
    datasets: HashSet<PathBuf>,
    /// Last local change per dataset, for auto-seal.
    last_change: BTreeMap<PathBuf, Instant>,
}

fn make_watcher(mode: WatchMode) -> notify::Result<(AnyWatcher, Receiver<notify::Result<Event>>)> {
    let (tx, rx) = channel();
    let watcher = match mode {
        // Links are never followed: a link on the share may point anywhere.
        WatchMode::Inotify => AnyWatcher::Inotify(RecommendedWatcher::new(
            tx,
            notify::Config::default().with_follow_symlinks(false),
        )?),
        WatchMode::Poll(every) => AnyWatcher::Poll(PollWatcher::new(
            tx,
            notify::Config::default()
                .with_poll_interval(every)
                .with_follow_symlinks(false),
        )?),
    };
    Ok((watcher, rx))
}

fn run(settings: WatcherSettings, engine: EngineHandle, device: u64) -> notify::Result<Exit> {
    let (watcher, events) = make_watcher(settings.mode)?;
    let mut state = State {
        settings,
        engine,
        watcher,
        events,
        datasets: HashSet::new(),
        last_change: BTreeMap::new(),
    };
    let share = state.settings.share.clone();
    state.watch(&share, RecursiveMode::NonRecursive)?;
    info!(share = %share.display(), mode = ?state.settings.mode, "share watcher started");
    for dir in state.dataset_dirs() {
        state.track(dir);
    }
    loop {
        let first = match state.events.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Stopped),
        };
        if !state.engine.is_running() {
            return Ok(Exit::Stopped);
        }
        if mount::device_of(&share) != Some(device) {
            return Ok(Exit::ShareChanged);
        }
        let mut batch: Vec<notify::Result<Event>> = first.into_iter().collect();
        let until = Instant::now() + GATHER;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match state.events.recv_timeout(left) {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        state.handle(batch);
        state.auto_seal();
    }
}

impl State {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        match self.watcher.watch(path, mode) {
            Err(e)
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
                    && matches!(self.watcher, AnyWatcher::Inotify(_)) =>
            {
                let every = Duration::from_secs(10);
                error!(
                    "the inotify watch limit is reached (raise fs.inotify.max_user_watches); \
                     FALLING BACK TO POLLING the share every {every:?}"
                );
                let (watcher, events) = make_watcher(WatchMode::Poll(every))?;
                self.watcher = watcher;
                self.events = events;
                self.settings.mode = WatchMode::Poll(every);
                let share = self.settings.share.clone();
                self.watcher.watch(&share, RecursiveMode::NonRecursive)?;
                for dir in self.datasets.clone() {
                    self.watcher.watch(&dir, RecursiveMode::Recursive)?;
                }
                self.watcher.watch(path, mode)
            }
            other => other,
        }
    }

    fn dataset_dirs(&self) -> Vec<PathBuf> {
        let suffix = self.settings.classifier.job_dir_suffix();
        let Ok(read) = std::fs::read_dir(&self.settings.share) else {
            return Vec::new();
        };
        read.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() > suffix.len() && n.ends_with(suffix))
            })
            .collect()
    }

    /// Starts tracking a dataset directory: watch first, then scan, so no
    /// file falls between the two.
    fn track(&mut self, dir: PathBuf) {
        if !is_real_dir(&dir) || !self.datasets.insert(dir.clone()) {
            return;
        }
        if let Err(e) = self.watch(&dir, RecursiveMode::Recursive) {
            error!(dataset = %dir.display(), error = %e, "cannot watch a dataset; it is only scanned");
        }
        self.rescan(&dir);
    }

    /// Scans a dataset in full, then forgets entries the scan did not see.
    fn rescan(&mut self, dir: &Path) {
        metrics::counter!(telemetry::WATCHER_RESCANS).increment(1);
        let started = now_ms();
        self.scan(dir, started);
        let Some((set_id, _)) =
            scan::entry_of(&self.settings.share, &self.settings.classifier, dir)
        else {
            return;
        };
        let _ = self.engine.blocking_prune(set_id, started);
        self.last_change.insert(dir.to_owned(), Instant::now());
    }

    fn scan(&self, dir: &Path, now: i64) {
        let mut changes = Vec::new();
        scan::walk(dir, |path| {
            if let Some(c) =
                scan::change(&self.settings.share, &self.settings.classifier, &path, now)
            {
                changes.push(c);
                if changes.len() >= CHUNK {
                    self.send(std::mem::take(&mut changes));
                }
            }
        });
        self.send(changes);
    }

    fn send(&self, changes: Vec<LocalChange>) {
        if !changes.is_empty() && self.engine.blocking_local(changes).is_err() {
            warn!("the engine stopped; dropping local observations");
        }
    }

    fn handle(&mut self, batch: Vec<notify::Result<Event>>) {
        metrics::counter!(telemetry::WATCHER_EVENTS).increment(batch.len() as u64);
        let share = self.settings.share.clone();
        let mut touched: Vec<PathBuf> = Vec::new();
        let mut new_dirs: Vec<PathBuf> = Vec::new();
        let mut rescan: HashSet<PathBuf> = HashSet::new();
        let mut rescan_all = false;
        for event in batch {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "watch error; rescanning the datasets");
                    rescan_all = true;
                    continue;
                }
            };
            if event.need_rescan() {
                metrics::counter!(telemetry::WATCHER_OVERFLOWS).increment(1);
                warn!("the watch queue overflowed; rescanning the datasets");
                rescan_all = true;
            }
            for path in &event.paths {
                if path.parent() == Some(share.as_path()) {
                    // A new dataset directory at the share root.
                    if is_real_dir(path)
                        && scan::entry_of(&share, &self.settings.classifier, path).is_some()
                    {
                        new_dirs.push(path.clone());
                    }
                    continue;
                }
                let dataset = dataset_root(&share, path);
                match event.kind {
                    EventKind::Remove(RemoveKind::Folder)
                    | EventKind::Modify(ModifyKind::Name(_))
                        if path.symlink_metadata().is_err() =>
                    {
                        // A directory (or something renamed away): its
                        // children vanished with it.
                        if let Some(d) = &dataset {
                            rescan.insert(d.clone());
                        }
                    }
                    EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
                        if is_real_dir(path) =>
                    {
                        new_dirs.push(path.clone());
                    }
                    EventKind::Access(_) => {}
                    _ => touched.push(path.clone()),
                }
                if let Some(d) = dataset {
                    self.last_change.insert(d, Instant::now());
                }
            }
        }
        if rescan_all {
            for dir in self.dataset_dirs() {
                if self.datasets.contains(&dir) {
                    self.rescan(&dir);
                } else {
                    self.track(dir);
                }
            }
            return;
        }
        let now = now_ms();
        touched.sort();
        touched.dedup();
        let mut changes = Vec::new();
        for path in touched {
            if let Some(c) = scan::change(&share, &self.settings.classifier, &path, now) {
                changes.push(c);
                if changes.len() >= CHUNK {
                    self.send(std::mem::take(&mut changes));
                }
            }
        }
        self.send(changes);
        for dir in new_dirs {
            if dir.parent() == Some(share.as_path()) {
                self.track(dir);
            } else {
                self.scan(&dir, now);
            }
        }
        for dir in rescan {
            self.rescan(&dir);
        }
    }

    /// Seals datasets that have been quiet for `seal_after` and have no manifest.
    fn auto_seal(&mut self) {
        let Some(after) = self.settings.seal_after else {
            return;
        };
        let quiet: Vec<PathBuf> = self
            .last_change
            .iter()
            .filter(|(_, t)| t.elapsed() >= after)
            .map(|(d, _)| d.clone())
            .collect();
        for dir in quiet {
            self.last_change.remove(&dir);
            // No checksums here: reading every file would hold the watcher;
            // the agent computes each one when it verifies its content.
            let options = crate::share::seal::SealOptions {
                wait_for_writers: Duration::ZERO,
                force: false,
                checksums: None,
            };
            match crate::share::seal::seal(&dir, &self.settings.classifier, &options) {
                Ok(report) => {
                    info!(dataset = %dir.display(), entries = report.lines, "auto-sealed after {after:?} without changes")
                }
                Err(crate::share::seal::SealError::AlreadySealed { .. }) => {}
                Err(e) => {
                    warn!(dataset = %dir.display(), error = %e, "auto-seal skipped; will retry after the next quiet period")
                }
            }
        }
    }
}

/// A directory, not a link to one.
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The `*-vaultjob` directory a path is in.
fn dataset_root(share: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(share).ok()?;
    let top = rel.components().next()?;
    Some(share.join(top))
}
