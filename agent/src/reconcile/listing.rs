//! Cross-checking datasets against the S3 listing of their prefix
//! (`[reconcile] verify`): notifications can be lost (SQS keeps them 14
//! days, a dead-letter queue, a rule created late), so before a dataset
//! times out, and with `periodic` also while it waits, its prefix is listed
//! and the objects never notified are recorded as uploads.
//!
//! The engine claims a listing in the dataset's record (one agent lists a
//! dataset at a time, even with the shared store), then hands the job to
//! this worker; the result comes back as a [`Step::Listed`]. Listings run
//! off the engine's thread, a few at once, so a slow or failing listing
//! holds up only its own dataset, and never for longer than one re-check
//! once it runs.
//!
//! The queue is bounded and has two lanes: a listing before a timeout
//! (the dataset's deadline has passed) always goes before a periodic one,
//! and periodic ones are not claimed while [`PERIODIC_QUEUED`] wait. The
//! engine claims a dataset only when no listing of it is queued or running,
//! so a backlog can never replace its own claims.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::warn;

use super::engine::{Command, Step};
use crate::backoff::Backoff;
use crate::store::LocalFile;

/// Listings running at once (their requests also share one rate limit).
const CONCURRENT_LISTINGS: usize = 4;
/// Periodic listings waiting at most; beyond, none is claimed until some
/// have run. Listings before a timeout are one per dataset past its
/// deadline, and always queued.
pub const PERIODIC_QUEUED: usize = 64;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// LastModified, epoch milliseconds.
    pub last_modified_ms: i64,
}

/// What a listing answers: every object, or why it failed.
pub type ListingFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<ListedObject>, String>> + Send + 'a>>;

/// Lists every object under a prefix (the S3 source implements it).
pub trait PrefixLister: Send + Sync + 'static {
    fn list<'a>(&'a self, bucket: &'a str, prefix: &'a str) -> ListingFuture<'a>;
}

/// What the engine needs to cross-check.
#[derive(Clone)]
pub struct VerifySettings {
    pub lister: Arc<dyn PrefixLister>,
    /// `periodic`: (how often, after how long waiting); None: only before a
    /// timeout.
    pub periodic: Option<(Duration, Duration)>,
    /// The re-check period: how long a failing listing is retried before
    /// its dataset's timeout goes ahead without it.
    pub recheck: Duration,
    /// Longest one listing may run, however it is paced: a listing that
    /// never answers gives up then and frees its slot. At least `recheck`
    /// (waiting for the shared request rate is not a failure).
    pub hung_after: Duration,
    /// `[share] bucket`: for a dataset no notification named a bucket for.
    pub default_bucket: Option<String>,
    /// The share: each listed file is looked at there right after the
    /// listing, so S3's copy is compared with the file itself even where no
    /// watcher reported it. None: compare with what the store knows only.
    pub share: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for VerifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifySettings")
            .field("periodic", &self.periodic)
            .field("recheck", &self.recheck)
            .field("hung_after", &self.hung_after)
            .field("default_bucket", &self.default_bucket)
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

impl VerifySettings {
    /// The listing of a dataset's prefix, if its bucket is known: from its
    /// manifest's notification, else `[share] bucket`.
    pub fn job_for(
        &self,
        ds: &crate::store::DatasetRecord,
        dataset_dir: String,
        now: i64,
    ) -> Option<ListingJob> {
        let bucket = ds
            .manifest
            .as_ref()
            .map(|m| m.bucket.clone())
            .filter(|b| !b.is_empty())
            .or_else(|| self.default_bucket.clone())?;
        Some(ListingJob {
            set_id: ds.set_id.clone(),
            bucket,
            prefix: format!("{dataset_dir}/"),
            claimed_ms: now,
            before_timeout: ds.deadline_ms.is_some_and(|d| d <= now),
        })
    }
}

/// A listing the engine claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingJob {
    pub set_id: String,
    pub bucket: String,
    pub prefix: String,
    /// The claim (the dataset's `listing_ms`).
    pub claimed_ms: i64,
    /// Claimed once the dataset's deadline had passed: it runs first.
    pub before_timeout: bool,
}

/// The two lanes of waiting listings.
#[derive(Default)]
struct Queue {
    before_timeout: VecDeque<ListingJob>,
    periodic: VecDeque<ListingJob>,
    stopped: bool,
}

impl Queue {
    fn next(&mut self) -> Option<ListingJob> {
        self.before_timeout
            .pop_front()
            .or_else(|| self.periodic.pop_front())
    }
}

/// The engine's side of the worker.
#[derive(Clone)]
pub struct Listings {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
}

impl Listings {
    /// Queues a listing; false if the worker has stopped, or if it is
    /// periodic and [`PERIODIC_QUEUED`] already wait.
    pub fn start(&self, job: ListingJob) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.stopped {
            return false;
        }
        if job.before_timeout {
            q.before_timeout.push_back(job);
        } else if q.periodic.len() < PERIODIC_QUEUED {
            q.periodic.push_back(job);
        } else {
            return false;
        }
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Whether a periodic listing would be queued now.
    pub fn has_room(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        !q.stopped && q.periodic.len() < PERIODIC_QUEUED
    }

    /// Listings waiting, by lane: (before a timeout, periodic).
    pub fn queued(&self) -> (usize, usize) {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        (q.before_timeout.len(), q.periodic.len())
    }

    async fn next(&self) -> ListingJob {
        loop {
            let wake = self.wake.notified();
            if let Some(job) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).next() {
                return job;
            }
            wake.await;
        }
    }
}

/// Starts the worker on the current tokio runtime.
pub fn spawn(settings: &VerifySettings, commands: mpsc::Sender<Command>) -> Listings {
    let listings = Listings {
        queue: Arc::default(),
        wake: Arc::new(Notify::new()),
    };
    let lister = settings.lister.clone();
    // A failed listing is retried until one re-check has passed; then the
    // engine decides without it. One that never answers is cut later.
    let give_up_after = settings.recheck;
    let hung_after = settings.hung_after.max(give_up_after);
    let slots = Arc::new(Semaphore::new(CONCURRENT_LISTINGS));
    let share = settings.share.clone();
    let worker = listings.clone();
    tokio::spawn(async move {
        loop {
            // The slot first, then the job: the lanes' order holds at the
            // moment a listing can run.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let job = tokio::select! {
                job = worker.next() => job,
                _ = commands.closed() => break,
            };
            let lister = lister.clone();
            let commands = commands.clone();
            let share = share.clone();
            tokio::spawn(async move {
                // A listing that never answers (nor a share that hangs) must
                // not keep its slot.
                let listed = tokio::time::timeout(hung_after, async {
                    let objects = list_with_retries(&*lister, &job, give_up_after).await?;
                    let on_share = match (&share, objects.is_empty()) {
                        (Some(share), false) => {
                            let (share, keys) = (
                                share.clone(),
                                objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
                            );
                            tokio::task::spawn_blocking(move || files_on_share(&share, &keys))
                                .await
                                .unwrap_or_default()
                        }
                        _ => HashMap::new(),
                    };
                    Ok((objects, on_share))
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {hung_after:?}")));
                drop(slot);
                let (result, on_share) = match listed {
                    Ok((objects, on_share)) => (Ok(objects), on_share),
                    Err(e) => (Err(e), HashMap::new()),
                };
                let _ = commands
                    .send(
                        Step::Listed {
                            job,
                            result,
                            on_share,
                        }
                        .into(),
                    )
                    .await;
            });
        }
        let mut q = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.stopped = true;
    });
    listings
}

/// The regular files of the share at listed keys (reached through real
/// directories only; a key with `..` or an absolute part is skipped).
fn files_on_share(share: &std::path::Path, keys: &[String]) -> HashMap<String, LocalFile> {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Component, Path};
    let seen_ms = crate::notification::time::now_ms();
    let mut found = HashMap::new();
    for key in keys {
        if key.ends_with('/')
            || !Path::new(key)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            continue;
        }
        // symlink_metadata: a link is no file of the share.
        if let Ok(meta) = std::fs::symlink_metadata(share.join(key))
            && meta.is_file()
        {
            found.insert(
                key.clone(),
                LocalFile {
                    size: meta.len(),
                    mtime: meta.mtime(),
                    is_dir: false,
                    seen_ms,
                },
            );
        }
    }
    found
}

async fn list_with_retries(
    lister: &dyn PrefixLister,
    job: &ListingJob,
    give_up_after: Duration,
) -> Result<Vec<ListedObject>, String> {
    let give_up_at = Instant::now() + give_up_after;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match lister.list(&job.bucket, &job.prefix).await {
            Ok(objects) => return Ok(objects),
            Err(message) => {
                let delay = backoff.next_delay().unwrap_or(Duration::from_secs(30));
                // Report in time for the re-check that would time it out.
                if Instant::now() + delay * 2 >= give_up_at {
                    return Err(message);
                }
                warn!(set_id = %job.set_id, error = %message, "S3 listing failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Fails `failures` times, then lists one object.
    struct Flaky {
        failures: Mutex<u32>,
    }

    impl PrefixLister for Flaky {
        fn list<'a>(&'a self, _bucket: &'a str, prefix: &'a str) -> ListingFuture<'a> {
            Box::pin(async move {
                let mut left = self.failures.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err("SlowDown: reduce your request rate".into());
                }
                Ok(vec![ListedObject {
                    key: format!("{prefix}a"),
                    size: 1,
                    last_modified_ms: 0,
                }])
            })
        }
    }

    fn job() -> ListingJob {
        ListingJob {
            set_id: "S".into(),
            bucket: "b".into(),
            prefix: "S-vaultjob/".into(),
            claimed_ms: 1,
            before_timeout: false,
        }
    }

    #[tokio::test]
    async fn listings_before_a_timeout_go_first_and_periodic_ones_are_bounded() {
        let listings = Listings {
            queue: Arc::default(),
            wake: Arc::new(Notify::new()),
        };
        for i in 0..PERIODIC_QUEUED {
            let mut j = job();
            j.set_id = format!("P{i}");
            assert!(listings.start(j));
        }
        assert!(!listings.has_room());
        assert!(!listings.start(job()), "a periodic listing past the bound");
        let mut urgent = job();
        urgent.set_id = "Deadline".into();
        urgent.before_timeout = true;
        assert!(
            listings.start(urgent),
            "a listing before a timeout is always queued"
        );
        assert_eq!(listings.queued(), (1, PERIODIC_QUEUED));
        assert_eq!(listings.next().await.set_id, "Deadline");
        assert_eq!(listings.next().await.set_id, "P0");
    }

    #[tokio::test]
    async fn a_throttled_listing_is_retried_within_the_recheck() {
        let lister = Flaky {
            failures: Mutex::new(1),
        };
        let listed = list_with_retries(&lister, &job(), Duration::from_secs(60)).await;
        assert_eq!(listed.unwrap()[0].key, "S-vaultjob/a");
    }

    #[tokio::test]
    async fn a_listing_that_keeps_failing_is_reported_before_the_recheck() {
        let lister = Flaky {
            failures: Mutex::new(u32::MAX),
        };
        let listed = list_with_retries(&lister, &job(), Duration::from_secs(2)).await;
        assert!(listed.unwrap_err().contains("SlowDown"));
    }
}
