//! Events as JSON lines on standard output (logs go to standard error).

use std::io::Write;

use serde::Deserialize;

use super::{DeliverFuture, Retry, Sink, SinkError, SinkSettings, retry};
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
            let result = events
                .iter()
                .try_for_each(|event| writeln!(out, "{}", event.payload))
                .and_then(|()| out.flush())
                .map_err(|e| SinkError::new(&self.name, Retry::Later, e.to_string()));
            retry::all(events.len(), result)
        })
    }
}
