//! The S3 listing of a dataset's prefix: the cross-check for notifications
//! that never arrived (`vault-agent verify`, `[reconcile] verify`). Each
//! listing follows every ListObjectsV2 page (1,000 keys each); requests
//! from all listings share one rate limit, so a burst of deadlines cannot
//! flood the bucket.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use tokio::sync::Mutex;

use crate::config::AwsSection;
use crate::telemetry;

pub use crate::reconcile::listing::ListedObject;

/// Every object under a prefix, and what listing them took.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub objects: Vec<ListedObject>,
    pub requests: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("listing s3://{bucket}/{prefix} failed: {message}")]
pub struct ListingError {
    pub bucket: String,
    pub prefix: String,
    pub message: String,
}

/// Lists prefixes, at most `rate` requests per second over all listings.
#[derive(Clone)]
pub struct S3Lister {
    client: Client,
    pace: Arc<Pace>,
}

impl S3Lister {
    /// Loads the AWS configuration (`verify`, which has none loaded yet).
    pub async fn new(aws: &AwsSection, rate: u32) -> S3Lister {
        Self::from_sdk(&crate::aws::sdk_config(aws).await, rate)
    }

    /// With the AWS configuration the agent already loaded.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, rate: u32) -> S3Lister {
        S3Lister {
            client: client(sdk),
            pace: Arc::new(Pace::new(rate)),
        }
    }

    /// Every object under `prefix`, page after page; `progress` is told the
    /// running count after each page.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        mut progress: impl FnMut(usize),
    ) -> Result<Listing, ListingError> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            self.pace.wait().await;
            listing.requests += 1;
            metrics::counter!(telemetry::S3_LIST_REQUESTS).increment(1);
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    metrics::counter!(telemetry::S3_LIST_FAILURES).increment(1);
                    // An endpoint's answer is outside text: kept short and clean
                    // (a junk answer once became a 1 MB note).
                    let message = crate::logging::clean_external(&match e.code() {
                        Some(code) => format!("{code}: {}", e.message().unwrap_or_default()),
                        None => DisplayErrorContext(&e).to_string(),
                    });
                    ListingError {
                        bucket: bucket.to_owned(),
                        prefix: prefix.to_owned(),
                        message,
                    }
                })?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                listing.objects.push(ListedObject {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    last_modified_ms: object
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                });
            }
            progress(listing.objects.len());
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(listing),
            }
        }
    }
}

impl crate::reconcile::listing::PrefixLister for S3Lister {
    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> crate::reconcile::listing::ListingFuture<'a> {
        Box::pin(async move {
            self.list(bucket, prefix, |_| {})
                .await
                .map(|l| l.objects)
                .map_err(|e| e.message)
        })
    }
}

/// An S3 client with the agent's AWS configuration.
pub(crate) fn client(sdk: &aws_config::SdkConfig) -> Client {
    let mut config = aws_sdk_s3::config::Builder::from(sdk);
    if sdk.endpoint_url().is_some() {
        // Emulators (and most S3-compatible stores) serve path-style URLs.
        config = config.force_path_style(true);
    }
    Client::from_conf(config.build())
}

/// Spaces requests at least `1/rate` apart (a token bucket of one).
pub(crate) struct Pace {
    every: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    pub(crate) fn new(rate: u32) -> Pace {
        Pace {
            every: Duration::from_secs(1) / rate.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    pub(crate) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observed: an endpoint answering junk had its whole answer (1 MB)
    /// copied into the dataset's note, `/status` and the log.
    #[tokio::test]
    async fn a_junk_answer_is_cut_and_cleaned() {
        let junk = format!("<html>\u{1b}[31m{}</html>", "junk\n".repeat(200_000));
        let app = axum::Router::new().fallback(move || {
            let junk = junk.clone();
            async move { (axum::http::StatusCode::BAD_REQUEST, junk) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(format!("http://{addr}"))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::for_tests(),
            ))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let lister = S3Lister::from_sdk(&sdk, 1000);
        let err = lister
            .list("bucket", "S-vaultjob/", |_| {})
            .await
            .unwrap_err();
        assert!(
            err.message.len() <= crate::logging::EXTERNAL_TEXT_BYTES + " [cut]".len(),
            "{} bytes",
            err.message.len()
        );
        assert!(
            !err.message.chars().any(char::is_control),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn requests_are_paced_across_listings() {
        let pace = Arc::new(Pace::new(20));
        let start = Instant::now();
        // Two listings at once share the pace: the 6th request waits for 5
        // slots of 50 ms (a busy machine only makes it later).
        let a = tokio::spawn({
            let pace = pace.clone();
            async move {
                for _ in 0..3 {
                    pace.wait().await;
                }
            }
        });
        for _ in 0..3 {
            pace.wait().await;
        }
        a.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }
}
