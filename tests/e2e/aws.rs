//! AWS backends against moto (an AWS API emulator) on loopback, started and
//! stopped by the tests: notifications put on the default bus reach the
//! queue through a rule, the agent consumes them, and its reconcile events
//! put on a custom bus reach a queue through a rule, in the reference's shape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use serde_json::{Value, json};

use crate::support::Env;

pub use crate::moto::Moto;

pub struct Clients {
    pub rt: tokio::runtime::Runtime,
    pub sqs: aws_sdk_sqs::Client,
    pub eb: aws_sdk_eventbridge::Client,
    pub ddb: aws_sdk_dynamodb::Client,
}

/// A runtime for a test's own AWS calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Moto {
    /// An S3 client for this moto (path-style, as emulators serve).
    pub fn s3(&self, rt: &tokio::runtime::Runtime) -> aws_sdk_s3::Client {
        let sdk = rt.block_on(self.sdk());
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        )
    }

    pub fn clients(&self) -> Clients {
        let rt = runtime();
        let sdk = rt.block_on(self.sdk());
        Clients {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            eb: aws_sdk_eventbridge::Client::new(&sdk),
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            rt,
        }
    }
}

pub async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let arn = attrs.attributes.unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    (url, arn)
}

/// One receive from a queue, as a consumer does it: the message bodies as
/// JSON, each deleted once read (left alone, a message comes back after the
/// visibility timeout and would look like a second delivery).
pub async fn receive_json(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = out.messages.unwrap_or_default();
    for m in &messages {
        sqs.delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle.as_deref().unwrap())
            .send()
            .await
            .unwrap();
    }
    messages
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect()
}

pub async fn route(
    eb: &aws_sdk_eventbridge::Client,
    bus: &str,
    rule: &str,
    pattern: Value,
    target_arn: &str,
) {
    eb.put_rule()
        .event_bus_name(bus)
        .name(rule)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    eb.put_targets()
        .event_bus_name(bus)
        .rule(rule)
        .targets(Target::builder().id("t1").arn(target_arn).build().unwrap())
        .send()
        .await
        .unwrap();
}

/// The custom bus `vault-application`, with a rule sending the agent's
/// reconcile events to a new queue; returns that queue's URL.
pub async fn reconcile_bus_to_queue(
    eb: &aws_sdk_eventbridge::Client,
    sqs: &aws_sdk_sqs::Client,
    queue_name: &str,
) -> String {
    let (url, arn) = queue(sqs, queue_name).await;
    eb.create_event_bus()
        .name("vault-application")
        .send()
        .await
        .unwrap();
    route(
        eb,
        "vault-application",
        "reconcile-events",
        json!({"source": ["vault.application"]}),
        &arn,
    )
    .await;
    url
}

#[test]
fn notifications_through_eventbridge_and_sqs_reconcile_onto_a_custom_bus() {
    let moto = Moto::start();
    let Clients { rt, sqs, eb, .. } = moto.clients();
    let (uploads_url, uploads_arn, reconciled_url) = rt.block_on(async {
        let (uploads_url, uploads_arn) = queue(&sqs, "vault-uploads").await;
        let reconciled_url = reconcile_bus_to_queue(&eb, &sqs, "reconciled").await;
        route(
            &eb,
            "default",
            "uploads-to-queue",
            json!({"source": ["aws.storagegateway"], "detail-type": ["Storage Gateway Object Upload Event"]}),
            &uploads_arn,
        )
        .await;
        (uploads_url, uploads_arn, reconciled_url)
    });
    let _ = uploads_arn;

    let mut env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\n[source]\nkind = \"sqs\"\nqueue_url = \"{uploads_url}\"\n\
         [[sink]]\nkind = \"eventbridge\"\nevent_bus = \"vault-application\"\npublish_upload_events = true\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    ));
    env.envs = moto.envs();
    let agent = env.start();

    // The gateway's notifications, put on the default bus as EventBridge would.
    let set_id = "AwsFlow00000001";
    let lines = env.write_dataset(set_id, &crate::support::file_names(12));
    rt.block_on(async {
        sqs.send_message()
            .queue_url(&uploads_url)
            .message_body("this is not an event")
            .send()
            .await
            .unwrap();
        for chunk in lines.chunks(10) {
            let entries: Vec<PutEventsRequestEntry> = chunk
                .iter()
                .map(|line| {
                    let event = env.upload_for(line);
                    PutEventsRequestEntry::builder()
                        .source("aws.storagegateway")
                        .detail_type("Storage Gateway Object Upload Event")
                        .detail(event["detail"].to_string())
                        .build()
                })
                .collect();
            let out = eb
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_entry_count, 0);
        }
    });
    let events = env.wait_for_events(set_id, 1, crate::support::LONG);
    assert_eq!(
        events[0]["detail-type"],
        "File Upload Reconciliation Successful"
    );

    // The reconcile event reached the custom bus, and its rule's queue.
    let manifest = lines.iter().find(|l| l.ends_with(".manifest")).unwrap();
    let manifest_size = std::fs::metadata(env.share().join(manifest)).unwrap().len();
    let received = rt.block_on(async {
        let mut bodies: Vec<Value> = Vec::new();
        let start = Instant::now();
        while !bodies
            .iter()
            .any(|b| b["detail-type"] == "File Upload Reconciliation Successful")
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no reconcile event on the custom bus: {bodies:?}"
            );
            bodies.extend(receive_json(&sqs, &reconciled_url).await);
        }
        bodies
    });
    let success = received
        .iter()
        .find(|b| b["detail-type"] == "File Upload Reconciliation Successful")
        .unwrap();
    assert_eq!(success["source"], "vault.application");
    assert_eq!(
        success["detail"],
        json!({"set-id": set_id, "event-time": events[0]["detail"]["event-time"], "bucket-name": "e2e-bucket",
               "object-key": manifest, "object-size": manifest_size})
    );
    // Upload events for teams migrating their rules, when asked for.
    assert!(
        received
            .iter()
            .any(|b| b["detail-type"] == "Data File Upload Event"),
        "{received:?}"
    );

    // Recorded messages were deleted; the malformed one was left to the redrive policy.
    let logs = agent.logs();
    assert!(logs.contains("not an upload notification"), "{logs}");
    let left = rt.block_on(async {
        sqs.get_queue_attributes()
            .queue_url(&uploads_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()
    });
    let visible: u64 = left[&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages]
        .parse()
        .unwrap();
    let in_flight: u64 = left
        [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
        .parse()
        .unwrap();
    assert_eq!(
        visible + in_flight,
        1,
        "only the malformed message stays: {left:?}"
    );
}

/// What a [`FaultProxy`] does with one request instead of forwarding it.
pub enum Fault {
    /// Answer with this status and JSON body, forwarding nothing.
    Reply(u16, Value),
    /// Forward this JSON body instead, then answer with the upstream's JSON
    /// answer passed through the function.
    Rewrite(Value, Box<dyn FnOnce(Value) -> Value + Send>),
}

/// What upstream answered a proxied request.
pub struct Upstream {
    pub status: u16,
    headers: axum::http::HeaderMap,
    pub body: axum::body::Bytes,
}

impl Upstream {
    /// The answer, passed back to the proxy's client as it came.
    pub fn pass_back(self) -> axum::response::Response {
        let mut response = axum::response::Response::builder().status(self.status);
        for (k, v) in &self.headers {
            if k != "content-length" && k != "transfer-encoding" {
                response = response.header(k, v);
            }
        }
        response.body(axum::body::Body::from(self.body)).unwrap()
    }
}

/// Sends a proxied request (its method, path and headers, with `body`) on
/// to `upstream`.
pub async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: &axum::http::request::Parts,
    body: Vec<u8>,
) -> reqwest::Result<Upstream> {
    let mut request = client.request(parts.method.clone(), format!("{upstream}{}", parts.uri));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            request = request.header(k, v);
        }
    }
    let answer = request.body(body).send().await?;
    Ok(Upstream {
        status: answer.status().as_u16(),
        headers: answer.headers().clone(),
        body: answer.bytes().await?,
    })
}

/// A proxy in front of moto that injects the faults `faults` picks by the
/// request's `x-amz-target` and body; other requests pass through.
pub struct FaultProxy {
    pub endpoint: String,
    _server: crate::support::TestServer,
}

impl FaultProxy {
    pub fn start(
        upstream: String,
        faults: impl Fn(&str, &Value) -> Option<Fault> + Send + Sync + 'static,
    ) -> FaultProxy {
        let faults = std::sync::Arc::new(faults);
        let client = reqwest::Client::new();
        let handler = move |req: axum::extract::Request| {
            let (upstream, faults, client) = (upstream.clone(), faults.clone(), client.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let target = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let json_type = if target.starts_with("DynamoDB_") {
                    "application/x-amz-json-1.0"
                } else {
                    "application/x-amz-json-1.1"
                };
                let reply = |status: u16, body: Value| {
                    axum::response::Response::builder()
                        .status(status)
                        .header("content-type", json_type)
                        .body(axum::body::Body::from(body.to_string()))
                        .unwrap()
                };
                let fault = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|request| faults(target, &request));
                let forwarded = match &fault {
                    Some(Fault::Reply(status, answer)) => return reply(*status, answer.clone()),
                    Some(Fault::Rewrite(request, _)) => request.to_string().into_bytes(),
                    None => body.to_vec(),
                };
                let answer = forward(&client, &upstream, &parts, forwarded)
                    .await
                    .unwrap();
                if let Some(Fault::Rewrite(_, rewrite)) = fault
                    && answer.status == 200
                {
                    return reply(200, rewrite(serde_json::from_slice(&answer.body).unwrap()));
                }
                answer.pass_back()
            }
        };
        let server = crate::support::serve(axum::Router::new().fallback(handler));
        FaultProxy {
            endpoint: server.base.clone(),
            _server: server,
        }
    }
}

/// EventBridge failures: the first PutEvents request is throttled outright;
/// the next `partial` requests have their odd entries fail (retryably)
/// while the even ones go through. `calls` counts the PutEvents requests.
fn put_events_faults(
    partial: usize,
    calls: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&str, &Value) -> Option<Fault> + Send + Sync {
    move |target, request| {
        if target != "AWSEvents.PutEvents" {
            return None;
        }
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == 0 {
            return Some(Fault::Reply(
                400,
                json!({"__type": "ThrottlingException", "message": "Rate exceeded (injected)"}),
            ));
        }
        if n > partial {
            return None;
        }
        let entries = request["Entries"].as_array().unwrap().clone();
        let mut forwarded = request.clone();
        forwarded["Entries"] = json!(entries.iter().step_by(2).cloned().collect::<Vec<_>>());
        Some(Fault::Rewrite(
            forwarded,
            Box::new(move |upstream_reply| {
                let mut ok = upstream_reply["Entries"]
                    .as_array()
                    .unwrap()
                    .clone()
                    .into_iter();
                let merged: Vec<Value> = (0..entries.len())
                    .map(|i| match i % 4 {
                        0 | 2 => ok.next().unwrap(),
                        1 => {
                            json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "injected"})
                        }
                        _ => json!({"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}),
                    })
                    .collect();
                json!({"FailedEntryCount": entries.len() / 2, "Entries": merged})
            }),
        ))
    }
}

#[test]
fn put_events_partial_failures_and_throttling_lose_nothing() {
    let moto = Moto::start();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let proxy = FaultProxy::start(moto.endpoint.clone(), put_events_faults(2, calls.clone()));
    let Clients { rt, sqs, eb, .. } = moto.clients();
    let reconciled_url = rt.block_on(reconcile_bus_to_queue(&eb, &sqs, "reconciled"));
    let mut env = Env::new(&format!(
        "[reconcile]\nwait = \"200ms\"\n\
         [[sink]]\nkind = \"eventbridge\"\nevent_bus = \"vault-application\"\n\
         [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{}\"\n",
        proxy.endpoint
    ));
    env.envs = moto.envs();
    let agent = env.start();
    // 24 datasets, posted together, so their events leave in batches of 10.
    let mut all = Vec::new();
    let set_ids: Vec<String> = (0..18).map(|i| format!("Fault{i:010}")).collect();
    for set_id in &set_ids {
        for line in env.write_dataset(set_id, &crate::support::file_names(2)) {
            all.push(env.upload_for(&line));
        }
    }
    assert_eq!(agent.post(&json!(all).to_string()).0, 202);
    for set_id in &set_ids {
        env.wait_for_events(set_id, 1, crate::support::LONG);
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    rt.block_on(async {
        let start = Instant::now();
        while seen.len() < set_ids.len() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "events lost; got {seen:?}"
            );
            for body in receive_json(&sqs, &reconciled_url).await {
                *seen
                    .entry(body["detail"]["set-id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    });
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        set_ids,
        "every dataset's event arrived"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "only failed entries are re-sent: {seen:?}"
    );
    // Every fault was injected: the throttled request (which the SDK
    // retries itself), the partial failures, then clean requests. Which
    // entry errors the agent met depends on how the events were batched
    // (a request of 1 to 3 entries fails only ThrottlingException ones);
    // the test once asked for ThrottlingException in a log line that then
    // named only the last failed entry's error, an InternalFailure.
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls > 3, "PutEvents requests: {calls}");
    let logs = agent.logs();
    assert!(
        logs.contains("delivery failed; will retry")
            && (logs.contains("ThrottlingException") || logs.contains("InternalFailure")),
        "the agent retried the entries that failed: {logs}"
    );
}

/// Every PutEvents entry throttled, for as long as the proxy runs.
fn throttle_every_entry(target: &str, request: &Value) -> Option<Fault> {
    if target != "AWSEvents.PutEvents" {
        return None;
    }
    let entries: Vec<Value> = request["Entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|_| json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded (injected)"}))
                .collect()
        })
        .unwrap_or_default();
    Some(Fault::Reply(
        200,
        json!({"FailedEntryCount": entries.len(), "Entries": entries}),
    ))
}

#[test]
fn sigterm_exits_promptly_while_put_events_is_throttled_forever_and_the_event_waits() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint.clone(), throttle_every_entry);
    let Clients { rt, sqs, eb, .. } = moto.clients();
    let reconciled_url = rt.block_on(reconcile_bus_to_queue(&eb, &sqs, "reconciled"));
    let config = |endpoint: &str| {
        format!(
            "[reconcile]\nwait = \"200ms\"\n\
             [[sink]]\nkind = \"eventbridge\"\nevent_bus = \"vault-application\"\n\
             [aws]\nregion = \"us-east-1\"\naccount = \"123456789012\"\nendpoint_url = \"{endpoint}\"\n"
        )
    };
    let mut env = Env::new(&config(&proxy.endpoint));
    env.envs = moto.envs();
    let mut agent = env.start();
    let set_id = "Throttled0000001";
    let uploads: Vec<Value> = env
        .write_dataset(set_id, &crate::support::file_names(2))
        .iter()
        .map(|l| env.upload_for(l))
        .collect();
    assert_eq!(agent.post(&json!(uploads).to_string()).0, 202);
    crate::support::wait_until(
        "the throttled PutEvents to be retried",
        Duration::from_secs(60),
        || {
            let logs = agent.logs();
            logs.contains("delivery failed; will retry") && logs.contains("ThrottlingException")
        },
    );
    agent.stop();
    let logs = agent.logs();
    assert!(
        !logs.contains("shutdown took longer"),
        "SIGTERM waited for the throttled sink:\n{logs}"
    );
    assert!(logs.contains("vault-agent stopped"), "{logs}");
    drop(agent);

    // The event waited in the outbox: the next run delivers it.
    env.extra_config = config(&moto.endpoint);
    let _agent = env.start();
    rt.block_on(async {
        let start = Instant::now();
        loop {
            let bodies = receive_json(&sqs, &reconciled_url).await;
            if bodies.iter().any(|b| b["detail"]["set-id"] == set_id) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the event was not delivered after the restart"
            );
        }
    });
}
