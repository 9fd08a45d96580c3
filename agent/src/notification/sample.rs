//! A gateway notification built from a key and a size: what the demo sends,
//! what `plugin new` writes as a sample events file, and what the tests and
//! benchmarks send (the one builder of them all).

use serde_json::Value;

use super::time::{format_event_time, now_ms};

/// A `Storage Gateway Object Upload Event` as EventBridge delivers it, for
/// `key` in `bucket`, stamped now.
pub fn gateway_event(bucket: &str, key: &str, size: u64) -> Value {
    gateway_event_at(bucket, key, size, &format_event_time(now_ms()))
}

/// The same, stamped `time` (`YYYY-MM-DDTHH:MM:SSZ`; also the file's
/// modification time).
pub fn gateway_event_at(bucket: &str, key: &str, size: u64, time: &str) -> Value {
    serde_json::from_str(&gateway_event_text(bucket, key, size, time))
        .expect("the template is JSON")
}

/// The same as JSON text, built without a JSON tree: cheap enough for the
/// replay benchmark to build a million of them inside its clock.
pub fn gateway_event_text(bucket: &str, key: &str, size: u64, time: &str) -> String {
    let text = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let prefix = key
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(String::new(), |(p, _)| format!("{p}/"));
    let arn = text(&format!("arn:aws:s3:::{bucket}"));
    format!(
        concat!(
            r#"{{"version":"0","id":"{id}","detail-type":"Storage Gateway Object Upload Event","#,
            r#""source":"aws.storagegateway","account":"123456789012","time":{time},"#,
            r#""region":"eu-west-1","resources":["#,
            r#""arn:aws:storagegateway:eu-west-1:123456789012:share/share-DEMO0001","#,
            r#""arn:aws:storagegateway:eu-west-1:123456789012:gateway/sgw-DEMO0001",{arn}],"#,
            r#""detail":{{"bucket-name":{bucket},"object-key":{key},"object-size":{size},"#,
            r#""modification-time":{time},"event-type":"object-upload-complete","prefix":{prefix}}}}}"#
        ),
        id = uuid::Uuid::new_v4(),
        time = text(time),
        arn = arn,
        bucket = text(bucket),
        key = text(key),
        size = size,
        prefix = text(&prefix),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Notification, parse_event};

    #[test]
    fn the_agent_parses_what_it_builds() {
        let event = gateway_event("b", "S1-vaultjob/d/\"odd\" f.bin", 7);
        let Ok(Notification::Upload(up)) = parse_event(event.to_string().as_bytes()) else {
            panic!("not an upload: {event}");
        };
        assert_eq!(
            (up.key.as_str(), up.size),
            ("S1-vaultjob/d/\"odd\" f.bin", 7)
        );
        assert_eq!(event["detail"]["prefix"], "S1-vaultjob/d/");
    }
}
