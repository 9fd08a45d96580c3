//! A gateway notification built from a key and a size: what the demo sends
//! and what `plugin new` writes as a sample events file.

use serde_json::{Value, json};

use super::time::{format_event_time, now_ms};

/// A `Storage Gateway Object Upload Event` as EventBridge delivers it, for
/// `key` in `bucket`, stamped now.
pub fn gateway_event(bucket: &str, key: &str, size: u64) -> Value {
    let now = format_event_time(now_ms());
    let prefix = key
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(String::new(), |(p, _)| format!("{p}/"));
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Storage Gateway Object Upload Event",
        "source": "aws.storagegateway",
        "account": "123456789012",
        "time": now,
        "region": "eu-west-1",
        "resources": [
            "arn:aws:storagegateway:eu-west-1:123456789012:share/share-DEMO0001",
            "arn:aws:storagegateway:eu-west-1:123456789012:gateway/sgw-DEMO0001",
            format!("arn:aws:s3:::{bucket}")
        ],
        "detail": {
            "bucket-name": bucket,
            "object-key": key,
            "object-size": size,
            "modification-time": now,
            "event-type": "object-upload-complete",
            "prefix": prefix
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Notification, parse_event};

    #[test]
    fn the_agent_parses_what_it_builds() {
        let event = gateway_event("b", "S1-vaultjob/d/f.bin", 7);
        let Ok(Notification::Upload(up)) = parse_event(event.to_string().as_bytes()) else {
            panic!("not an upload: {event}");
        };
        assert_eq!((up.key.as_str(), up.size), ("S1-vaultjob/d/f.bin", 7));
        assert_eq!(event["detail"]["prefix"], "S1-vaultjob/d/");
    }
}
