//! The HTTP source's edges: bad input is refused with a 4xx naming the
//! problem, the agent stays healthy, and the API key is enforced.

use serde_json::json;

use crate::support::{Env, gateway_event, http_get};

#[test]
fn malformed_bodies_get_4xx_and_the_agent_stays_healthy() {
    let env = Env::new("");
    let agent = env.start();
    let good = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z");
    let mut no_key = good.clone();
    no_key["detail"]
        .as_object_mut()
        .unwrap()
        .remove("object-key");
    let mut bad_size = good.clone();
    bad_size["detail"]["object-size"] = json!("big");
    let mut bad_time = good.clone();
    bad_time["time"] = json!("tuesday");
    let cases = [
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        ("42", "found a number"),
        ("\"text\"", "found a string"),
        ("{}", "missing field `detail-type`"),
        (&no_key.to_string(), "missing field `detail.object-key`"),
        (
            &bad_size.to_string(),
            "field `detail.object-size` must be a non-negative integer, found a string",
        ),
        (
            &bad_time.to_string(),
            "field `time` is not an RFC 3339 timestamp",
        ),
        (
            &format!("[{good}, {{}}]"),
            "event 1: missing field `detail-type`",
        ),
    ];
    for (body, expected) in cases {
        let (code, answer) = agent.post(body);
        assert_eq!(code, 400, "body {body:?} got {code}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "body {body:?}: {message:?} should contain {expected:?}"
        );
    }
    // Nothing of a refused array was recorded.
    let status = agent.status(None);
    assert_eq!(status["datasets"], json!([]), "{status}");

    let huge = "x".repeat(17 << 20);
    assert_eq!(agent.post(&huge).0, 413);
    assert_eq!(http_get(&format!("{}/healthz", agent.base)).unwrap().0, 200);
    let (code, answer) = agent.post(&good.to_string());
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let (code, answer) = agent.post("[]");
    assert_eq!((code, &answer["accepted"]), (202, &json!(0)));
    assert_eq!(
        http_get(&format!("{}/status/nope", agent.base)).unwrap().0,
        404
    );
}

#[test]
fn api_key_is_required_when_configured() {
    let env = Env::new("").with_http("api_key = \"s3cret\"");
    let agent = env.start();
    let event = gateway_event("S-vaultjob/f", 3, "2021-05-01T10:00:00Z").to_string();
    assert_eq!(agent.post(&event).0, 401);
    assert_eq!(agent.post_with(&event, &[("x-api-key", "wrong")]).0, 401);
    assert_eq!(
        agent
            .post_with(&event, &[("authorization", "Bearer wrong")])
            .0,
        401
    );
    assert_eq!(agent.post_with(&event, &[("x-api-key", "s3cret")]).0, 202);
    assert_eq!(
        agent
            .post_with(&event, &[("authorization", "Bearer s3cret")])
            .0,
        202
    );
    // Health and status stay open for probes on loopback.
    assert_eq!(
        agent.status(None)["datasets"].as_array().map(Vec::len),
        Some(1)
    );
}
