//! Content verification (`[reconcile] verify_content`): an upload's bytes
//! are proven when S3's own checksum of the object equals the checksum of
//! the file on the share. S3 keeps a full-object CRC64NVME of every object
//! uploaded since December 2024 (multipart too), read with one `HeadObject`
//! (`ChecksumMode=ENABLED`) without downloading a byte.
//!
//! The engine hands each recorded upload to this worker once committed; the
//! outcome comes back as a [`Step::ContentChecked`]. Requests run off the
//! engine's thread, paced over all datasets, retried like listings; the
//! queue is bounded (a re-check queues again what did not fit).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::warn;

use super::engine::{Command, Step};
use crate::backoff::Backoff;
use crate::checksum::file::Checksums;
use crate::checksum::{self, Algorithm, Stamp};
use crate::store::{ContentCheck, ContentOutcome};

pub use crate::config::ContentMode;

/// What S3 keeps of an object: its size and checksums (as `HeadObject`
/// answers them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectChecksums {
    pub size: u64,
    /// (algorithm, value as S3 gives it; a composite one ends in `-PARTS`).
    pub checksums: Vec<(Algorithm, String)>,
    /// `FULL_OBJECT` or `COMPOSITE`, when S3 says.
    pub checksum_type: Option<String>,
}

/// What looking an object up answers: its checksums, or why it failed
/// (`None`: S3 has no such object).
pub type HeadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<ObjectChecksums>, String>> + Send + 'a>>;

/// Reads an object's checksums (the S3 source implements it).
pub trait ObjectHeads: Send + Sync + 'static {
    fn head<'a>(&'a self, bucket: &'a str, key: &'a str) -> HeadFuture<'a>;
}

/// What the engine needs to verify content.
#[derive(Clone)]
pub struct ContentSettings {
    pub heads: Arc<dyn ObjectHeads>,
    /// The mode of set-ids no route names.
    pub default: ContentMode,
    /// Per-route modes: the first glob that matches a set-id wins.
    pub routes: Vec<(glob::Pattern, ContentMode)>,
    pub share: PathBuf,
    /// How long a failing request is retried before the check is left
    /// pending (a later re-check queues it again).
    pub give_up_after: Duration,
    /// How old a claim to check an upload must be before another re-check
    /// (of any agent) claims it again: the claimer died, or its queue was
    /// full. Also how often a re-check looks for such uploads.
    pub claim_expires_after: Duration,
}

impl std::fmt::Debug for ContentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentSettings")
            .field("default", &self.default)
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

impl ContentSettings {
    pub fn mode_for(&self, set_id: &str) -> ContentMode {
        self.routes
            .iter()
            .find(|(glob, _)| glob.matches(set_id))
            .map_or(self.default, |(_, mode)| *mode)
    }
}

/// One upload to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentJob {
    pub set_id: String,
    /// The entry (the manifest line).
    pub entry: String,
    pub bucket: String,
    /// The object's key (the path relative to the share).
    pub key: String,
    /// The upload's event time: a newer upload makes this check moot.
    pub upload_time: i64,
}

/// Checks waiting at most; beyond, a re-check queues them again later.
pub const QUEUED_MAX: usize = 100_000;
/// Requests (and file reads) at once.
const CONCURRENT: usize = 8;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<ContentJob>,
    /// (set-id, entry) queued or running: never twice.
    in_flight: HashSet<(String, String)>,
    /// How many of those each dataset has (a re-check asks per dataset).
    by_dataset: HashMap<String, usize>,
    stopped: bool,
}

/// The engine's side of the worker.
#[derive(Clone)]
pub struct ContentChecks {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
}

impl ContentChecks {
    /// Queues a check; false if it is queued already, the queue is full,
    /// or the worker has stopped.
    pub fn start(&self, job: ContentJob) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.stopped || q.jobs.len() >= QUEUED_MAX {
            return false;
        }
        if !q.in_flight.insert((job.set_id.clone(), job.entry.clone())) {
            return false;
        }
        *q.by_dataset.entry(job.set_id.clone()).or_default() += 1;
        q.jobs.push_back(job);
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Checks of `set_id` queued or running.
    pub fn checking(&self, set_id: &str) -> usize {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.by_dataset.get(set_id).copied().unwrap_or(0)
    }

    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .len()
    }

    fn done(&self, job: &ContentJob) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.in_flight.remove(&(job.set_id.clone(), job.entry.clone()))
            && let Some(n) = q.by_dataset.get_mut(&job.set_id)
        {
            *n -= 1;
            if *n == 0 {
                q.by_dataset.remove(&job.set_id);
            }
        }
    }

    async fn next(&self) -> Option<ContentJob> {
        loop {
            let wake = self.wake.notified();
            {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.stopped {
                    return None;
                }
                if let Some(job) = q.jobs.pop_front() {
                    return Some(job);
                }
            }
            wake.await;
        }
    }
}

/// Starts the worker on the current tokio runtime.
pub fn spawn(settings: &ContentSettings, commands: mpsc::Sender<Command>) -> ContentChecks {
    let checks = ContentChecks {
        queue: Arc::default(),
        wake: Arc::new(Notify::new()),
    };
    let worker = checks.clone();
    let settings = Arc::new(settings.clone());
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let sums = Arc::new(ChecksumCache::default());
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let job = tokio::select! {
                job = worker.next() => job,
                _ = commands.closed() => None,
            };
            let Some(job) = job else { break };
            let (settings, commands, worker, sums) = (
                settings.clone(),
                commands.clone(),
                worker.clone(),
                sums.clone(),
            );
            tokio::spawn(async move {
                let result = check(&settings, &sums, &job).await;
                drop(slot);
                worker.done(&job);
                if let Some(check) = result {
                    let step = Step::ContentChecked { job, check };
                    let _ = commands.send(step.into()).await;
                }
            });
        }
        let mut q = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.stopped = true;
    });
    checks
}

/// One check: S3's checksums, then the file's, compared. None: S3 could
/// not be asked within the retry budget (left pending).
async fn check(
    settings: &ContentSettings,
    sums: &Arc<ChecksumCache>,
    job: &ContentJob,
) -> Option<ContentCheck> {
    let give_up_at = Instant::now() + settings.give_up_after;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let object = loop {
        match settings.heads.head(&job.bucket, &job.key).await {
            Ok(object) => break object,
            Err(message) => {
                let delay = backoff.next_delay().unwrap_or(Duration::from_secs(30));
                if Instant::now() + delay >= give_up_at {
                    warn!(set_id = %job.set_id, key = %job.key, error = %message, "could not read the object's checksum; a later re-check tries again");
                    return None;
                }
                tokio::time::sleep(delay).await;
            }
        }
    };
    let Some(object) = object else {
        let detail = "S3 has no such object (deleted or replaced since its notification)";
        return Some(ContentCheck::new(
            job.upload_time,
            ContentOutcome::Unverifiable,
            detail,
            crate::notification::time::now_ms(),
        ));
    };
    let (share, key, set_id, sums) = (
        settings.share.clone(),
        job.key.clone(),
        job.set_id.clone(),
        sums.clone(),
    );
    let judged = tokio::task::spawn_blocking(move || {
        judge(&object, |algorithm| {
            local_checksum(&share, &set_id, &key, algorithm, &sums)
        })
    })
    .await
    .unwrap_or_else(|_| {
        (
            ContentOutcome::Unverifiable,
            "reading the file failed".into(),
        )
    });
    let now = crate::notification::time::now_ms();
    Some(ContentCheck::new(job.upload_time, judged.0, &judged.1, now))
}

/// Which of S3's checksums to compare, best first, and why none can be.
pub fn usable_checksum(object: &ObjectChecksums) -> Result<(Algorithm, &str), String> {
    let composite_type = object
        .checksum_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
    let mut composite = None;
    for algorithm in Algorithm::ALL {
        let Some((_, value)) = object.checksums.iter().find(|(a, _)| *a == algorithm) else {
            continue;
        };
        // A composite checksum (of the parts' checksums) ends in `-PARTS`.
        if composite_type || value.contains('-') {
            composite.get_or_insert(algorithm);
            continue;
        }
        return Ok((algorithm, value));
    }
    Err(match composite {
        Some(a) => format!(
            "S3 keeps only a composite multipart {a} checksum, whose part layout cannot be known"
        ),
        None => "S3 keeps no checksum of the object (uploaded before S3's default, or without one)"
            .into(),
    })
}

/// Compares an object with its file, whose checksum `local` computes (or
/// looks up) by algorithm as (size, value). Returns the outcome and its
/// detail: both checksums, or why they could not be compared.
pub fn judge(
    object: &ObjectChecksums,
    local: impl FnOnce(Algorithm) -> std::io::Result<(u64, String)>,
) -> (ContentOutcome, String) {
    let (algorithm, s3) = match usable_checksum(object) {
        Ok(found) => found,
        Err(why) => return (ContentOutcome::Unverifiable, why),
    };
    let (size, here) = match local(algorithm) {
        Ok(found) => found,
        Err(e) => {
            return (
                ContentOutcome::Unverifiable,
                format!("the file on the share cannot be read: {e}"),
            );
        }
    };
    if size != object.size {
        return (
            ContentOutcome::Mismatch,
            format!(
                "S3 holds {} bytes, the share {size} ({algorithm} S3 {s3}, the share {here})",
                object.size
            ),
        );
    }
    if here == s3 {
        (ContentOutcome::Verified, format!("{algorithm} {s3}"))
    } else {
        (
            ContentOutcome::Mismatch,
            format!("{algorithm}: S3 {s3}, the share {here}"),
        )
    }
}

/// A file's checksum by algorithm: a CRC64NVME from the dataset's checksum
/// file when it is of the file's current version, else read from the file
/// (then kept, for the next check of the same version).
pub fn local_checksum(
    share: &Path,
    set_id: &str,
    key: &str,
    algorithm: Algorithm,
    cache: &ChecksumCache,
) -> std::io::Result<(u64, String)> {
    let path = within_share(share, key)?;
    let (_, meta) = checksum::open_regular(&path)?;
    let stamp = Stamp::of(&meta);
    if algorithm == Algorithm::Crc64Nvme
        && let Some(crc) = cache.lookup(share, set_id, key, stamp)
    {
        return Ok((stamp.size, crc));
    }
    let (stamp, value) = checksum::of_file(&path, algorithm, |_| {})?;
    Ok((stamp.size, value))
}

/// The path of an object key on the share, through real directories only
/// (no `..`, no absolute part, no link on the way).
fn within_share(share: &Path, key: &str) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let rel = Path::new(key);
    if key.ends_with('/') || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::other("not a file path of the share"));
    }
    let mut at = share.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        let meta = std::fs::symlink_metadata(&at)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a real directory",
                at.display()
            )));
        }
    }
    Ok(share.join(rel))
}

/// The datasets' checksum files, read once per version of the file (a few
/// datasets at a time), so checks of one dataset read its file once.
#[derive(Default)]
pub struct ChecksumCache {
    files: Mutex<HashMap<String, (Stamp, Arc<Checksums>)>>,
}

/// Checksum files kept in memory at once.
const CACHED_FILES: usize = 8;

impl ChecksumCache {
    fn lookup(&self, share: &Path, set_id: &str, key: &str, now: Stamp) -> Option<String> {
        let sums = self.dataset(share, set_id)?;
        sums.fresh(key, now).map(str::to_owned)
    }

    fn dataset(&self, share: &Path, set_id: &str) -> Option<Arc<Checksums>> {
        let path = crate::checksum::file::path(share, set_id);
        let stamp = Stamp::of(&std::fs::symlink_metadata(&path).ok()?);
        {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, sums)) = files.get(set_id)
                && *at == stamp
            {
                return Some(sums.clone());
            }
        }
        let sums = match Checksums::read(share, set_id) {
            Ok(sums) => Arc::new(sums),
            Err(e) => {
                warn!(set_id, error = %e, "the dataset's checksum file is not usable; computing each file's");
                return None;
            }
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.len() >= CACHED_FILES {
            files.clear();
        }
        files.insert(set_id.to_owned(), (stamp, sums.clone()));
        Some(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(size: u64, checksums: &[(Algorithm, &str)], kind: Option<&str>) -> ObjectChecksums {
        ObjectChecksums {
            size,
            checksums: checksums
                .iter()
                .map(|(a, v)| (*a, (*v).to_owned()))
                .collect(),
            checksum_type: kind.map(str::to_owned),
        }
    }

    #[test]
    fn the_best_full_object_checksum_is_compared_and_unverifiable_never_passes() {
        let crc = checksum::of_bytes(Algorithm::Crc64Nvme, b"abc");
        let sha = checksum::of_bytes(Algorithm::Sha256, b"abc");
        let local = |a: Algorithm| Ok((3, checksum::of_bytes(a, b"abc")));
        let o = object(
            3,
            &[(Algorithm::Sha256, &sha), (Algorithm::Crc64Nvme, &crc)],
            Some("FULL_OBJECT"),
        );
        assert_eq!(judge(&o, local).0, ContentOutcome::Verified);
        // Same size, other bytes: the count said yes, the bytes say no.
        let other = |a: Algorithm| Ok((3, checksum::of_bytes(a, b"abd")));
        let (outcome, detail) = judge(&o, other);
        assert_eq!(outcome, ContentOutcome::Mismatch);
        assert!(
            detail.contains(&crc) && detail.starts_with("CRC64NVME"),
            "{detail}"
        );
        // A partial copy: the sizes differ.
        let (outcome, detail) = judge(&object(2, &[(Algorithm::Crc64Nvme, &crc)], None), local);
        assert_eq!(outcome, ContentOutcome::Mismatch);
        assert!(detail.contains("S3 holds 2 bytes, the share 3"), "{detail}");
        // Nothing to compare: unverifiable, whatever the file.
        let (outcome, detail) = judge(&object(3, &[], None), local);
        assert_eq!(outcome, ContentOutcome::Unverifiable);
        assert!(detail.contains("no checksum"), "{detail}");
        let composite = object(3, &[(Algorithm::Sha256, "abc=-3")], Some("COMPOSITE"));
        let (outcome, detail) = judge(&composite, local);
        assert_eq!(outcome, ContentOutcome::Unverifiable);
        assert!(detail.contains("composite multipart SHA256"), "{detail}");
        // A full-object CRC32 of a multipart upload is fine: computed here.
        let crc32 = checksum::of_bytes(Algorithm::Crc32, b"abc");
        let o = object(3, &[(Algorithm::Crc32, &crc32)], Some("FULL_OBJECT"));
        assert_eq!(
            judge(&o, local),
            (ContentOutcome::Verified, format!("CRC32 {crc32}"))
        );
        // The file cannot be read: unverifiable, not verified.
        let gone = |_| Err(std::io::Error::other("gone"));
        assert_eq!(judge(&o, gone).0, ContentOutcome::Unverifiable);
    }

    #[test]
    fn a_key_reaches_the_share_only_through_real_directories() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(share.path().join("S-vaultjob/d")).unwrap();
        std::fs::write(share.path().join("S-vaultjob/d/a.bin"), "abc").unwrap();
        std::fs::write(outside.path().join("a.bin"), "abc").unwrap();
        std::os::unix::fs::symlink(outside.path(), share.path().join("S-vaultjob/l")).unwrap();
        let cache = ChecksumCache::default();
        let got = local_checksum(
            share.path(),
            "S",
            "S-vaultjob/d/a.bin",
            Algorithm::Crc64Nvme,
            &cache,
        );
        assert_eq!(
            got.unwrap(),
            (3, checksum::of_bytes(Algorithm::Crc64Nvme, b"abc"))
        );
        for key in [
            "S-vaultjob/l/a.bin",
            "S-vaultjob/../x",
            "/etc/passwd",
            "S-vaultjob/d/",
        ] {
            assert!(
                local_checksum(share.path(), "S", key, Algorithm::Crc64Nvme, &cache).is_err(),
                "{key}"
            );
        }
    }

    #[test]
    fn a_checksum_file_is_used_only_for_the_files_current_version() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("S-vaultjob");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), "abc").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(dir.join("a.bin")).unwrap());
        let mut sums = Checksums::default();
        sums.insert(crate::checksum::file::FileChecksum::new(
            "S-vaultjob/a.bin".into(),
            stamp,
            "RECORDED===".to_owned() + "A",
        ));
        sums.write(share.path(), "S").unwrap();
        let cache = ChecksumCache::default();
        let got = local_checksum(
            share.path(),
            "S",
            "S-vaultjob/a.bin",
            Algorithm::Crc64Nvme,
            &cache,
        );
        assert_eq!(
            got.unwrap().1,
            "RECORDED===A",
            "the recorded value, not a read"
        );
        // Changed after it was checksummed: computed again from the file.
        std::fs::write(dir.join("a.bin"), "abcd").unwrap();
        let got = local_checksum(
            share.path(),
            "S",
            "S-vaultjob/a.bin",
            Algorithm::Crc64Nvme,
            &cache,
        );
        assert_eq!(
            got.unwrap(),
            (4, checksum::of_bytes(Algorithm::Crc64Nvme, b"abcd"))
        );
    }
}
