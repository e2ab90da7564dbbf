//! The authorization matrix: every route the server registers (read from the router's
//! sources, so a new route without a row fails here) × the six callers an attacker can be
//! (another user, a narrow scope, a read-only token, no token, a viewer, an editor), sent
//! through the router exactly as served (`server::build`) with `oneshot`. Plus the escalation
//! paths through users, tokens, members and pairing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use jarvis_cloud::control::{Control, Identity};
use jarvis_cloud::server::{Built, ServeArgs, build};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::route_table;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The callers of the matrix, in the order each row is tried (the editor last: it is the one
/// allowed to change most).
const CALLERS: [&str; 6] = ["other", "narrow", "read_only", "none", "viewer", "editor"];

struct Fixture {
    _dir: tempfile::TempDir,
    built: Built,
    /// Tokens by caller, plus "owner" (the workspace owner's full token).
    tokens: std::collections::HashMap<&'static str, String>,
    owner_token_id: i64,
    owner_device: String,
    blob: String,
    /// One unapproved pairing code per caller.
    pair_codes: std::collections::HashMap<&'static str, String>,
}

fn ident(c: &Control, t: &str) -> Identity {
    c.identify(t).unwrap()
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    // Event streams never end: their status is the answer.
    let streaming = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return (status, String::new());
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let cli = Cli::parse_from([
        "serve",
        "--data-dir",
        &data,
        "--port",
        "0",
        "--sandbox",
        "limits",
        "--anon-rate-burst",
        "10000",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let built = build(&cli.serve, local, shutdown.clone()).await.unwrap();
    // The cloud runner reaches the hub over this listener, as in production.
    let (router, limits) = (built.router.clone(), built.limits);
    tokio::spawn(jarvis_cloud::limits::serve(
        listener,
        router,
        limits,
        jarvis_cloud::limits::TrustedProxies::default(),
        shutdown,
    ));
    let c = built.control.clone();
    let user = |name: &str| c.create_user(name, false).unwrap();
    let (olga, ed, vic, sam) = (user("olga"), user("ed"), user("vic"), user("sam"));
    let tok = |u: &jarvis_cloud::control::User, label: &str, scopes: &[&str], ro: bool| {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        c.create_token(&u.id, None, label, &scopes, ro).unwrap()
    };
    let mut tokens = std::collections::HashMap::new();
    tokens.insert("owner", tok(&olga, "olga-full", &["*"], false));
    tokens.insert(
        "narrow",
        tok(&olga, "olga-narrow", &["session/other"], false),
    );
    tokens.insert("read_only", tok(&olga, "olga-ro", &["*"], true));
    tokens.insert("editor", tok(&ed, "ed", &["*"], false));
    tokens.insert("viewer", tok(&vic, "vic", &["*"], false));
    tokens.insert("other", tok(&sam, "sam", &["*"], false));
    let owner = ident(&c, &tokens["owner"]);
    let app = &built.router;
    let t = |k: &str| tokens[k].clone();
    let (s, b) = call(
        app,
        Method::POST,
        "/api/workspaces",
        Some(&t("owner")),
        Some(json!({"id": "w"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for (u, role) in [("ed", "editor"), ("vic", "viewer")] {
        let (s, b) = call(
            app,
            Method::PUT,
            &format!("/api/workspaces/w/members/{u}"),
            Some(&t("owner")),
            Some(json!({"role": role})),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, b) = call(
        app,
        Method::POST,
        "/api/sessions",
        Some(&t("owner")),
        Some(json!({"id": "s", "workspace": "w", "permission_mode": "plan"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // A pending approval in the session, for the answer route.
    built
        .state
        .hub
        .edit("session/s", |doc| {
            jarvis_sync::doc::SessionDoc::new(doc.clone())
                .append_message(&jarvis_sync::doc::Message {
                    id: "m-ap".into(),
                    role: jarvis_sync::doc::Role::Assistant,
                    author: "test".into(),
                    created_ms: 1,
                    blocks: vec![jarvis_sync::doc::Block::Approval {
                        id: "ap1".into(),
                        tool_use_id: "t1".into(),
                        tool: "bash".into(),
                        summary: "x".into(),
                        decision: None,
                        decided_by: None,
                        decided_at: None,
                    }],
                })
                .unwrap();
        })
        .await
        .unwrap();
    let agent = "---\ntrigger: webhook\n---\nSay hello.\n";
    for name in ["a", "b"] {
        let (s, b) = call(
            app,
            Method::PUT,
            &format!("/api/workspaces/w/agents/{name}"),
            Some(&t("owner")),
            Some(json!({"definition": agent})),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let blob_bytes = b"blob contents";
    let blob = blake3::hash(blob_bytes).to_hex().to_string();
    let resp = app
        .clone()
        .oneshot(
            Request::put(format!("/blobs/{blob}"))
                .header("authorization", format!("Bearer {}", t("owner")))
                .header("x-jarvis-workspace", "w")
                .body(Body::from(&blob_bytes[..]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A paired device of the owner's, and a pairing code for each caller to try.
    let p = c.start_pairing("olga-phone", "fixture").unwrap();
    c.approve_pairing(&owner, &p.code).unwrap();
    let (device, _) = c.poll_pairing(&p.device_code).unwrap();
    let mut pair_codes = std::collections::HashMap::new();
    for who in CALLERS {
        pair_codes.insert(who, c.start_pairing("dev", "fixture").unwrap().code);
    }
    Fixture {
        owner_token_id: owner.token_id,
        owner_device: device.id,
        _dir: dir,
        built,
        tokens,
        blob,
        pair_codes,
    }
}

/// What a caller gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Served: not 401, 403 or 404.
    Allow,
    /// Refused: 401, 403 or 404 (what the caller may not know exists is not found).
    Deny,
    /// Answered without regard to the token (anonymous endpoints): the same status for all.
    Public,
}

use Expect::{Allow as A, Deny as D};

struct Row {
    method: Method,
    path: &'static str,
    /// Per caller, in `CALLERS` order.
    expect: [Expect; 6],
    /// For lists: allowed callers see this text in the answer, denied ones a 200 without it
    /// (or a refusal).
    marker: Option<&'static str>,
}

fn row(method: Method, path: &'static str, expect: [Expect; 6]) -> Row {
    Row {
        method,
        path,
        expect,
        marker: None,
    }
}

fn listed(method: Method, path: &'static str, expect: [Expect; 6], marker: &'static str) -> Row {
    Row {
        method,
        path,
        expect,
        marker: Some(marker),
    }
}

const PUBLIC: [Expect; 6] = [Expect::Public; 6];
const NOBODY: [Expect; 6] = [D, D, D, D, D, D];
/// Reading a workspace or its sessions: members with a covering scope.
const READERS: [Expect; 6] = [D, D, A, D, A, A];
/// Writing in a workspace: editors (and owners) with a writable, covering token.
const WRITERS: [Expect; 6] = [D, D, D, D, D, A];
/// Any signed-in token, its own account.
const SIGNED_IN: [Expect; 6] = [A, A, A, D, A, A];

fn matrix() -> Vec<Row> {
    use Method as M;
    vec![
        row(M::GET, "/healthz", PUBLIC),
        row(M::GET, "/metrics", NOBODY),
        row(M::GET, "/sync", PUBLIC),
        row(M::PUT, "/blobs/{hash}", WRITERS),
        row(M::GET, "/blobs/{hash}", READERS),
        row(M::GET, "/openapi.json", PUBLIC),
        row(M::POST, "/api/pair/start", PUBLIC),
        row(M::POST, "/api/pair/poll", PUBLIC),
        // Approving passes on at most the approver's own grant, so any writable token may.
        row(M::POST, "/api/pair/approve", [A, A, D, D, A, A]),
        row(M::GET, "/api/me", SIGNED_IN),
        row(M::GET, "/api/users", NOBODY),
        row(M::POST, "/api/users", NOBODY),
        // Own tokens and devices: the owner's narrow and read-only tokens see the owner's.
        listed(M::GET, "/api/tokens", [D, A, A, D, D, D], "olga-full"),
        row(M::DELETE, "/api/tokens/{id}", NOBODY),
        listed(M::GET, "/api/devices", [D, A, A, D, D, D], "olga-phone"),
        row(M::DELETE, "/api/devices/{id}", NOBODY),
        listed(M::GET, "/api/workspaces", READERS, "\"id\":\"w\""),
        // Anyone with a writable token covering the new id may create a workspace of their own.
        row(M::POST, "/api/workspaces", [A, D, D, D, A, A]),
        row(M::GET, "/api/workspaces/{id}", READERS),
        row(M::PUT, "/api/workspaces/{id}/members/{user}", NOBODY),
        row(M::DELETE, "/api/workspaces/{id}/members/{user}", NOBODY),
        listed(M::GET, "/api/sessions", READERS, "\"id\":\"s\""),
        row(M::POST, "/api/sessions", WRITERS),
        // Every event is filtered by the same rule; the stream itself needs a token.
        row(M::GET, "/api/sessions/changes", SIGNED_IN),
        row(M::GET, "/api/sessions/{id}", READERS),
        // Changing the model or the permission mode steers the session: editors.
        row(M::PATCH, "/api/sessions/{id}", WRITERS),
        row(M::GET, "/api/sessions/{id}/settings", READERS),
        row(M::POST, "/api/sessions/{id}/messages", WRITERS),
        row(M::POST, "/api/sessions/{id}/interrupt", WRITERS),
        row(M::POST, "/api/sessions/{id}/approvals/{approval}", WRITERS),
        row(M::POST, "/api/sessions/{id}/handoff", WRITERS),
        row(M::GET, "/api/sessions/{id}/lease", READERS),
        row(M::POST, "/api/sessions/{id}/lease", WRITERS),
        // The git state travelling with the session: readers see what the cloud copy has;
        // recording a bundle or taking the agent's branch back (a command in the cloud copy)
        // is for who may take the session.
        row(M::GET, "/api/sessions/{id}/git", READERS),
        row(M::PUT, "/api/sessions/{id}/git", WRITERS),
        row(M::GET, "/api/sessions/{id}/git/back", WRITERS),
        listed(M::GET, "/api/usage", READERS, "\"session\":\"s\""),
        row(M::GET, "/api/audit", NOBODY),
        row(M::GET, "/api/workspaces/{id}/config", READERS),
        // "Always allow" rules: each caller's own, in a workspace it may read / write in.
        row(M::GET, "/api/workspaces/{id}/always-allow", READERS),
        row(M::POST, "/api/workspaces/{id}/always-allow", WRITERS),
        row(M::DELETE, "/api/workspaces/{id}/always-allow", WRITERS),
        // The caller's own memory for cloud runs: read with any token, replace with a
        // writable one.
        row(M::GET, "/api/me/memory", SIGNED_IN),
        row(M::PUT, "/api/me/memory", [A, A, D, D, A, A]),
        // Approving configuration that runs code: owners only.
        row(M::POST, "/api/workspaces/{id}/config/approve", NOBODY),
        row(M::GET, "/api/workspaces/{id}/agents", READERS),
        row(M::GET, "/api/workspaces/{id}/agents/{name}", READERS),
        row(M::PUT, "/api/workspaces/{id}/agents/{name}", WRITERS),
        row(M::DELETE, "/api/workspaces/{id}/agents/{name}", WRITERS),
        row(M::POST, "/api/workspaces/{id}/agents/{name}/runs", WRITERS),
        row(M::GET, "/api/workspaces/{id}/agents/{name}/runs", READERS),
        row(
            M::POST,
            "/api/workspaces/{id}/agents/{name}/webhook-secret",
            NOBODY,
        ),
        row(M::POST, "/webhooks/agents/{id}/{name}", PUBLIC),
        row(M::POST, "/webhooks/github", PUBLIC),
        // The gateway spends money: writable tokens whose scope covers it (`*` or `gateway`).
        row(M::POST, "/v1/messages", [A, D, D, D, A, A]),
        row(M::POST, "/v1/messages/count_tokens", [A, D, D, D, A, A]),
        // Secrets: server scope for admins only; a user's own with any token (changed with a
        // full-scope writable one); a workspace's listed by readers, changed by owners.
        row(M::GET, "/api/secrets/server", NOBODY),
        row(M::PUT, "/api/secrets/server/{name}", NOBODY),
        row(M::DELETE, "/api/secrets/server/{name}", NOBODY),
        row(M::GET, "/api/secrets/user", SIGNED_IN),
        row(M::PUT, "/api/secrets/user/{name}", [A, D, D, D, A, A]),
        row(M::DELETE, "/api/secrets/user/{name}", [A, D, D, D, A, A]),
        row(M::GET, "/api/workspaces/{id}/secrets", READERS),
        row(M::PUT, "/api/workspaces/{id}/secrets/{name}", NOBODY),
        row(M::DELETE, "/api/workspaces/{id}/secrets/{name}", NOBODY),
        // How this server contains commands: any signed-in caller (the UI warns with it).
        row(M::GET, "/api/server", SIGNED_IN),
        row(M::GET, "/updates/files/{name}", PUBLIC),
        row(M::GET, "/updates/{target}/{arch}/{current}", PUBLIC),
        // Onboarding: whether the owner is still to be made, and making it with the printed
        // code (anyone: the code is the credential, rate-limited and burnt after misses).
        row(M::GET, "/api/setup", PUBLIC),
        row(M::POST, "/api/setup", PUBLIC),
        // The model provider: admins only (none of the matrix's callers is one).
        row(M::GET, "/api/server/provider", NOBODY),
        row(M::PUT, "/api/server/provider", NOBODY),
        // A first workspace, empty, uploaded or cloned: as creating a workspace.
        row(M::POST, "/api/onboarding/workspace", [A, D, D, D, A, A]),
        // Invitations: admins, or a workspace's owner for that workspace (olga, not a caller).
        row(M::POST, "/api/invites", NOBODY),
        // The link is the credential: the same answer for every token.
        row(M::GET, "/api/invites/{code}", PUBLIC),
        row(M::POST, "/api/invites/{code}/accept", PUBLIC),
        // Retrying a failed turn steers the session: editors.
        row(M::POST, "/api/sessions/{id}/retry", WRITERS),
    ]
}

fn fill(path: &str, f: &Fixture) -> String {
    path.replace("{hash}", &f.blob)
        .replace("{id}/members", "w/members")
        .replace(
            "/api/tokens/{id}",
            &format!("/api/tokens/{}", f.owner_token_id),
        )
        .replace(
            "/api/devices/{id}",
            &format!("/api/devices/{}", f.owner_device),
        )
        .replace("/api/sessions/{id}", "/api/sessions/s")
        .replace("/api/workspaces/{id}", "/api/workspaces/w")
        .replace("/webhooks/agents/{id}", "/webhooks/agents/w")
        .replace("{user}", "sam")
        .replace("{approval}", "ap1")
        .replace("{code}", "ji_not_a_code")
        .replace("{target}/{arch}/{current}", "linux/x86_64/0.0.1")
        .replace("/updates/files/{name}", "/updates/files/x")
}

fn body_for(method: &Method, path: &str, caller: &str, f: &Fixture) -> (String, Option<Value>) {
    let mut path = fill(path, f);
    // Routes that change an agent work on one the matrix may remove.
    if path.ends_with("/agents/{name}") && method == Method::DELETE {
        path = path.replace("{name}", "b");
    } else if path.ends_with("/agents/{name}") && method == Method::PUT {
        path = path.replace("{name}", "c");
    } else {
        path = path.replace("{name}", "a");
    }
    let body = match (method.as_str(), path.as_str()) {
        ("POST", "/api/pair/start") => Some(json!({"name": "x"})),
        ("POST", "/api/pair/poll") => Some(json!({"device_code": "jd_none"})),
        ("POST", "/api/pair/approve") => Some(json!({"code": f.pair_codes[caller]})),
        ("POST", "/api/users") => Some(json!({"name": format!("new-{caller}"), "admin": true})),
        ("POST", "/api/workspaces") => Some(json!({"id": format!("ws-{caller}")})),
        ("POST", "/api/onboarding/workspace") => Some(json!({"id": format!("ob-{caller}")})),
        ("PUT", p) if p.contains("/members/") => Some(json!({"role": "owner"})),
        ("POST", "/api/sessions") => Some(
            json!({"id": format!("s-{caller}"), "workspace": "w", "permission_mode": "allow-all"}),
        ),
        ("POST", p) if p.ends_with("/messages") && p.starts_with("/api/") => {
            Some(json!({"text": "hello"}))
        }
        ("POST", p) if p.contains("/approvals/") => Some(json!({"decision": "allow"})),
        ("POST", p) if p.ends_with("/handoff") => Some(json!({"to": "cloud", "wait_ms": 0})),
        ("POST", p) if p.ends_with("/lease") => Some(json!({"op": "acquire"})),
        ("POST", p) if p.ends_with("/config/approve") => Some(json!({
            "kind": "agent", "path": ".jarvis/agents/a.md",
            "hash": jarvis_cloud::approvals::content_hash("---\ntrigger: webhook\n---\nSay hello.\n"),
        })),
        ("POST", p) | ("DELETE", p) if p.ends_with("/always-allow") => {
            Some(json!({"entry": {"tool": "bash", "prefix": "npm test"}}))
        }
        ("PUT", "/api/me/memory") => Some(json!({"text": format!("memory of {caller}")})),
        ("PUT", p) if p.contains("/secrets/") => Some(json!({"value": "matrix-secret"})),
        ("PATCH", _) => Some(json!({"permission_mode": "plan"})),
        ("PUT", p) if p.contains("/agents/") => {
            Some(json!({"definition": "---\ntrigger: webhook\n---\nRun.\n"}))
        }
        ("POST", p) if p.ends_with("/runs") => Some(json!({})),
        ("POST", p) if p.starts_with("/v1/") => Some(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
        ),
        ("POST", "/webhooks/github") | ("POST", "/api/workspaces/w/agents/a/webhook-secret") => {
            Some(json!({}))
        }
        ("POST", p) if p.starts_with("/webhooks/agents/") => Some(json!({})),
        ("POST", _) | ("PUT", _) if !path.starts_with("/blobs/") => Some(json!({})),
        _ => None,
    };
    (path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_caller_it_should() {
    let table = route_table();
    let rows = matrix();
    let covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = table.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in the matrix: {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&table).collect();
    assert!(
        stale.is_empty(),
        "rows for routes that do not exist: {stale:?}"
    );
    assert!(table.len() >= 45, "the route table looks unread: {table:?}");

    let f = fixture().await;
    let app = &f.built.router;
    let mut failures = Vec::new();
    for r in &rows {
        let mut public = None;
        for (i, caller) in CALLERS.iter().enumerate() {
            let token = f.tokens.get(caller).map(String::as_str);
            let (path, body) = body_for(&r.method, r.path, caller, &f);
            let blob_body = path.starts_with("/blobs/") && r.method == Method::PUT;
            let (status, text) = if blob_body {
                // A new blob per caller, so "already stored" never answers for a refusal.
                let bytes = format!("blob of {caller}");
                let hash = blake3::hash(bytes.as_bytes()).to_hex().to_string();
                let mut req =
                    Request::put(format!("/blobs/{hash}")).header("x-jarvis-workspace", "w");
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let resp = app
                    .clone()
                    .oneshot(req.body(Body::from(bytes)).unwrap())
                    .await
                    .unwrap();
                (resp.status(), String::new())
            } else {
                let headers: &[(&str, &str)] = if path.starts_with("/blobs/") {
                    &[("x-jarvis-workspace", "w")]
                } else {
                    &[]
                };
                call(app, r.method.clone(), &path, token, body, headers).await
            };
            let refused = matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            );
            let ok = match (r.expect[i], r.marker) {
                (Expect::Public, _) => {
                    let same = *public.get_or_insert(status) == status;
                    same && status != StatusCode::FORBIDDEN
                }
                (Expect::Allow, Some(m)) => status.is_success() && text.contains(m),
                (Expect::Deny, Some(m)) => refused || (status.is_success() && !text.contains(m)),
                (Expect::Allow, None) => !refused && status != StatusCode::METHOD_NOT_ALLOWED,
                (Expect::Deny, None) => refused,
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {caller}: expected {:?}, got {status} {}",
                    r.method,
                    r.path,
                    r.expect[i],
                    text.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_through_users_tokens_members_and_pairing_is_refused() {
    let f = fixture().await;
    let app = &f.built.router;
    let c = &f.built.control;
    // The admin user's own README recipe: a scoped, read-only token has no admin powers.
    let recipe = c
        .create_token(
            jarvis_cloud::control::ADMIN_USER,
            None,
            "recipe",
            &["ws/team/*".into()],
            true,
        )
        .unwrap();
    for (method, path, body) in [
        (
            Method::POST,
            "/api/users",
            Some(json!({"name": "mallory", "admin": true})),
        ),
        (Method::GET, "/api/users", None),
        (Method::GET, "/api/audit", None),
        (Method::GET, "/metrics", None),
        (Method::DELETE, "/api/tokens/1", None),
        (
            Method::PUT,
            "/api/workspaces/w/members/sam",
            Some(json!({"role": "owner"})),
        ),
        (Method::GET, "/api/sessions/s", None),
        (
            Method::POST,
            "/v1/messages",
            Some(json!({"model": "m", "messages": []})),
        ),
    ] {
        let (s, b) = call(app, method.clone(), path, Some(&recipe), body, &[]).await;
        assert!(
            matches!(
                s,
                StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED
            ),
            "{method} {path} with the scoped read-only admin token: {s} {b}"
        );
    }
    let (_, me) = call(app, Method::GET, "/api/me", Some(&recipe), None, &[]).await;
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["admin"], false);
    assert!(me["can"].to_string().contains("no admin powers"), "{me}");
    // An editor cannot make itself owner, a viewer cannot make itself editor.
    for (caller, role) in [("editor", "owner"), ("viewer", "editor")] {
        let user = if caller == "editor" { "ed" } else { "vic" };
        let (s, _) = call(
            app,
            Method::PUT,
            &format!("/api/workspaces/w/members/{user}"),
            Some(&f.tokens[caller]),
            Some(json!({"role": role})),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{caller} → {role}");
    }
    // A narrow token cannot revoke the wider token of its own user.
    let (s, _) = call(
        app,
        Method::DELETE,
        &format!("/api/tokens/{}", f.owner_token_id),
        Some(&f.tokens["narrow"]),
        None,
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(c.identify(&f.tokens["owner"]).is_ok());
    // Pairing with the narrow token hands the device the narrow scope, not `*`.
    let p = c.start_pairing("laptop", "x").unwrap();
    let (s, b) = call(
        app,
        Method::POST,
        "/api/pair/approve",
        Some(&f.tokens["narrow"]),
        Some(json!({"code": p.code})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, token) = c.poll_pairing(&p.device_code).unwrap();
    let device = c.identify(&token).unwrap();
    assert_eq!(device.scopes, vec!["session/other".to_owned()]);
    assert!(!device.admin);
    // Starting an existing session again does not rewrite its run settings.
    let (s, b) = call(
        app,
        Method::POST,
        "/api/sessions",
        Some(&f.tokens["editor"]),
        Some(json!({"id": "s", "workspace": "w", "permission_mode": "allow-all"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let settings = c.run_settings("s").unwrap().unwrap();
    assert_eq!(settings.permission_mode.as_deref(), Some("plan"));
    // An editor's agent waits for an owner; the owner's approval makes it runnable.
    let def = "---\ntrigger: webhook\n---\nEditor's agent.\n";
    let (s, b) = call(
        app,
        Method::PUT,
        "/api/workspaces/w/agents/eds",
        Some(&f.tokens["editor"]),
        Some(json!({"definition": def})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["approved"],
        false
    );
    let (s, b) = call(
        app,
        Method::POST,
        "/api/workspaces/w/agents/eds/runs",
        Some(&f.tokens["editor"]),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_REQUIRED, "{b}");
    assert!(b.contains("approval_required"), "{b}");
    let hash = jarvis_cloud::approvals::content_hash(def);
    let approve = json!({"kind": "agent", "path": ".jarvis/agents/eds.md", "hash": hash});
    let (s, _) = call(
        app,
        Method::POST,
        "/api/workspaces/w/config/approve",
        Some(&f.tokens["editor"]),
        Some(approve.clone()),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = call(
        app,
        Method::POST,
        "/api/workspaces/w/config/approve",
        Some(&f.tokens["owner"]),
        Some(approve),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = call(
        app,
        Method::POST,
        "/api/workspaces/w/agents/eds/runs",
        Some(&f.tokens["editor"]),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
}
