//! Config values that check themselves during deserialisation, so a bad value
//! is reported at its own line and column.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written like `"30s"`, `"2m"` or `"1h 30m"`; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let dur = humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like \"30s\", \"2m\" or \"1h 30m\""
            ))
        })?;
        if dur.is_zero() {
            return Err(de::Error::custom("duration must be greater than zero"));
        }
        Ok(HumanDuration(dur))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size written as a number of bytes or like `"1GiB"`, `"512 MB"`; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteCount(pub u64);

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let bytes = match Raw::deserialize(d)? {
            Raw::Number(n) => n,
            Raw::Text(text) => text
                .parse::<bytesize::ByteSize>()
                .map_err(|e| {
                    de::Error::custom(format!(
                        "invalid size {text:?} ({e}); write it like \"1GiB\" or a number of bytes"
                    ))
                })?
                .as_u64(),
        };
        if bytes == 0 {
            return Err(de::Error::custom("size must be greater than zero"));
        }
        Ok(ByteCount(bytes))
    }
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// The API key `POST /events` requires: not empty, no surrounding spaces.
/// Debug output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// An AWS account id: 12 digits (it goes into every event's envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountId(pub String);

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "[aws] account {text:?} must be 12 digits"
            )));
        }
        Ok(AccountId(text))
    }
}

/// An absolute http(s) URL (an SQS queue's, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !crate::sinks::is_http_url(&text) {
            return Err(serde::de::Error::custom(format!(
                "{text:?} must be an https:// URL"
            )));
        }
        Ok(HttpUrl(text))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Err(de::Error::custom(
                "api_key must not be empty (an empty key would let any request in); remove the line to require no key",
            ));
        }
        if text.trim() != text || text.contains(char::is_control) {
            return Err(de::Error::custom(
                "api_key must not have surrounding spaces or control characters",
            ));
        }
        Ok(ApiKey(text))
    }
}

/// A name suffix such as `-vaultjob` or `.manifest`: non-empty, no `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suffix(pub String);

impl<'de> Deserialize<'de> for Suffix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Err(de::Error::custom("suffix must not be empty"));
        }
        if text.contains('/') || text.contains('\n') {
            return Err(de::Error::custom(format!(
                "suffix {text:?} must not contain `/` or a newline"
            )));
        }
        Ok(Suffix(text))
    }
}

/// A policy's settings: a TOML table whose values are strings, numbers,
/// booleans, or arrays of those (joined with commas), all passed as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySettings(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for PolicySettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut pairs = Vec::new();
        for (key, value) in table {
            let text = match value {
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                other => scalar(&other),
            };
            let text = text.ok_or_else(|| {
                de::Error::custom(format!(
                    "setting `{key}` must be a string, number, boolean or an array of those"
                ))
            })?;
            pairs.push((key, text));
        }
        Ok(PolicySettings(pairs))
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
