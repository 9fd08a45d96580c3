//! Events as JSON lines on standard output (logs go to standard error).

use std::io::Write;

use serde::Deserialize;

use super::{DeliverFuture, Sink, SinkError, SinkSettings};
use crate::outbound::OutboxEvent;

/// `[[sink]] kind = "stdout"` (the default when no sink is configured).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSettings {
    #[serde(default)]
    pub name: Option<String>,
}

impl SinkSettings for StdoutSettings {
    fn configured_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn default_name(&self) -> String {
        "stdout".into()
    }
    fn describe(&self) -> String {
        "stdout".into()
    }
    fn open(
        &self,
        name: String,
        _aws: Option<&super::AwsConfig>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(StdoutSink::new(name)))
    }
}

pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    pub fn new(name: String) -> Self {
        StdoutSink { name }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut out = std::io::stdout().lock();
            for event in events {
                writeln!(out, "{}", event.payload).map_err(|e| SinkError {
                    sink: self.name.clone(),
                    message: e.to_string(),
                })?;
            }
            out.flush().map_err(|e| SinkError {
                sink: self.name.clone(),
                message: e.to_string(),
            })
        })
    }
}
