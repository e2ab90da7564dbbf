//! The LLM gateway end to end: the real `jarvis-cloud` on port 0 forwarding to a fake Anthropic
//! server on loopback (real HTTP, real SSE), called by a plain HTTP client, by the official
//! Anthropic Python SDK and by the official Claude Code CLI.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jarvis_testkit::fake::{
    FakeOptions, FakeResponse, FakeServer, RecordedRequest, reply, sse_body,
};
use jarvis_testkit::sign::rsa_key;
use jarvis_testkit::{CloudAgent, add_user};
use serde_json::{Value, json};

const UPSTREAM_KEY: &str = "sk-upstream-test-not-a-real-key";

/// Answers whatever a client asks, as the API would: count_tokens with a count, a streaming
/// request with SSE, any other request with a JSON message.
fn api_like(req: &RecordedRequest) -> FakeResponse {
    if req.path.starts_with("/v1/messages/count_tokens") {
        return FakeResponse::raw(200, r#"{"input_tokens":17}"#);
    }
    let text = "Hello from the fake upstream.";
    if req.body["stream"] == true {
        return FakeResponse::sse(&reply(text, &[], (11, 7, 3, 5)), &[64]);
    }
    let msg = json!({
        "id": "msg_fake_json", "type": "message", "role": "assistant", "model": "fake-model",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 11, "output_tokens": 7,
                  "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5}
    });
    FakeResponse::raw(200, &msg.to_string())
}

async fn fake_api() -> FakeServer {
    FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(api_like)),
        },
    )
    .await
    .unwrap()
}

fn start(dir: &Path, upstream: &str, extra: &[(&str, &str)]) -> CloudAgent {
    let mut env = vec![
        ("ANTHROPIC_BASE_URL", upstream),
        ("ANTHROPIC_API_KEY", UPSTREAM_KEY),
    ];
    env.extend_from_slice(extra);
    CloudAgent::start_with_env(dir, 0, &env).unwrap()
}

async fn usage(agent: &CloudAgent, token: &str) -> Value {
    reqwest::Client::new()
        .get(agent.http_url("/api/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn user_id(agent: &CloudAgent, token: &str) -> String {
    let me: Value = reqwest::Client::new()
        .get(agent.http_url("/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    me["user"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_chunk_by_chunk_forwards_headers_and_records_usage_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_api().await;
    let agent = start(dir.path(), &fake.url(), &[]);
    let alice = add_user(dir.path(), "alice").unwrap();
    let bob = add_user(dir.path(), "bob").unwrap();
    let http = reqwest::Client::new();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});

    // A slow upstream: one event per chunk, 150 ms apart. Passed through unbuffered, the
    // chunks arrive spread over the same time; buffered, they would arrive together.
    let events = reply("abcdefghij", &[], (100, 20, 40, 300));
    let expected_body = sse_body(&events);
    let n_events = events.len();
    let mut slow = FakeResponse::sse(&events, &[1 << 20]);
    slow.chunks = events
        .iter()
        .map(|e| sse_body(std::slice::from_ref(e)).into_bytes())
        .collect();
    fake.push(slow.with_delay(Duration::from_millis(150)));
    let resp = http
        .post(agent.http_url("/v1/messages?beta=true"))
        .header("x-api-key", &alice)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "prompt-caching-2024-07-31,fine-grained-tool-streaming",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
        arrivals.push(Instant::now());
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        expected_body,
        "byte for byte"
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        arrivals.len() >= 3 && spread >= Duration::from_millis(150 * (n_events as u64 - 3)),
        "{} chunks over {spread:?}: the stream was buffered",
        arrivals.len()
    );
    let up = &fake.requests()[0];
    assert_eq!(up.path, "/v1/messages?beta=true");
    assert_eq!(up.headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(up.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        up.headers["anthropic-beta"],
        "prompt-caching-2024-07-31,fine-grained-tool-streaming"
    );
    assert!(!up.headers.contains_key("authorization"));
    assert!(
        !format!("{:?}", up.headers).contains(&alice),
        "member token leaked upstream"
    );
    assert_eq!(up.body, body);

    // Non-streaming, with a bearer token this time; count_tokens.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let resp = http
        .post(agent.http_url("/v1/messages"))
        .bearer_auth(&bob)
        .header("anthropic-version", "2023-06-01")
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "Hello from the fake upstream.");
    let resp = http
        .post(agent.http_url("/v1/messages/count_tokens"))
        .header("x-api-key", &bob)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], 17);
    assert_eq!(
        fake.requests().last().unwrap().path,
        "/v1/messages/count_tokens"
    );

    // Refused: no token, an unknown token, a revoked-looking one; in Anthropic's error shape.
    let before = fake.requests().len();
    for auth in [None, Some("jt_not_a_token"), Some("")] {
        let mut r = http
            .post(agent.http_url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some(t) = auth {
            r = r.header("x-api-key", t);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    // A read-only token (a shared link) cannot spend the team's money.
    let read_only =
        jarvis_testkit::create_user_token(dir.path(), Some("alice"), &["*"], true).unwrap();
    let resp = http
        .post(agent.http_url("/v1/messages"))
        .header("x-api-key", &read_only)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "permission_error"
    );
    assert_eq!(
        fake.requests().len(),
        before,
        "a refused request reached upstream"
    );

    // Usage per user, cache writes and reads included: alice's stream, bob's JSON reply.
    let (alice_id, bob_id) = (user_id(&agent, &alice).await, user_id(&agent, &bob).await);
    let admin = jarvis_testkit::create_token(dir.path(), &["*"], false).unwrap();
    let last = wait_usage(&agent, &admin, "usage of both users", |u| {
        let by = &u["gateway"]["by_user"];
        by[&alice_id]["requests"] == 1 && by[&bob_id]["requests"] == 1
    })
    .await;
    let a = &last["gateway"]["by_user"][&alice_id];
    assert_eq!(
        (
            &a["input_tokens"],
            &a["output_tokens"],
            &a["cache_write_tokens"],
            &a["cache_read_tokens"]
        ),
        (&json!(100), &json!(20), &json!(40), &json!(300))
    );
    // Priced by the model table; the fake reports `fake-model`, which it does not know, so at
    // the default model's prices: 100 × 2 + 20 × 10 + 40 × 2.50 + 300 × 0.20 micro-dollars.
    assert_eq!(a["cost_micros"], 560);
    let b = &last["gateway"]["by_user"][&bob_id];
    assert_eq!(
        (&b["input_tokens"], &b["cache_write_tokens"]),
        (&json!(11), &json!(3))
    );
    // A member sees only their own.
    let own = usage(&agent, &alice).await;
    let own = own["gateway"]["by_user"].as_object().unwrap();
    assert_eq!(own.keys().collect::<Vec<_>>(), vec![&alice_id]);
}

/// Polls `/api/usage` until `cond` holds on it (or fails after 10 s); returns it.
async fn wait_usage(
    agent: &CloudAgent,
    token: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = usage(agent, token).await;
        if cond(&u) {
            return u;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {u}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_user_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_api().await;
    let agent = start(
        dir.path(),
        &fake.url(),
        &[
            ("JARVIS_GATEWAY_RATE_BURST", "2"),
            ("JARVIS_GATEWAY_RATE_PER_SECOND", "0.01"),
        ],
    );
    let alice = add_user(dir.path(), "alice").unwrap();
    let bob = add_user(dir.path(), "bob").unwrap();
    let http = reqwest::Client::new();
    let call = |token: String| {
        let http = http.clone();
        let url = agent.http_url("/v1/messages/count_tokens");
        async move {
            http.post(url)
                .header("x-api-key", token)
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(call(alice.clone()).await.status(), 200);
    assert_eq!(call(alice.clone()).await.status(), 200);
    let limited = call(alice.clone()).await;
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    let v: Value = limited.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Another user is not held back by alice's bucket.
    assert_eq!(call(bob).await.status(), 200);
    assert_eq!(fake.requests().len(), 3);
}

fn gateway_clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_streams_through_the_gateway() {
    let python = gateway_clients_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh (it installs the anthropic SDK)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_api().await;
    let agent = start(dir.path(), &fake.url(), &[]);
    let alice = add_user(dir.path(), "alice").unwrap();
    let out = tokio::task::spawn_blocking({
        let url = agent.http_url("");
        let alice = alice.clone();
        move || {
            Command::new(python)
                .arg(gateway_clients_dir().join("sdk_stream.py"))
                .env("GATEWAY_URL", url)
                .env("MEMBER_TOKEN", alice)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk_stream.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["text"], "Hello from the fake upstream.");
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 3);
    assert_eq!(v["count_tokens"], 17);
    assert_eq!(v["unauthenticated"], "AuthenticationError");
    // The SDK's own headers reached upstream; its key did not.
    let streamed = fake
        .requests()
        .into_iter()
        .find(|r| r.body["stream"] == true)
        .unwrap();
    // Whatever version the SDK speaks is passed on, as is the beta it asked for.
    assert!(streamed.headers["anthropic-version"].starts_with("20"));
    assert_eq!(
        streamed.headers["anthropic-beta"],
        "prompt-caching-2024-07-31"
    );
    assert_eq!(streamed.headers["x-api-key"], UPSTREAM_KEY);
    let id = user_id(&agent, &alice).await;
    wait_usage(&agent, &alice, "the SDK's request recorded", |u| {
        u["gateway"]["by_user"][&id]["output_tokens"] == 7
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_cli_completes_a_print_request_through_the_gateway() {
    let claude = gateway_clients_dir().join("node_modules/.bin/claude");
    assert!(
        claude.exists(),
        "{} is missing: run scripts/install-deps.sh (it installs @anthropic-ai/claude-code)",
        claude.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fake = fake_api().await;
    let agent = start(dir.path(), &fake.url(), &[]);
    let alice = add_user(dir.path(), "alice").unwrap();
    let out = tokio::task::spawn_blocking({
        let url = agent.http_url("");
        let alice = alice.clone();
        let home = home.path().to_path_buf();
        let work = work.path().to_path_buf();
        move || {
            Command::new(claude)
                .args(["-p", "hi", "--model", "claude-sonnet-4-5"])
                .current_dir(work)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join(".config"))
                .env("ANTHROPIC_BASE_URL", url)
                .env("ANTHROPIC_API_KEY", alice)
                .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
                .env("DISABLE_AUTOUPDATER", "1")
                .env("DISABLE_TELEMETRY", "1")
                .env("DISABLE_ERROR_REPORTING", "1")
                .env("CI", "true")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        out.status.success() && stdout.contains("Hello from the fake upstream."),
        "claude -p failed ({}):\nstdout: {stdout}\nstderr: {}\nupstream saw: {paths:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("claude -p made these upstream requests: {paths:?}");
    let main = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.starts_with("/v1/messages") && r.body["stream"] == true)
        .unwrap();
    assert_eq!(main.headers["x-api-key"], UPSTREAM_KEY);
    assert!(main.headers.contains_key("anthropic-version"));
    let id = user_id(&agent, &alice).await;
    let want = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages") && !r.path.contains("count_tokens"))
        .count();
    wait_usage(&agent, &alice, "claude's requests recorded", |u| {
        u["gateway"]["by_user"][&id]["requests"] == json!(want)
    })
    .await;
}

/// Streams a request through the gateway and returns the body the client received.
async fn stream_through(agent: &CloudAgent, token: &str) -> (u16, String, String) {
    let resp = reqwest::Client::new()
        .post(agent.http_url("/v1/messages"))
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(
            &json!({"model": "anthropic.claude-sonnet-4-5-v1:0", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_upstream_is_signed_and_its_event_stream_reframed_as_sse() {
    let dir = tempfile::tempdir().unwrap();
    let events = reply("Hello from Bedrock.", &[], (21, 9, 4, 6));
    let fake = FakeServer::start(vec![FakeResponse::bedrock(&events, &[5, 11, 2, 97])])
        .await
        .unwrap();
    let agent = CloudAgent::start_with_env(
        dir.path(),
        0,
        &[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
            ("ANTHROPIC_BEDROCK_BASE_URL", &fake.url()),
        ],
    )
    .unwrap();
    let alice = add_user(dir.path(), "alice").unwrap();
    let (status, ct, body) = stream_through(&agent, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/event-stream");
    assert_eq!(body, sse_body(&events), "re-framed event for event");
    let r = &fake.requests()[0];
    assert_eq!(
        r.path,
        "/model/anthropic.claude-sonnet-4-5-v1%3A0/invoke-with-response-stream"
    );
    assert!(r.body.get("model").is_none() && r.body.get("stream").is_none());
    assert_eq!(r.body["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(
        r.body["anthropic_beta"],
        json!(["interleaved-thinking-2025-05-14"])
    );
    assert!(
        r.headers["authorization"].starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{:?}",
        r.headers
    );
    assert!(!format!("{:?}", r.headers).contains(&alice));
    let id = user_id(&agent, &alice).await;
    wait_usage(&agent, &alice, "bedrock usage", |u| {
        u["gateway"]["by_user"][&id]["cache_read_tokens"] == 6
    })
    .await;

    // Not streaming: InvokeModel, whose JSON is the API's message, passed back as is.
    let msg = json!({"id": "msg_bdrk", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "Plain."}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 2}});
    fake.push(FakeResponse::raw(200, &msg.to_string()));
    let resp = reqwest::Client::new()
        .post(agent.http_url("/v1/messages"))
        .header("x-api-key", &alice)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "anthropic.claude-sonnet-4-5-v1:0", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), msg);
    let r = &fake.requests()[1];
    assert_eq!(r.path, "/model/anthropic.claude-sonnet-4-5-v1%3A0/invoke");
    assert_eq!(r.headers["accept"], "application/json");
    wait_usage(&agent, &alice, "both bedrock requests", |u| {
        u["gateway"]["by_user"][&id]["requests"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_upstream_gets_a_service_account_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    rsa_key(&key);
    let events = reply("Hello from Vertex.", &[], (8, 3, 0, 0));
    let fake = FakeServer::start(vec![
        FakeResponse::raw(
            200,
            r#"{"access_token":"ya29.fake-token","expires_in":3600,"token_type":"Bearer"}"#,
        ),
        FakeResponse::sse(&events, &[7]),
    ])
    .await
    .unwrap();
    let sa = dir.path().join("sa.json");
    std::fs::write(
        &sa,
        json!({
            "type": "service_account",
            "client_email": "jarvis@example-project.iam.gserviceaccount.com",
            "private_key": std::fs::read_to_string(&key).unwrap(),
            "token_uri": format!("{}/token", fake.url()),
        })
        .to_string(),
    )
    .unwrap();
    let agent = CloudAgent::start_with_env(
        dir.path(),
        0,
        &[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "example-project"),
            ("GOOGLE_APPLICATION_CREDENTIALS", sa.to_str().unwrap()),
            ("ANTHROPIC_VERTEX_BASE_URL", &fake.url()),
        ],
    )
    .unwrap();
    let alice = add_user(dir.path(), "alice").unwrap();
    let (status, _, body) = stream_through(&agent, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, sse_body(&events));
    let reqs = fake.requests();
    assert_eq!(reqs[0].path, "/token");
    let r = &reqs[1];
    assert_eq!(
        r.path,
        "/v1/projects/example-project/locations/us-east5/publishers/anthropic/models/anthropic.claude-sonnet-4-5-v1:0:streamRawPredict"
    );
    assert_eq!(r.headers["authorization"], "Bearer ya29.fake-token");
    assert_eq!(r.body["anthropic_version"], "vertex-2023-10-16");
    assert_eq!(r.body["stream"], true);

    // count_tokens: Vertex's count-tokens endpoint, the model in the body; the token reused.
    fake.push(FakeResponse::raw(200, r#"{"input_tokens":9}"#));
    let resp = reqwest::Client::new()
        .post(agent.http_url("/v1/messages/count_tokens"))
        .header("x-api-key", &alice)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], 9);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "one token exchange for both requests");
    assert_eq!(
        reqs[2].path,
        "/v1/projects/example-project/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    );
    assert_eq!(reqs[2].body["model"], "claude-sonnet-4-5");
    assert_eq!(reqs[2].body["anthropic_version"], "vertex-2023-10-16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_is_charged_what_passed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_api().await;
    let agent = start(dir.path(), &fake.url(), &[]);
    let alice = add_user(dir.path(), "alice").unwrap();
    // A long reply, one event per write, 50 ms apart: the client leaves after the first.
    let events = reply(&"word ".repeat(60), &[], (321, 50, 0, 0));
    let mut slow = FakeResponse::sse(&events, &[1 << 20]);
    slow.chunks = events
        .iter()
        .map(|e| sse_body(std::slice::from_ref(e)).into_bytes())
        .collect();
    fake.push(slow.with_delay(Duration::from_millis(50)));
    let resp = reqwest::Client::new()
        .post(agent.http_url("/v1/messages"))
        .header("x-api-key", &alice)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "m", "max_tokens": 500, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(stream);
    let id = user_id(&agent, &alice).await;
    let u = wait_usage(&agent, &alice, "the cut request recorded", |u| {
        u["gateway"]["by_user"][&id]["requests"] == 1
    })
    .await;
    // message_start's input side is charged; the final output count never arrived.
    let mine = &u["gateway"]["by_user"][&id];
    assert_eq!(mine["input_tokens"], 321);
    assert_eq!(mine["output_tokens"], 1);
}
