//! The events the agent emits, in exactly the reference's shape (MODULE6.md):
//! source `vault.application`, `resources: []`, and a detail copied from the
//! manifest's upload notification.

use serde::Serialize;
use uuid::Uuid;

use super::{ManifestRef, OutboxEvent};
use crate::notification::time::format_event_time;

pub const SOURCE: &str = "vault.application";
pub const SUCCESSFUL: &str = "File Upload Reconciliation Successful";
pub const TIMEOUT: &str = "File Upload Reconciliation Timeout";
pub const DATA_UPLOAD: &str = "Data File Upload Event";
pub const MANIFEST_UPLOAD: &str = "Manifest File Upload Event";

/// Whether an event of `detail_type` is a dataset's decision (one per
/// dataset), not a per-upload event.
pub fn is_decision(detail_type: &str) -> bool {
    detail_type == SUCCESSFUL || detail_type == TIMEOUT
}

/// Namespace of the event ids: the same dataset and outcome give the same id
/// on every host and after every restart, so consumers can drop repeats.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_5a3e_9c2b_4e8a_b7f0_3c5d_2a91_e4b6);

#[derive(Serialize)]
struct Envelope<'a> {
    version: &'static str,
    id: &'a str,
    #[serde(rename = "detail-type")]
    detail_type: &'a str,
    source: &'static str,
    account: &'a str,
    time: String,
    region: &'a str,
    resources: [(); 0],
    detail: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "set-id")]
    set_id: &'a str,
    #[serde(rename = "event-time")]
    event_time: i64,
    #[serde(rename = "bucket-name")]
    bucket_name: &'a str,
    #[serde(rename = "object-key")]
    object_key: &'a str,
    #[serde(rename = "object-size")]
    object_size: u64,
}

/// Where the envelopes say they come from (`[aws]` in the config).
#[derive(Debug, Clone)]
pub struct Origin {
    pub account: String,
    pub region: String,
}

pub fn event_id(set_id: &str, detail_type: &str) -> String {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{set_id}\n{detail_type}").as_bytes(),
    )
    .to_string()
}

/// Builds a reconcile event (Successful or Timeout) ready for the outbox.
pub fn reconcile_event(
    detail_type: &str,
    set_id: &str,
    manifest: &ManifestRef,
    origin: &Origin,
    now_ms: i64,
) -> OutboxEvent {
    build(
        event_id(set_id, detail_type),
        detail_type,
        set_id,
        manifest,
        origin,
        now_ms,
    )
}

/// The reference's per-upload event (`Data File Upload Event` or `Manifest
/// File Upload Event`), for sinks with `publish_upload_events`.
pub fn upload_event(
    detail_type: &str,
    set_id: &str,
    upload: &ManifestRef,
    origin: &Origin,
    now_ms: i64,
) -> OutboxEvent {
    let name = format!(
        "{set_id}\n{}\n{}\n{}\n{detail_type}",
        upload.key, upload.event_time, upload.size
    );
    let id = Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string();
    build(id, detail_type, set_id, upload, origin, now_ms)
}

fn build(
    id: String,
    detail_type: &str,
    set_id: &str,
    manifest: &ManifestRef,
    origin: &Origin,
    now_ms: i64,
) -> OutboxEvent {
    let envelope = Envelope {
        version: "0",
        id: &id,
        detail_type,
        source: SOURCE,
        account: &origin.account,
        time: format_event_time(now_ms),
        region: &origin.region,
        resources: [],
        detail: Detail {
            set_id,
            event_time: manifest.event_time,
            bucket_name: &manifest.bucket,
            object_key: &manifest.key,
            object_size: manifest.size,
        },
    };
    let payload = serde_json::to_string(&envelope).unwrap_or_default();
    OutboxEvent {
        seq: 0,
        id,
        set_id: set_id.to_owned(),
        detail_type: detail_type.to_owned(),
        payload,
        created_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_module6_shape() {
        let manifest = ManifestRef {
            key: "K-vaultjob/K.manifest".into(),
            bucket: "bucket-1".into(),
            size: 1234,
            event_time: 1_619_863_200,
        };
        let origin = Origin {
            account: "123456789012".into(),
            region: "eu-west-1".into(),
        };
        let ev = reconcile_event(SUCCESSFUL, "K", &manifest, &origin, 1_619_863_230_500);
        let v: serde_json::Value = serde_json::from_str(&ev.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": "0", "id": ev.id, "detail-type": "File Upload Reconciliation Successful",
                "source": "vault.application", "account": "123456789012",
                "time": "2021-05-01T10:00:30Z", "region": "eu-west-1", "resources": [],
                "detail": { "set-id": "K", "event-time": 1_619_863_200, "bucket-name": "bucket-1",
                            "object-key": "K-vaultjob/K.manifest", "object-size": 1234 }
            })
        );
        assert!(ev.payload.starts_with(r#"{"version":"0","id":"#));
        assert_eq!(ev.id, event_id("K", SUCCESSFUL));
        assert_ne!(ev.id, event_id("K", TIMEOUT));
    }
}
