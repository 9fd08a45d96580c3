//! Events as JSON lines on standard output (logs go to standard error).

use std::io::Write;

use super::{DeliverFuture, Sink, SinkError};
use crate::store::OutboxEvent;

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
