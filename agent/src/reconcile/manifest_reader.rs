//! Reads manifests off the engine thread, each on a thread of its own, so a
//! slow or hung read (a dead NFS server) delays only its own dataset.
//!
//! A read that takes longer than the timeout is reported to the engine as
//! failed (its dataset notes it and retries at a later re-check). Its
//! thread is abandoned, since a thread blocked in the kernel cannot be
//! cancelled, and counted: at most [`MAX_HUNG`] may hang at once. Past that
//! new reads are refused at once and `/healthz` reports the reader stuck.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::engine::{Command, Step};
use super::manifest;
use crate::health::Health;

/// Reads abandoned while still blocked, before new ones are refused.
pub const MAX_HUNG: usize = 8;

pub struct ManifestJob {
    pub set_id: String,
    pub key: String,
    pub dir: String,
    pub with_sizes: bool,
    /// The event time of the manifest notification this read is for.
    pub manifest_time: i64,
}

#[derive(Debug, Clone)]
pub struct ReaderSettings {
    pub share: PathBuf,
    pub max_bytes: u64,
    pub timeout: Duration,
}

enum Message {
    Job(ManifestJob),
    Done {
        id: u64,
        result: Result<Vec<manifest::ExpectedLine>, String>,
    },
}

/// The engine's side: queue a read; the result comes back as a
/// [`Step::ManifestRead`].
#[derive(Clone)]
pub struct ManifestReader {
    tx: Sender<Message>,
}

impl ManifestReader {
    /// Queues a read; false if the reader has stopped.
    pub fn read(&self, job: ManifestJob) -> bool {
        self.tx.send(Message::Job(job)).is_ok()
    }
}

struct InFlight {
    set_id: String,
    manifest_time: i64,
    started: Instant,
    /// Reported to the engine as timed out; its thread still hangs.
    hung: bool,
}

pub fn spawn(
    settings: ReaderSettings,
    commands: mpsc::Sender<Command>,
    health: Health,
) -> ManifestReader {
    let (tx, rx) = channel();
    let reader = ManifestReader { tx: tx.clone() };
    let coordinator = Coordinator {
        settings,
        commands,
        health,
        done: tx,
        in_flight: HashMap::new(),
        next_id: 0,
    };
    if let Err(e) = std::thread::Builder::new()
        .name("manifest-reader".into())
        .spawn(move || coordinator.run(rx))
    {
        error!(error = %e, "cannot start the manifest reader thread");
    }
    reader
}

struct Coordinator {
    settings: ReaderSettings,
    commands: mpsc::Sender<Command>,
    health: Health,
    done: Sender<Message>,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
}

impl Coordinator {
    fn run(mut self, rx: Receiver<Message>) {
        loop {
            let wait = self
                .in_flight
                .values()
                .filter(|r| !r.hung)
                .map(|r| self.settings.timeout.saturating_sub(r.started.elapsed()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let keep_going = match rx.recv_timeout(wait) {
                Ok(Message::Job(job)) => self.start(job),
                Ok(Message::Done { id, result }) => self.finish(id, result),
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            if !keep_going || !self.expire() {
                return;
            }
        }
    }

    fn hung(&self) -> usize {
        self.in_flight.values().filter(|r| r.hung).count()
    }

    /// Sends a result to the engine; false once the engine has stopped.
    fn report(
        &self,
        set_id: String,
        manifest_time: i64,
        result: Result<Vec<manifest::ExpectedLine>, String>,
    ) -> bool {
        metrics::counter!(crate::telemetry::MANIFEST_READS).increment(1);
        if result.is_err() {
            metrics::counter!(crate::telemetry::MANIFEST_READ_FAILURES).increment(1);
        }
        self.commands
            .blocking_send(
                Step::ManifestRead {
                    set_id,
                    manifest_time,
                    result,
                }
                .into(),
            )
            .is_ok()
    }

    fn start(&mut self, job: ManifestJob) -> bool {
        if let Some(running) = self.in_flight.values().find(|r| r.set_id == job.set_id) {
            if !running.hung {
                // Its result (or its timeout) answers this request too.
                return true;
            }
            let message = format!(
                "the previous read of this manifest has hung for {} s; the share is not answering",
                running.started.elapsed().as_secs()
            );
            return self.report(job.set_id, job.manifest_time, Err(message));
        }
        if self.hung() >= MAX_HUNG {
            let message = format!(
                "{MAX_HUNG} manifest reads hang on the share; not reading more until one returns"
            );
            return self.report(job.set_id, job.manifest_time, Err(message));
        }
        let id = self.next_id;
        self.next_id += 1;
        let done = self.done.clone();
        let settings = self.settings.clone();
        let ManifestJob {
            set_id,
            key,
            dir,
            with_sizes,
            manifest_time,
        } = job;
        let spawned = std::thread::Builder::new()
            .name("manifest-read".into())
            .spawn(move || {
                let result =
                    manifest::read(&settings.share, &key, &dir, with_sizes, settings.max_bytes)
                        .map_err(|e| e.to_string());
                let _ = done.send(Message::Done { id, result });
            });
        match spawned {
            Ok(_) => {
                self.in_flight.insert(
                    id,
                    InFlight {
                        set_id,
                        manifest_time,
                        started: Instant::now(),
                        hung: false,
                    },
                );
                true
            }
            Err(e) => self.report(
                set_id,
                manifest_time,
                Err(format!("cannot start a manifest read: {e}")),
            ),
        }
    }

    fn finish(&mut self, id: u64, result: Result<Vec<manifest::ExpectedLine>, String>) -> bool {
        let Some(read) = self.in_flight.remove(&id) else {
            return true;
        };
        if read.hung {
            // Already reported as failed; the next re-check reads again.
            warn!(set_id = %read.set_id, secs = read.started.elapsed().as_secs(), "a hung manifest read returned");
            return true;
        }
        self.report(read.set_id, read.manifest_time, result)
    }

    /// Reports reads past the timeout as failed, and updates health.
    fn expire(&mut self) -> bool {
        let timeout = self.settings.timeout;
        let mut expired = Vec::new();
        for read in self.in_flight.values_mut() {
            if !read.hung && read.started.elapsed() >= timeout {
                read.hung = true;
                expired.push((read.set_id.clone(), read.manifest_time));
            }
        }
        for (set_id, manifest_time) in expired {
            warn!(%set_id, ?timeout, "a manifest read timed out; only this dataset waits");
            let message = format!(
                "reading the manifest took longer than {}; the share is not answering (retrying at a later re-check)",
                humantime::format_duration(timeout)
            );
            if !self.report(set_id, manifest_time, Err(message)) {
                return false;
            }
        }
        let hung = self.hung();
        if hung >= MAX_HUNG {
            self.health.set(
                "manifest-reader",
                format!("{hung} manifest reads hang on the share; no manifest can be read"),
            );
        } else {
            self.health.clear("manifest-reader");
        }
        true
    }
}
