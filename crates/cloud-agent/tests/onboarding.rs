//! Onboarding through the router exactly as served (`server::build`, `oneshot`): the owner made
//! with the setup code (once, wrong codes counted), the provider tested with one real request to
//! a fake Anthropic server before it is saved and taken up without a restart, uploads and the
//! clone URL checks, invitations by link (single use, never above the inviter), Retry only of a
//! failed session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use serde_json::{Value, json};

/// The API test server (`common::start`), with anonymous budgets wide enough for the many
/// setup and invitation calls one test makes.
struct Server(common::TestApp);

impl std::ops::Deref for Server {
    type Target = common::TestApp;
    fn deref(&self) -> &common::TestApp {
        &self.0
    }
}

async fn server() -> Server {
    server_with(&[]).await
}

async fn server_with(extra: &[&str]) -> Server {
    let mut args = vec!["--anon-rate-burst", "10000"];
    args.extend_from_slice(extra);
    Server(common::start(&args).await)
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let r = self.0.call(method, path, token, body).await;
        (r.status, r.json)
    }

    /// Makes the owner with a fresh setup code; returns its token.
    async fn owner(&self) -> String {
        let code = self.built.onboarding.as_ref().unwrap().new_setup_code();
        let (s, v) = self
            .call(
                Method::POST,
                "/api/setup",
                None,
                Some(json!({"code": code, "name": "Olga"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_code_makes_the_owner_once() {
    let s = server().await;
    let (st, v) = s.call(Method::GET, "/api/setup", None, None).await;
    assert_eq!((st, v["needed"].as_bool()), (StatusCode::OK, Some(true)));
    let code = s.built.onboarding.as_ref().unwrap().new_setup_code();
    let (st, v) = s
        .call(
            Method::POST,
            "/api/setup",
            None,
            Some(json!({"code": "AAAA-AAAA", "name": "Mallory"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "wrong_setup_code");
    // A taken name does not spend the code.
    let (st, v) = s
        .call(
            Method::POST,
            "/api/setup",
            None,
            Some(json!({"code": code, "name": "admin"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // Typed in lower case without the dash: the same code.
    let typed = code.replace('-', "").to_lowercase();
    let (st, v) = s
        .call(
            Method::POST,
            "/api/setup",
            None,
            Some(json!({"code": typed, "name": "Olga"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let (st, me) = s.call(Method::GET, "/api/me", Some(&token), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (me["name"].as_str(), me["admin"].as_bool()),
        (Some("Olga"), Some(true))
    );
    // Single use, and no setup once the owner exists (even with a new code).
    let again = s.built.onboarding.as_ref().unwrap().new_setup_code();
    let (st, v) = s
        .call(
            Method::POST,
            "/api/setup",
            None,
            Some(json!({"code": again, "name": "Eve"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (_, v) = s.call(Method::GET, "/api/setup", None, None).await;
    assert_eq!(v["needed"].as_bool(), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_setup_codes_burn_the_code() {
    let s = server().await;
    let code = s.built.onboarding.as_ref().unwrap().new_setup_code();
    for _ in 0..jarvis_cloud::onboarding::setup::MAX_FAILURES {
        let (st, _) = s
            .call(
                Method::POST,
                "/api/setup",
                None,
                Some(json!({"code": "ZZZZ-ZZZZ", "name": "Mallory"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
    let (st, v) = s
        .call(
            Method::POST,
            "/api/setup",
            None,
            Some(json!({"code": code, "name": "Olga"})),
        )
        .await;
    assert_eq!(st, StatusCode::GONE, "{v}");
    assert_eq!(v["code"], "setup_code_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_is_tested_saved_and_never_shown() {
    let s = server().await;
    let owner = s.owner().await;
    let fake = FakeServer::start(vec![
        FakeResponse::raw(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        FakeResponse::sse(&reply("OK", &[], (5, 1, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let form = |key: &str| json!({"kind": "anthropic", "api_key": key, "base_url": fake.url()});
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(form("sk-wrong-1234")),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["code"], "provider_key_refused");
    assert!(v["message"].as_str().unwrap().contains("refused the key"));
    let (_, shown) = s
        .call(Method::GET, "/api/server/provider", Some(&owner), None)
        .await;
    assert_eq!(
        shown["source"], "none",
        "a failed test saves nothing: {shown}"
    );
    assert_eq!(shown["configured"], false);

    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(form("sk-right-5678")),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one real request per test");
    assert!(
        requests[1]
            .headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && v == "sk-right-5678"),
        "the test request carried the key"
    );
    let (_, shown) = s
        .call(Method::GET, "/api/server/provider", Some(&owner), None)
        .await;
    assert_eq!(
        (
            shown["source"].as_str(),
            shown["kind"].as_str(),
            shown["configured"].as_bool()
        ),
        (Some("browser"), Some("anthropic"), Some(true)),
        "{shown}"
    );
    assert!(!shown.to_string().contains("sk-right"), "{shown}");
    // Kept encrypted in the server scope: listed by name, never by value.
    let (_, listed) = s
        .call(Method::GET, "/api/secrets/server", Some(&owner), None)
        .await;
    assert!(
        listed.to_string().contains("JARVIS_MODEL_PROVIDER"),
        "{listed}"
    );
    assert!(!listed.to_string().contains("sk-right"), "{listed}");
    // Not for anyone else.
    let (st, _) = s
        .call(Method::GET, "/api/server/provider", None, None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_become_synced_files_and_clones_stay_outside() {
    let s = server().await;
    let owner = s.owner().await;
    use base64::Engine;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let (st, v) = s
        .call(
            Method::POST,
            "/api/onboarding/workspace",
            Some(&owner),
            Some(json!({"id": "notes", "source": "files", "files": [
                {"path": "README.md", "content": b64("# Notes\n")},
                {"path": "docs/plan.md", "content": b64("1. Start\n")},
            ]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .call(Method::GET, "/api/workspaces/notes", Some(&owner), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(paths, ["README.md", "docs/plan.md"], "{v}");
    // Into a workspace with files, and paths that leave it: refused.
    for (id, files) in [
        ("notes", json!([{"path": "x.md", "content": b64("x")}])),
        (
            "other",
            json!([{"path": "../escape.md", "content": b64("x")}]),
        ),
        (
            "other",
            json!([{"path": "/etc/passwd", "content": b64("x")}]),
        ),
    ] {
        let (st, v) = s
            .call(
                Method::POST,
                "/api/onboarding/workspace",
                Some(&owner),
                Some(json!({"id": id, "source": "files", "files": files})),
            )
            .await;
        assert!(
            st == StatusCode::CONFLICT || st == StatusCode::BAD_REQUEST,
            "{st} {v}"
        );
    }
    // A clone may not reach this machine or a private network, nor read a local path.
    for url in [
        "https://127.0.0.1:1/repo.git",
        "https://10.0.0.1/repo.git",
        "file:///etc",
        "/srv/repos/secret.git",
        "http://example.com/repo.git",
    ] {
        let (st, v) = s
            .call(
                Method::POST,
                "/api/onboarding/workspace",
                Some(&owner),
                Some(json!({"id": "cloned", "source": "git", "git": {"url": url, "token": "t"}})),
            )
            .await;
        assert!(
            st == StatusCode::FORBIDDEN || st == StatusCode::BAD_REQUEST,
            "{url}: {st} {v}"
        );
    }
    // Refused before anything was made.
    let (st, _) = s
        .call(Method::GET, "/api/workspaces/cloned", Some(&owner), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_sign_up_once_and_never_above_the_inviter() {
    let s = server().await;
    let owner = s.owner().await;
    for id in ["shared", "private"] {
        let (st, v) = s
            .call(
                Method::POST,
                "/api/workspaces",
                Some(&owner),
                Some(json!({"id": id})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, inv) = s
        .call(
            Method::POST,
            "/api/invites",
            Some(&owner),
            Some(json!({"workspace": "shared", "role": "editor"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    let code = inv["code"].as_str().unwrap().to_owned();
    assert_eq!(inv["path"], format!("/invite/{code}"));
    let (st, shown) = s
        .call(Method::GET, &format!("/api/invites/{code}"), None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            shown["invited_by"].as_str(),
            shown["role"].as_str(),
            shown["workspace"].as_str()
        ),
        (Some("Olga"), Some("editor"), Some("shared"))
    );
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/invites/{code}/accept"),
            None,
            Some(json!({"name": "Ed"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ed = v["token"].as_str().unwrap().to_owned();
    // Ed sees what he was given, nothing more, and is no admin.
    let (_, ws) = s
        .call(Method::GET, "/api/workspaces", Some(&ed), None)
        .await;
    let ids: Vec<&str> = ws["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, ["shared"], "{ws}");
    let (st, _) = s.call(Method::GET, "/api/users", Some(&ed), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Single use.
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/invites/{code}/accept"),
            None,
            Some(json!({"name": "Eve"})),
        )
        .await;
    assert_eq!(st, StatusCode::GONE, "{v}");
    assert_eq!(v["code"], "invite_not_valid");
    // Ed (an editor of shared) may not invite an admin, an owner of shared, or into private.
    for body in [
        json!({"admin": true}),
        json!({"workspace": "shared", "role": "owner"}),
        json!({"workspace": "shared", "role": "editor"}),
        json!({"workspace": "private", "role": "viewer"}),
        json!({}),
    ] {
        let (st, v) = s
            .call(Method::POST, "/api/invites", Some(&ed), Some(body.clone()))
            .await;
        assert!(
            st == StatusCode::FORBIDDEN || st == StatusCode::NOT_FOUND,
            "{body}: {st} {v}"
        );
    }
    // The owner's admin invitation makes an admin.
    let (_, inv) = s
        .call(
            Method::POST,
            "/api/invites",
            Some(&owner),
            Some(json!({"admin": true})),
        )
        .await;
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/invites/{}/accept", inv["code"].as_str().unwrap()),
            None,
            Some(json!({"name": "Ada"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, _) = s
        .call(
            Method::GET,
            "/api/users",
            Some(v["token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_failed_session_is_retried() {
    let s = server().await;
    let owner = s.owner().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/workspaces",
            Some(&owner),
            Some(json!({"id": "w"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .call(
            Method::POST,
            "/api/sessions",
            Some(&owner),
            Some(json!({"id": "s1", "workspace": "w", "message": "hello"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .call(Method::POST, "/api/sessions/s1/retry", Some(&owner), None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "not_failed");
    s.built
        .state
        .hub
        .edit("session/s1", |doc| {
            jarvis_sync::doc::SessionDoc::new(doc.clone())
                .set_status(&jarvis_sync::doc::SessionStatus::Failed)
        })
        .await
        .unwrap();
    let (st, v) = s
        .call(Method::POST, "/api/sessions/s1/retry", Some(&owner), None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let notices = s
        .built
        .state
        .hub
        .read("session/s1", |doc| {
            jarvis_sync::doc::SessionDoc::new(doc.clone())
                .messages()
                .into_iter()
                .flat_map(|m| m.blocks)
                .filter(|b| matches!(b, jarvis_sync::doc::Block::Notice { kind, .. } if kind == "retry"))
                .count()
        })
        .await
        .unwrap();
    assert_eq!(notices, 1);
}

/// The session's status and all of its text, read from the hub.
async fn session_state(s: &Server, id: &str) -> (jarvis_sync::doc::SessionStatus, String) {
    s.built
        .state
        .hub
        .read(&format!("session/{id}"), |doc| {
            let d = jarvis_sync::doc::SessionDoc::new(doc.clone());
            let text = d
                .messages()
                .into_iter()
                .flat_map(|m| m.blocks)
                .filter_map(|b| match b {
                    jarvis_sync::doc::Block::Text { text } => Some(text),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
            (d.meta().status, text)
        })
        .await
        .unwrap()
}

async fn wait_for_status(s: &Server, id: &str, want: jarvis_sync::doc::SessionStatus) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, text) = session_state(s, id).await;
        if status == want {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session {id} is {status:?}, not {want:?}: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_saved_in_the_browser_answers_the_retried_turn_without_a_restart() {
    for var in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_USE_BEDROCK",
        "CLAUDE_CODE_USE_VERTEX",
        "JARVIS_OPENAI_BASE_URL",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set: this test needs a server without a provider"
        );
    }
    let s = server().await;
    let owner = s.owner().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/workspaces",
            Some(&owner),
            Some(json!({"id": "w"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .call(
            Method::POST,
            "/api/sessions",
            Some(&owner),
            Some(json!({"id": "s1", "workspace": "w", "message": "hello", "run": "cloud"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // No provider: the turn fails and says so.
    let text = wait_for_status(&s, "s1", jarvis_sync::doc::SessionStatus::Failed).await;
    assert!(text.contains("no model provider configured"), "{text}");
    let fake = FakeServer::start(vec![
        FakeResponse::sse(&reply("OK", &[], (5, 1, 0, 0)), &[64]),
        FakeResponse::sse(
            &reply("Hello from the saved provider.", &[], (9, 5, 0, 0)),
            &[64],
        ),
    ])
    .await
    .unwrap();
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(json!({"kind": "anthropic", "api_key": "sk-saved", "base_url": fake.url()})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Saving asked the provider once and ran nothing else: failed sessions wait for Retry.
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        session_state(&s, "s1").await.0,
        jarvis_sync::doc::SessionStatus::Failed
    );
    let (st, v) = s
        .call(Method::POST, "/api/sessions/s1/retry", Some(&owner), None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let text = wait_for_status(&s, "s1", jarvis_sync::doc::SessionStatus::Done).await;
    assert!(text.contains("Hello from the saved provider."), "{text}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "the retried turn asked once");
    assert!(
        requests[1].raw_body.windows(5).any(|w| w == b"hello"),
        "the turn the failure ended was asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_files_count_against_the_uploaders_document_quota() {
    let s = server_with(&["--max-documents-per-user", "4"]).await;
    let owner = s.owner().await;
    use base64::Engine;
    let files: Vec<Value> = (0..6)
        .map(|i| json!({"path": format!("f{i}.md"), "content": base64::engine::general_purpose::STANDARD.encode(format!("file {i}\n"))}))
        .collect();
    let (st, v) = s
        .call(
            Method::POST,
            "/api/onboarding/workspace",
            Some(&owner),
            Some(json!({"id": "big", "source": "files", "files": files})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("quota"), "{v}");
    // And the next workspace is refused too: the files were counted.
    let (st, v) = s
        .call(
            Method::POST,
            "/api/workspaces",
            Some(&owner),
            Some(json!({"id": "more"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_an_openai_compatible_server_are_tested_as_they_are_spoken_to() {
    let s = server().await;
    let owner = s.owner().await;
    let gateway = FakeServer::start(vec![FakeResponse::sse(
        &reply("OK", &[], (5, 1, 0, 0)),
        &[64],
    )])
    .await
    .unwrap();
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(json!({"kind": "gateway", "base_url": gateway.url(), "auth_token": "gw-token"})),
        )
        .await;
    assert_eq!(
        (st, v["kind"].as_str()),
        (StatusCode::OK, Some("gateway")),
        "{v}"
    );
    let r = &gateway.requests()[0];
    assert_eq!(
        r.headers.get("authorization").map(String::as_str),
        Some("Bearer gw-token")
    );
    let openai = FakeServer::start(vec![FakeResponse::openai("OK", &[], &[64])])
        .await
        .unwrap();
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(json!({"kind": "openai", "base_url": openai.url(), "model": "llama3.1"})),
        )
        .await;
    assert_eq!(
        (st, v["kind"].as_str()),
        (StatusCode::OK, Some("openai")),
        "{v}"
    );
    let r = &openai.requests()[0];
    assert_eq!(
        r.body["model"], "llama3.1",
        "the form's model is the one asked"
    );
    // The last one saved is the one in use.
    let (_, shown) = s
        .call(Method::GET, "/api/server/provider", Some(&owner), None)
        .await;
    assert_eq!(shown["kind"], "openai");
    // Unreachable: said plainly, nothing saved over the working one.
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/server/provider",
            Some(&owner),
            Some(json!({"kind": "anthropic", "api_key": "k", "base_url": "http://127.0.0.1:1"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["code"], "provider_unreachable");
    let (_, shown) = s
        .call(Method::GET, "/api/server/provider", Some(&owner), None)
        .await;
    assert_eq!(shown["kind"], "openai");
}
