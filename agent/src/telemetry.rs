//! Prometheus metrics (`GET /metrics`): every metric's name, type, labels and
//! help in one list, and the recorder (the `metrics` crate's facade with
//! `metrics-exporter-prometheus` rendering the exposition format).
//!
//! Parts of the agent count with the `metrics` macros and the names below;
//! until [`install`] runs (the `run` command and the demo do) those are
//! no-ops, so libraries, tests and benchmarks pay nothing. Labels are
//! bounded sets (a kind, an outcome, a configured policy or sink name, an
//! HTTP route); a set-id is never a label.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const NOTIFICATIONS: &str = "vault_agent_notifications_total";
pub const REFUSED_REQUESTS: &str = "vault_agent_refused_requests_total";
pub const BATCHES: &str = "vault_agent_committed_batches_total";
pub const RECHECKS: &str = "vault_agent_rechecks_total";
pub const COMMIT_SECONDS: &str = "vault_agent_commit_duration_seconds";
pub const DECISIONS: &str = "vault_agent_decisions_total";
pub const DECISION_LATENCY_SECONDS: &str = "vault_agent_decision_latency_seconds";
pub const DATASETS: &str = "vault_agent_datasets";
pub const PENDING_FILES: &str = "vault_agent_pending_files";
pub const PENDING_BYTES: &str = "vault_agent_pending_bytes";
pub const PLUGIN_CALLS: &str = "vault_agent_plugin_calls_total";
pub const PLUGIN_FAILURES: &str = "vault_agent_plugin_failures_total";
pub const PLUGIN_QUARANTINES: &str = "vault_agent_plugin_quarantines_total";
pub const PLUGIN_CALL_SECONDS: &str = "vault_agent_plugin_call_duration_seconds";
pub const SINK_DELIVERED: &str = "vault_agent_sink_delivered_total";
pub const SINK_FAILURES: &str = "vault_agent_sink_failures_total";
pub const SINK_REFUSED: &str = "vault_agent_sink_refused_total";
pub const S3_HEAD_REQUESTS: &str = "vault_agent_s3_head_requests_total";
pub const S3_HEAD_FAILURES: &str = "vault_agent_s3_head_failures_total";
pub const HTTP_WAITERS: &str = "vault_agent_http_waiters";
pub const CONTENT_FILES: &str = "vault_agent_content_checks_total";
pub const CONTENT_VERIFIED_BYTES: &str = "vault_agent_content_verified_bytes_total";
pub const SINK_LAG: &str = "vault_agent_sink_lag_seconds";
pub const SQS_RECEIVED: &str = "vault_agent_sqs_messages_received_total";
pub const SQS_DELETED: &str = "vault_agent_sqs_messages_deleted_total";
pub const SQS_EXTENDED: &str = "vault_agent_sqs_visibility_extended_total";
pub const DYNAMODB_REQUESTS: &str = "vault_agent_dynamodb_requests_total";
pub const DYNAMODB_CONFLICTS: &str = "vault_agent_dynamodb_conflicts_total";
pub const WATCHER_EVENTS: &str = "vault_agent_watcher_events_total";
pub const WATCHER_RESCANS: &str = "vault_agent_watcher_rescans_total";
pub const WATCHER_OVERFLOWS: &str = "vault_agent_watcher_overflows_total";
pub const MANIFEST_READS: &str = "vault_agent_manifest_reads_total";
pub const MANIFEST_READ_FAILURES: &str = "vault_agent_manifest_read_failures_total";
pub const HTTP_REQUESTS: &str = "vault_agent_http_requests_total";
pub const S3_LIST_REQUESTS: &str = "vault_agent_s3_list_requests_total";
pub const S3_LIST_FAILURES: &str = "vault_agent_s3_list_failures_total";
pub const LISTED_UPLOADS: &str = "vault_agent_listed_uploads_total";
pub const BUILD_INFO: &str = "vault_agent_build_info";

/// Histogram buckets (seconds): a commit is milliseconds, a plugin call
/// microseconds, a decision up to the re-check period.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const CALL_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
];
const DECISION_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle). `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), COMMIT_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PLUGIN_CALL_SECONDS.into()),
                        CALL_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DECISION_LATENCY_SECONDS.into()),
                        DECISION_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("VAULT_AGENT_COMMIT")
            )
            .set(1.0);
            Some(handle)
        })
        .as_ref()
}

/// The installed recorder's handle, if any.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get().and_then(Option::as_ref)
}

fn describe() {
    describe_counter!(
        NOTIFICATIONS,
        "Notifications accepted, by kind: data, manifest, outside (no dataset), other (not an upload)"
    );
    describe_counter!(
        REFUSED_REQUESTS,
        "POST /events requests refused, by reason: unauthorized, malformed, too_large, busy, store"
    );
    describe_counter!(BATCHES, "Engine transactions committed");
    describe_counter!(
        RECHECKS,
        "Re-checks committed (every `wait`: deadlines, unread manifests, unjudged uploads)"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time to apply and commit one engine batch"
    );
    describe_counter!(
        DECISIONS,
        "Datasets decided, by outcome: succeeded, timed-out, failed"
    );
    describe_histogram!(
        DECISION_LATENCY_SECONDS,
        Unit::Seconds,
        "From a dataset's last notification to its decision event"
    );
    describe_gauge!(DATASETS, "Datasets by state");
    describe_gauge!(
        PENDING_FILES,
        "Local files on the share the cloud has not confirmed yet"
    );
    describe_gauge!(
        PENDING_BYTES,
        Unit::Bytes,
        "Bytes of the local files the cloud has not confirmed yet"
    );
    describe_counter!(PLUGIN_CALLS, "Policy plugin calls, by policy");
    describe_counter!(
        PLUGIN_FAILURES,
        "Policy plugin calls that failed (trap, timeout, memory), by policy"
    );
    describe_counter!(PLUGIN_QUARANTINES, "Policy plugins quarantined, by policy");
    describe_histogram!(
        PLUGIN_CALL_SECONDS,
        Unit::Seconds,
        "Duration of one policy plugin call, by policy"
    );
    describe_counter!(SINK_DELIVERED, "Events delivered, by sink");
    describe_counter!(SINK_FAILURES, "Failed delivery attempts, by sink");
    describe_counter!(S3_HEAD_REQUESTS, "S3 HeadObject requests (content checks)");
    describe_gauge!(
        HTTP_WAITERS,
        "Long polls waiting for a dataset to change (GET /status/{set-id}?wait=)"
    );
    describe_counter!(S3_HEAD_FAILURES, "S3 HeadObject requests that failed");
    describe_counter!(
        CONTENT_FILES,
        "Uploads whose S3 checksum was compared with their file's, by outcome (verified, mismatch, unverifiable)"
    );
    describe_counter!(
        CONTENT_VERIFIED_BYTES,
        "Bytes of uploads proven equal to their files on the share"
    );
    describe_counter!(
        SINK_REFUSED,
        "Events a sink refused for good (not delivered; they stay in the outbox), by sink"
    );
    describe_gauge!(
        SINK_LAG,
        Unit::Seconds,
        "How long the oldest event a sink has not delivered yet has waited (0: none), by sink"
    );
    describe_counter!(SQS_RECEIVED, "SQS messages received");
    describe_counter!(SQS_DELETED, "SQS messages deleted after their commit");
    describe_counter!(
        SQS_EXTENDED,
        "SQS visibility timeouts extended while a batch committed"
    );
    describe_counter!(DYNAMODB_REQUESTS, "DynamoDB requests, by operation");
    describe_counter!(
        DYNAMODB_CONFLICTS,
        "Engine batches run again because another agent changed the same records"
    );
    describe_counter!(
        WATCHER_EVENTS,
        "File-system events the share watcher handled"
    );
    describe_counter!(WATCHER_RESCANS, "Rescans of a dataset directory");
    describe_counter!(
        WATCHER_OVERFLOWS,
        "Times the kernel's event queue overflowed (a full rescan follows)"
    );
    describe_counter!(MANIFEST_READS, "Manifests read from the share");
    describe_counter!(
        MANIFEST_READ_FAILURES,
        "Manifest reads that failed or timed out (retried at the next re-check)"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route and status");
    describe_counter!(
        S3_LIST_REQUESTS,
        "S3 ListObjectsV2 requests (one per page of up to 1,000 keys)"
    );
    describe_counter!(
        S3_LIST_FAILURES,
        "Dataset listings that failed (logged; retried at the next re-check)"
    );
    describe_counter!(
        LISTED_UPLOADS,
        "Uploads recorded from an S3 listing because their notification never came"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
}
