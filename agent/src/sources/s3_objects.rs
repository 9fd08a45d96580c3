//! One object's checksums, from `HeadObject` with `ChecksumMode=ENABLED`:
//! what S3 keeps of its bytes, read without downloading one
//! (`[reconcile] verify_content`, `verify --content`). Requests from all
//! checks share one rate limit.

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::types::ChecksumMode;

use super::s3_listing::Pace;
use crate::checksum::Algorithm;
use crate::reconcile::content::{HeadFuture, ObjectChecksums, ObjectHeads};
use crate::telemetry;

/// Reads objects' checksums, at most `rate` requests per second.
#[derive(Clone)]
pub struct S3Heads {
    client: Client,
    pace: Arc<Pace>,
}

impl S3Heads {
    pub fn from_sdk(sdk: &aws_config::SdkConfig, rate: u32) -> S3Heads {
        S3Heads {
            client: super::s3_listing::client(sdk),
            pace: Arc::new(Pace::new(rate)),
        }
    }

    /// The object's size and checksums; None if S3 has no such object.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectChecksums>, String> {
        self.pace.wait().await;
        metrics::counter!(telemetry::S3_HEAD_REQUESTS).increment(1);
        let out = match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    return Ok(None);
                }
                metrics::counter!(telemetry::S3_HEAD_FAILURES).increment(1);
                // An endpoint's answer is outside text: kept short and clean.
                return Err(crate::logging::clean_external(&match e.code() {
                    Some(code) => format!("{code}: {}", e.message().unwrap_or_default()),
                    None => DisplayErrorContext(&e).to_string(),
                }));
            }
        };
        let found = [
            (Algorithm::Crc64Nvme, out.checksum_crc64_nvme()),
            (Algorithm::Crc32, out.checksum_crc32()),
            (Algorithm::Crc32C, out.checksum_crc32_c()),
            (Algorithm::Sha1, out.checksum_sha1()),
            (Algorithm::Sha256, out.checksum_sha256()),
        ];
        Ok(Some(ObjectChecksums {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            checksums: found
                .into_iter()
                .filter_map(|(a, v)| Some((a, crate::logging::clean_external(v?))))
                .collect(),
            checksum_type: out.checksum_type().map(|t| t.as_str().to_owned()),
        }))
    }
}

impl ObjectHeads for S3Heads {
    fn head<'a>(&'a self, bucket: &'a str, key: &'a str) -> HeadFuture<'a> {
        Box::pin(self.head(bucket, key))
    }
}
