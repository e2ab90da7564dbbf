//! The same two-tool task through Bedrock, Vertex and an OpenAI-compatible server, each faked
//! with its real wire format, and provider selection from the Claude Code variables.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::providers::{
    EventStreamDecoder, ProviderConfig, SignedParts, encode_event_message, sigv4_headers,
};
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, Role, SessionDoc};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use jarvis_testkit::sign::{amz_date, rsa_key};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yrs::Doc;

const CHUNKS: &[usize] = &[5, 11, 2, 97];

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_file(_: &str) -> std::io::Result<String> {
    Err(std::io::Error::other("no file in this test"))
}

/// Runs "read hello.txt, then edit it, then say done" and checks the outcome.
async fn two_tool_task(provider: &dyn jarvis_agent::anthropic::Provider) -> SessionDoc {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "Hello, world!\n").unwrap();
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "greet Jarvis");
    let mut config = RunnerConfig::new("fake-model", "cloud");
    config.flush_interval = Duration::from_millis(1);
    let mut runner = Runner::new(
        session.clone(),
        provider,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::AcceptEdits),
        config,
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        runner.run(&CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::EndTurn);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "Hello, Jarvis!\n"
    );
    let msgs = session.messages();
    assert_eq!(msgs.len(), 6);
    assert!(
        matches!(&msgs[2].blocks[0], Block::ToolResult { content, is_error: false, .. } if content.contains("Hello, world!"))
    );
    assert_eq!(msgs[5].role, Role::Assistant);
    assert_eq!(
        msgs[5].blocks,
        vec![Block::Text {
            text: "All done.".into()
        }]
    );
    session
}

fn read_call() -> (&'static str, &'static str, Value) {
    ("tu_r", "read", json!({"path": "hello.txt"}))
}

fn edit_call() -> (&'static str, &'static str, Value) {
    (
        "tu_e",
        "edit",
        json!({"path": "hello.txt", "old_string": "world", "new_string": "Jarvis"}),
    )
}

#[tokio::test]
async fn bedrock_event_stream_and_sigv4() {
    let server = FakeServer::start(vec![
        FakeResponse::bedrock(&reply("", &[read_call()], (10, 5, 7, 0)), CHUNKS),
        FakeResponse::bedrock(&reply("", &[edit_call()], (10, 5, 0, 7)), CHUNKS),
        FakeResponse::bedrock(&reply("All done.", &[], (10, 5, 0, 7)), CHUNKS),
    ])
    .await
    .unwrap();
    let config = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
            ("AWS_SESSION_TOKEN", "session-token-example"),
            ("ANTHROPIC_BEDROCK_BASE_URL", &server.url()),
        ]),
        no_file,
    )
    .unwrap();
    let provider = config.build().unwrap();
    let session = two_tool_task(provider.as_ref()).await;
    assert_eq!(session.meta().usage.cache_read_tokens, 14);

    let creds = aws_credential_types::Credentials::new(
        "AKIDEXAMPLE",
        "not-a-real-secret",
        Some("session-token-example".into()),
        None,
        "test",
    );
    for r in server.requests() {
        assert_eq!(r.path, "/model/fake-model/invoke-with-response-stream");
        assert_eq!(r.body["anthropic_version"], "bedrock-2023-05-31");
        assert!(r.body.get("model").is_none() && r.body.get("stream").is_none());
        let auth = &r.headers["authorization"];
        let date = &r.headers["x-amz-date"];
        assert!(auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{}/us-east-1/bedrock/aws4_request, SignedHeaders=", &date[..8])), "{auth}");
        assert_eq!(r.headers["x-amz-security-token"], "session-token-example");
        // Recompute the signature over exactly what arrived: a changed body would not match.
        let url = format!("{}{}", server.url(), r.path);
        let headers = [
            ("content-type", "application/json"),
            ("accept", "application/vnd.amazon.eventstream"),
        ];
        let parts = SignedParts {
            method: "POST",
            url: &url,
            headers: &headers,
            body: &r.raw_body,
        };
        let expected =
            sigv4_headers(&creds, "us-east-1", "bedrock", parts, amz_date(date)).unwrap();
        let want = expected.iter().find(|(k, _)| k == "authorization").unwrap();
        assert_eq!(&want.1, auth, "SigV4 signature does not verify");
        let tampered_parts = SignedParts {
            body: b"{}",
            ..parts
        };
        let tampered = sigv4_headers(
            &creds,
            "us-east-1",
            "bedrock",
            tampered_parts,
            amz_date(date),
        )
        .unwrap();
        assert_ne!(
            &tampered
                .iter()
                .find(|(k, _)| k == "authorization")
                .unwrap()
                .1,
            auth
        );
    }
}

#[test]
fn event_stream_checksums_are_verified() {
    let msg = encode_event_message(&[(":message-type", "event")], b"{\"bytes\":\"e30=\"}");
    let mut d = EventStreamDecoder::default();
    // Byte by byte still yields exactly one message.
    let mut got = Vec::new();
    for b in &msg {
        got.extend(d.feed(std::slice::from_ref(b)).unwrap());
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers[":message-type"], "event");
    let mut bad = msg.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    assert!(
        EventStreamDecoder::default()
            .feed(&bad)
            .unwrap_err()
            .contains("message checksum")
    );
    let mut bad = msg;
    bad[2] ^= 0x01;
    assert!(
        EventStreamDecoder::default()
            .feed(&bad)
            .unwrap_err()
            .contains("prelude checksum")
    );
}

fn rsa_keypair(dir: &std::path::Path) -> (String, String) {
    rsa_key(&dir.join("key.pem"))
}

#[tokio::test]
async fn vertex_service_account_oauth() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keypair(dir.path());
    let server = FakeServer::start(vec![
        FakeResponse::raw(
            200,
            r#"{"access_token":"ya29.fake-token","expires_in":3600,"token_type":"Bearer"}"#,
        ),
        FakeResponse::sse(&reply("", &[read_call()], (10, 5, 0, 0)), CHUNKS),
        FakeResponse::sse(&reply("", &[edit_call()], (10, 5, 0, 0)), CHUNKS),
        FakeResponse::sse(&reply("All done.", &[], (10, 5, 0, 0)), CHUNKS),
    ])
    .await
    .unwrap();
    let sa = json!({
        "type": "service_account",
        "client_email": "jarvis@example-project.iam.gserviceaccount.com",
        "private_key": private,
        "token_uri": format!("{}/token", server.url()),
    })
    .to_string();
    let config = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "example-project"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/creds/sa.json"),
            ("ANTHROPIC_VERTEX_BASE_URL", &server.url()),
        ]),
        |path| {
            assert_eq!(path, "/creds/sa.json");
            Ok(sa.clone())
        },
    )
    .unwrap();
    let provider = config.build().unwrap();
    two_tool_task(provider.as_ref()).await;
    let reqs = server.requests();
    // One token exchange, reused for all three model calls.
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].path, "/token");
    let form = String::from_utf8(reqs[0].raw_body.clone()).unwrap();
    assert!(
        form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{form}"
    );
    let assertion = form
        .split("assertion=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", server.url())]);
    let claims = jsonwebtoken::decode::<Value>(
        assertion,
        &jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
        &validation,
    )
    .expect("the assertion must verify with the service account's public key")
    .claims;
    assert_eq!(
        claims["iss"],
        "jarvis@example-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    for r in &reqs[1..] {
        assert_eq!(
            r.path,
            "/v1/projects/example-project/locations/us-east5/publishers/anthropic/models/fake-model:streamRawPredict"
        );
        assert_eq!(r.headers["authorization"], "Bearer ya29.fake-token");
        assert_eq!(r.body["anthropic_version"], "vertex-2023-10-16");
    }
}

#[tokio::test]
async fn openai_compatible_tool_calls_are_mapped() {
    let server = FakeServer::start(vec![
        FakeResponse::openai("", &[read_call()], CHUNKS),
        FakeResponse::openai("", &[edit_call()], CHUNKS),
        FakeResponse::openai("All done.", &[], CHUNKS),
    ])
    .await
    .unwrap();
    let provider =
        ProviderConfig::from_env(&env(&[("JARVIS_OPENAI_BASE_URL", &server.url())]), no_file)
            .unwrap()
            .build()
            .unwrap();
    let session = two_tool_task(provider.as_ref()).await;
    assert_eq!(session.meta().usage.input_tokens, 36);
    let reqs = server.requests();
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    let second = &reqs[1].body;
    assert_eq!(second["messages"][0]["role"], "system");
    let msgs = second["messages"].as_array().unwrap();
    let assistant = msgs.iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "read");
    assert_eq!(
        serde_json::from_str::<Value>(
            assistant["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        )
        .unwrap()["path"],
        "hello.txt"
    );
    let tool = msgs.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(tool["tool_call_id"], "tu_r");
    assert!(tool["content"].as_str().unwrap().contains("Hello, world!"));
    assert_eq!(second["tools"][0]["type"], "function");
}

#[test]
fn selection_follows_claude_code_variables() {
    let gw = ProviderConfig::from_env(
        &env(&[
            ("ANTHROPIC_BASE_URL", "https://gw.example"),
            ("ANTHROPIC_AUTH_TOKEN", "tok"),
            ("ANTHROPIC_CUSTOM_HEADERS", "X-Team: core\nX-Trace: 1"),
        ]),
        no_file,
    )
    .unwrap();
    match gw {
        ProviderConfig::Gateway {
            base_url,
            auth_token,
            headers,
        } => {
            assert_eq!(base_url, "https://gw.example");
            assert_eq!(auth_token, "tok");
            assert_eq!(headers["X-Team"], "core");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ProviderConfig::from_env(&env(&[("ANTHROPIC_API_KEY", "k")]), no_file).unwrap(),
        ProviderConfig::Anthropic { ref base_url, .. } if base_url == "https://api.anthropic.com"
    ));
    let err = ProviderConfig::from_env(&env(&[]), no_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no provider configured"), "{err}");
    // Shared credentials file, named profile.
    let file = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n\n[work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = w\naws_session_token = t\n";
    let cfg = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_PROFILE", "work"),
            ("HOME", "/home/u"),
        ]),
        |p| {
            assert_eq!(p, "/home/u/.aws/credentials");
            Ok(file.to_owned())
        },
    )
    .unwrap();
    assert!(
        matches!(cfg, ProviderConfig::Bedrock { ref access_key_id, ref session_token, .. }
        if access_key_id == "AKIDWORK" && session_token.as_deref() == Some("t"))
    );
    // A profile without static keys (a role, SSO) or no file: the rest of the AWS chain.
    let cfg = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_PROFILE", "nope"),
            ("HOME", "/h"),
        ]),
        |_| Ok(file.to_owned()),
    )
    .unwrap();
    assert!(
        matches!(cfg, ProviderConfig::BedrockChain { ref region, .. } if region == "eu-west-1")
    );
    let cfg = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "eu-west-1"),
        ]),
        no_file,
    )
    .unwrap();
    assert!(matches!(cfg, ProviderConfig::BedrockChain { .. }));
    let err = ProviderConfig::from_env(&env(&[("CLAUDE_CODE_USE_BEDROCK", "1")]), no_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("AWS_REGION"), "{err}");
    let err = ProviderConfig::from_env(
        &env(&[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "r"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "p"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/x"),
        ]),
        no_file,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read service account file /x"), "{err}");
}
