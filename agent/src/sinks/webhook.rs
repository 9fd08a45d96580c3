//! `[[sink]] kind = "webhook"`: POSTs each event's JSON envelope to a URL.
//! 2xx is delivered; what any other answer means is [`Retry::http`]'s call
//! (5xx, 408, 429 and network errors are retried, other 4xx refuse the
//! event), and the dispatcher acts on it.

use std::time::Duration;

use serde::Deserialize;

use super::{DeliverFuture, Retry, Sink, SinkError, SinkSettings, is_http_url, retry};
use crate::outbound::OutboxEvent;

/// `[[sink]] kind = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl SinkSettings for WebhookSettings {
    fn configured_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn default_name(&self) -> String {
        format!("webhook:{}", self.url)
    }
    fn validate(&self) -> Result<(), String> {
        if is_http_url(&self.url) {
            Ok(())
        } else {
            Err(format!(
                "[[sink]] kind = \"webhook\": url {:?} must start with http:// or https://",
                self.url
            ))
        }
    }
    fn describe(&self) -> String {
        format!("POST {}", self.url)
    }
    fn open(
        &self,
        name: String,
        _aws: Option<&super::AwsConfig>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(WebhookSink::new(
            name,
            self.url.clone(),
            self.bearer_token.clone(),
        )?))
    }
}

pub struct WebhookSink {
    name: String,
    url: String,
    bearer_token: Option<String>,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(name: String, url: String, bearer_token: Option<String>) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SinkError::new(&name, Retry::Never, e.to_string()))?;
        Ok(WebhookSink {
            name,
            url,
            bearer_token,
            client,
        })
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a> {
        Box::pin(async move {
            for (at, event) in events.iter().enumerate() {
                let mut request = self
                    .client
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &event.id)
                    .body(event.payload.clone());
                if let Some(token) = &self.bearer_token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let error = match request.send().await {
                    Ok(response) if response.status().is_success() => continue,
                    Ok(response) => {
                        let status = response.status();
                        let message = format!("POST {} answered {status}", self.url);
                        SinkError::new(&self.name, Retry::http(status.as_u16()), message)
                    }
                    Err(e) => {
                        let message = format!("POST {}: {e}", self.url);
                        SinkError::new(&self.name, Retry::Later, message)
                    }
                };
                // In order: the events after a failed one wait for it.
                return retry::stopped_at(events.len(), at, error);
            }
            retry::all(events.len(), Ok(()))
        })
    }
}
