//! Cross-checking datasets against the S3 listing of their prefix
//! (`[reconcile] verify`): notifications can be lost (SQS keeps them 14
//! days, a dead-letter queue, a rule created late), so before a dataset
//! times out, and with `periodic` also while it waits, its prefix is listed
//! and the objects never notified are recorded as uploads.
//!
//! The engine claims a listing in the dataset's record (one agent lists a
//! dataset at a time, even with the shared store), then hands the job to
//! this worker; the result comes back as a [`Command::Listed`]. Listings run
//! off the engine's thread, a few at once, so a slow or failing listing
//! holds up only its own dataset, and never for longer than one re-check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::warn;

use super::engine::Command;
use crate::backoff::Backoff;

/// Listings running at once (their requests also share one rate limit).
const CONCURRENT_LISTINGS: usize = 4;

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
    /// The re-check period: longest a listing may hold up a timeout.
    pub recheck: Duration,
    /// `[share] bucket`: for a dataset no notification named a bucket for.
    pub default_bucket: Option<String>,
}

impl std::fmt::Debug for VerifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifySettings")
            .field("periodic", &self.periodic)
            .field("recheck", &self.recheck)
            .field("default_bucket", &self.default_bucket)
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
        })
    }
}

/// A listing the engine claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingJob {
    pub set_id: String,
    pub bucket: String,
    pub prefix: String,
    /// The claim (the dataset's `listing_ms`): a result for an older claim
    /// is dropped.
    pub claimed_ms: i64,
}

/// The engine's side of the worker.
#[derive(Clone)]
pub struct Listings {
    tx: mpsc::UnboundedSender<ListingJob>,
}

impl Listings {
    /// Queues a listing; false if the worker has stopped.
    pub fn start(&self, job: ListingJob) -> bool {
        self.tx.send(job).is_ok()
    }
}

/// Starts the worker on the current tokio runtime.
pub fn spawn(settings: &VerifySettings, commands: mpsc::Sender<Command>) -> Listings {
    let (tx, mut rx) = mpsc::unbounded_channel::<ListingJob>();
    let lister = settings.lister.clone();
    // A failed listing is retried until one re-check has passed; then the
    // engine decides without it.
    let give_up_after = settings.recheck;
    let slots = Arc::new(Semaphore::new(CONCURRENT_LISTINGS));
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let lister = lister.clone();
            let commands = commands.clone();
            tokio::spawn(async move {
                // A listing that never answers must not keep its slot.
                let result = tokio::time::timeout(
                    give_up_after,
                    list_with_retries(&*lister, &job, give_up_after),
                )
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {give_up_after:?}")));
                drop(slot);
                let _ = commands.send(Command::Listed { job, result }).await;
            });
        }
    });
    Listings { tx }
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
        }
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
