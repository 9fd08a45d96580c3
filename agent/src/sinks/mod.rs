//! Delivering reconcile events. Events wait in the store's outbox; one
//! [`dispatcher`] per sink delivers them in order and moves that sink's cursor
//! only after the sink confirmed. Delivery is at-least-once with a stable
//! event id; the file sink also drops repeats it already wrote.

pub mod dispatcher;
pub mod eventbridge;
pub mod file;
pub mod retry;
pub mod stdout;
pub mod webhook;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::Deserialize;

use crate::outbound::OutboxEvent;

pub use retry::{Delivery, Retry};

/// Why a sink did not deliver an event (or could not open), and whether
/// trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    pub message: String,
    pub retry: Retry,
}

impl SinkError {
    pub fn new(sink: &str, retry: Retry, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.to_owned(),
            message: message.into(),
            retry,
        }
    }
}

pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

pub trait Sink: Send {
    fn name(&self) -> &str;
    /// Which outbox events this sink delivers (by default the reconcile
    /// events; the others are skipped, and its cursor moves past them).
    fn wants(&self, detail_type: &str) -> bool {
        crate::outbound::is_decision(detail_type)
    }
    /// Delivers events in order, and says what became of each (`Ok`: it
    /// is safely out). It never retries or gives up on its own: the
    /// dispatcher decides, from each error's [`Retry`].
    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a>;
}

/// One `[[sink]]` entry's settings. Each kind implements this beside its
/// sink, so adding a kind means one module and one line in [`SinkConfig`].
pub trait SinkSettings {
    /// The name given in the config, if any.
    fn configured_name(&self) -> Option<&str>;
    /// The delivery-cursor name when none is given: stable across restarts.
    fn default_name(&self) -> String;
    /// What serde cannot check; the message names the setting.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Makes relative paths relative to `base` (the config file's folder).
    fn resolve_paths(&mut self, _base: &Path) {}
    /// One line for `check-config`.
    fn describe(&self) -> String;
    /// The local file this sink appends to (start-up checks it is writable).
    fn local_file(&self) -> Option<&Path> {
        None
    }
    /// Whether it needs the AWS client configuration.
    fn needs_aws(&self) -> bool {
        false
    }
    /// Whether it also wants the per-upload events.
    fn wants_upload_events(&self) -> bool {
        false
    }
    /// Opens the sink; `aws` is loaded when some part of the config needs it.
    fn open(&self, name: String, aws: Option<&AwsConfig>) -> Result<Box<dyn Sink>, SinkError>;
}

/// A `[[sink]]` entry: its `kind` picks the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    File(file::FileSettings),
    Stdout(stdout::StdoutSettings),
    Eventbridge(eventbridge::EventBridgeSettings),
    Webhook(webhook::WebhookSettings),
}

impl SinkConfig {
    /// The settings of whichever kind this is.
    pub fn settings(&self) -> &dyn SinkSettings {
        match self {
            SinkConfig::File(s) => s,
            SinkConfig::Stdout(s) => s,
            SinkConfig::Eventbridge(s) => s,
            SinkConfig::Webhook(s) => s,
        }
    }

    pub fn settings_mut(&mut self) -> &mut dyn SinkSettings {
        match self {
            SinkConfig::File(s) => s,
            SinkConfig::Stdout(s) => s,
            SinkConfig::Eventbridge(s) => s,
            SinkConfig::Webhook(s) => s,
        }
    }

    /// The sink's delivery-cursor name: stable across restarts unless renamed.
    pub fn name(&self) -> String {
        let settings = self.settings();
        settings
            .configured_name()
            .map_or_else(|| settings.default_name(), str::to_owned)
    }

    /// Opens the sink this entry describes.
    pub fn open(&self, aws: Option<&AwsConfig>) -> Result<Box<dyn Sink>, SinkError> {
        self.settings().open(self.name(), aws)
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout(stdout::StdoutSettings::default())
    }
}

/// The AWS SDK configuration, loaded when some part of the config needs it.
#[cfg(feature = "aws")]
pub type AwsConfig = aws_config::SdkConfig;
/// Built without the `aws` feature: there is never an AWS configuration.
#[cfg(not(feature = "aws"))]
#[derive(Debug)]
pub enum AwsConfig {}

/// Whether `url` is an absolute http(s) URL.
pub fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}
