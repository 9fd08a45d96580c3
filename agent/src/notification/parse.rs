//! Parsing of EventBridge envelopes as File Gateway sends them (directly over
//! HTTP from an API destination, or as the body of an SQS message).
//!
//! The happy path deserialises straight into typed structs; only when that
//! fails do we walk the JSON again to name the offending field, so errors are
//! precise without slowing down the common case.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::time::parse_rfc3339;

/// `detail-type` of the per-object notification the agent reconciles on.
pub const OBJECT_UPLOAD_EVENT: &str = "Storage Gateway Object Upload Event";

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A `Storage Gateway Object Upload Event`.
    Upload(ObjectUpload),
    /// A well-formed EventBridge event of another detail-type (for instance
    /// `Storage Gateway File Upload Event`): accepted, counted, not reconciled.
    Other { detail_type: String },
}

/// The fields of an object upload notification that the agent keeps; they are
/// the reference's record (`bucketName`, `objectKey`, `objectSize`, `eventTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUpload {
    pub event_id: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Epoch seconds of the envelope's `time`.
    pub event_time: i64,
    /// Epoch seconds of the detail's `modification-time` (the file's mtime as
    /// the gateway saw it), when given and well-formed.
    pub modified: Option<i64>,
}

/// Why an event was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body must be one EventBridge event (a JSON object) or an array of them, found {0}")]
    NotAnEvent(&'static str),
    #[error("event {index}: {source}")]
    InArray {
        index: usize,
        source: Box<ParseError>,
    },
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("field `{field}` is not an RFC 3339 timestamp: {value:?}")]
    BadTime { field: &'static str, value: String },
    #[error("field `detail.object-key` must not be empty")]
    EmptyKey,
    #[error("event does not match the expected shape: {0}")]
    Other(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "detail-type", borrow)]
    detail_type: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    detail: &'a RawValue,
}

#[derive(Deserialize)]
struct UploadDetail<'a> {
    #[serde(rename = "bucket-name", borrow)]
    bucket: Cow<'a, str>,
    #[serde(rename = "object-key", borrow)]
    key: Cow<'a, str>,
    #[serde(rename = "object-size")]
    size: u64,
    #[serde(rename = "modification-time", default, borrow)]
    modified: Option<Cow<'a, str>>,
}

/// Parses a request or message body: one event object, or a JSON array of them.
/// All-or-nothing: one bad event refuses the body, naming its index, so a
/// sender's retry of the whole body is always safe.
pub fn parse_body(body: &[u8]) -> Result<Vec<Notification>, ParseError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
        items
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                parse_event(raw.get().as_bytes()).map_err(|e| ParseError::InArray {
                    index,
                    source: Box::new(e),
                })
            })
            .collect()
    } else {
        parse_event(body).map(|n| vec![n])
    }
}

/// Parses one EventBridge event.
pub fn parse_event(body: &[u8]) -> Result<Notification, ParseError> {
    match fast_parse(body) {
        Ok(n) => Ok(n),
        Err(serde_error) => Err(explain(body, serde_error)),
    }
}

fn fast_parse(body: &[u8]) -> Result<Notification, String> {
    let env: Envelope<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if env.detail_type != OBJECT_UPLOAD_EVENT {
        return Ok(Notification::Other {
            detail_type: env.detail_type.into_owned(),
        });
    }
    let detail: UploadDetail<'_> =
        serde_json::from_str(env.detail.get()).map_err(|e| e.to_string())?;
    let event_time = parse_rfc3339(&env.time).ok_or("time")?;
    if detail.key.is_empty() {
        return Err("key".into());
    }
    Ok(Notification::Upload(ObjectUpload {
        event_id: env.id.map(Cow::into_owned).unwrap_or_default(),
        bucket: detail.bucket.into_owned(),
        key: detail.key.into_owned(),
        size: detail.size,
        event_time,
        modified: detail.modified.as_deref().and_then(parse_rfc3339),
    }))
}

/// Slow path: walk the JSON to say exactly which field is wrong.
fn explain(body: &[u8], serde_error: String) -> ParseError {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return ParseError::Json(e.to_string()),
    };
    let Value::Object(env) = value else {
        return ParseError::NotAnEvent(kind(&value));
    };
    if let Err(e) = string_field(&env, "detail-type", "detail-type") {
        return e;
    }
    if let Err(e) = string_field(&env, "time", "time") {
        return e;
    }
    let detail = match env.get("detail") {
        None => return ParseError::Missing("detail"),
        Some(Value::Object(d)) => d,
        Some(other) => return wrong("detail", "an object", other),
    };
    let is_upload = env.get("detail-type").and_then(Value::as_str) == Some(OBJECT_UPLOAD_EVENT);
    if is_upload {
        for (name, path) in [
            ("bucket-name", "detail.bucket-name"),
            ("object-key", "detail.object-key"),
        ] {
            if let Err(e) = string_field(detail, name, path) {
                return e;
            }
        }
        match detail.get("object-size") {
            None => return ParseError::Missing("detail.object-size"),
            Some(v) if v.as_u64().is_none() => {
                return wrong("detail.object-size", "a non-negative integer", v);
            }
            Some(_) => {}
        }
        if detail.get("object-key").and_then(Value::as_str) == Some("") {
            return ParseError::EmptyKey;
        }
        if let Some(t) = env.get("time").and_then(Value::as_str)
            && parse_rfc3339(t).is_none()
        {
            return ParseError::BadTime {
                field: "time",
                value: t.to_owned(),
            };
        }
    }
    if let Some(id) = env.get("id")
        && !id.is_string()
        && !id.is_null()
    {
        return wrong("id", "a string", id);
    }
    ParseError::Other(serde_error)
}

fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    path: &'static str,
) -> Result<(), ParseError> {
    match obj.get(name) {
        None => Err(ParseError::Missing(path)),
        Some(Value::String(_)) => Ok(()),
        Some(other) => Err(wrong(path, "a string", other)),
    }
}

fn wrong(field: &'static str, expected: &'static str, found: &Value) -> ParseError {
    ParseError::WrongType {
        field,
        expected,
        found: kind(found).to_owned(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn upload_json(key: &str, size: u64) -> String {
        serde_json::json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": OBJECT_UPLOAD_EVENT, "source": "aws.storagegateway",
            "account": "123456789012", "time": "2021-05-01T10:00:00Z", "region": "eu-west-1",
            "resources": ["arn:share", "arn:gateway", "arn:bucket"],
            "detail": { "bucket-name": "vault-bucket", "object-key": key, "object-size": size,
                        "modification-time": "2021-05-01T09:59:58Z",
                        "event-type": "object-upload-complete", "prefix": "" }
        })
        .to_string()
    }

    #[test]
    fn parses_the_reference_event() {
        let n =
            parse_event(upload_json("ABC-vaultjob/dir-a/file-b", 1_048_576).as_bytes()).unwrap();
        assert_eq!(
            n,
            Notification::Upload(ObjectUpload {
                event_id: "6a7e8feb-b491-4cf7-a9f1-bf3703467718".into(),
                bucket: "vault-bucket".into(),
                key: "ABC-vaultjob/dir-a/file-b".into(),
                size: 1_048_576,
                event_time: 1_619_863_200,
                modified: Some(1_619_863_198),
            })
        );
    }

    #[test]
    fn parses_arrays_and_keeps_escaped_keys() {
        let body = format!(
            "[{}, {}]",
            upload_json("A-vaultjob/x y/ü\"q", 1),
            upload_json("B", 2)
        );
        let got = parse_body(body.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        let Notification::Upload(u) = &got[0] else {
            panic!()
        };
        assert_eq!(u.key, "A-vaultjob/x y/ü\"q");
    }

    #[test]
    fn other_detail_types_are_accepted_but_not_uploads() {
        let body = r#"{"detail-type":"Storage Gateway File Upload Event","time":"2021-05-01T10:00:00Z",
                       "detail":{"notification-id":"n1","event-type":"file-upload-complete"}}"#;
        assert_eq!(
            parse_event(body.as_bytes()).unwrap(),
            Notification::Other {
                detail_type: "Storage Gateway File Upload Event".into()
            }
        );
    }

    fn error_of(body: &str) -> String {
        parse_body(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let good = upload_json("A-vaultjob/f", 1);
        assert!(error_of("{").contains("not valid JSON"));
        assert!(error_of("42").contains("found a number"));
        assert_eq!(error_of("{}"), "missing field `detail-type`");
        let no_size = good.replace("\"object-size\":1,", "");
        assert_eq!(error_of(&no_size), "missing field `detail.object-size`");
        let neg = good.replace("\"object-size\":1", "\"object-size\":-1");
        assert_eq!(
            error_of(&neg),
            "field `detail.object-size` must be a non-negative integer, found a number"
        );
        let str_key = good.replace("\"A-vaultjob/f\"", "7");
        assert_eq!(
            error_of(&str_key),
            "field `detail.object-key` must be a string, found a number"
        );
        let bad_time = good.replace("2021-05-01T10:00:00Z", "soon");
        assert_eq!(
            error_of(&bad_time),
            "field `time` is not an RFC 3339 timestamp: \"soon\""
        );
        let empty = good.replace("\"A-vaultjob/f\"", "\"\"");
        assert_eq!(
            error_of(&empty),
            "field `detail.object-key` must not be empty"
        );
        let arr = format!("[{good}, {{}}]");
        assert_eq!(error_of(&arr), "event 1: missing field `detail-type`");
    }
}
